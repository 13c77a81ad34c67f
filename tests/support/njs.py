"""Runs a table of cases through the gateway's njs scripts under Debian's njs
interpreter (`make test` installs it): the runner script prints one JSON
document of answers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from router import REPO_ROOT

BUDGET_RUNNER = REPO_ROOT / "tests" / "support" / "budget_cases.js"


def run_table(runner: Path, table: Path) -> dict[str, list[Any]]:
    njs = shutil.which("njs")
    if njs is None:
        pytest.fail("the njs interpreter is missing; `make test` installs it "
                    "(deploy/setup.sh --dev, Debian package njs)")
    done = subprocess.run([njs, "-p", str(REPO_ROOT / "nginx"), str(runner), str(table)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"njs failed: {done.stderr or done.stdout}"
    answers: dict[str, list[Any]] = json.loads(done.stdout)
    return answers


def count_answers(answers: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """``answers`` (each {buffers, hidden}) through nginx/usage.js: what the
    client gets and the tokens counted."""
    table = folder / "answers.json"
    table.write_text(json.dumps({"bodies": [], "flags": [], "answers": answers}))
    return run_table(BUDGET_RUNNER, table)["answers"]
