"""The gateway's token counting under Debian's njs interpreter: the fields
body.js writes into a request, the tokens usage.js reads from an answer (and
the usage chunk it keeps from a client that did not ask), and the 429 and 503
flags.js answers with. The table is tests/fixtures/budget-cases.json; a case
is added there. Through real nginx: tests/integration/test_budgets.py."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from typing import Any

import pytest

from router import REPO_ROOT

CASES_FILE = REPO_ROOT / "tests" / "fixtures" / "budget-cases.json"
CASES: dict[str, list[dict[str, Any]]] = json.loads(CASES_FILE.read_text(encoding="utf-8"))
RUNNER = REPO_ROOT / "tests" / "support" / "budget_cases.js"


@functools.cache
def njs_answers() -> dict[str, list[Any]]:
    njs = shutil.which("njs")
    if njs is None:
        pytest.fail("the njs interpreter is missing; `make test` installs it "
                    "(deploy/setup.sh --dev, Debian package njs)")
    done = subprocess.run([njs, "-p", str(REPO_ROOT / "nginx"), str(RUNNER), str(CASES_FILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"njs failed: {done.stderr or done.stdout}"
    answers: dict[str, list[Any]] = json.loads(done.stdout)
    return answers


@pytest.mark.parametrize(("table", "index"), [
    (table, index) for table in ("bodies", "answers", "flags")
    for index in range(len(CASES[table]))],
    ids=[f"{table}: {case['case']}" for table in ("bodies", "answers", "flags")
         for case in CASES[table]])
def test_the_case(table: str, index: int) -> None:
    assert njs_answers()[table][index] == CASES[table][index]["expected"]
