"""The gateway's token counting under Debian's njs interpreter: the fields
body.js writes into a request, the tokens usage.js reads from an answer (and
the usage chunk it keeps from a client that did not ask), and the 429 and 503
flags.js answers with. The table is tests/fixtures/budget-cases.json; a case
is added there. Through real nginx: tests/integration/test_budgets.py."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from router import REPO_ROOT
from tests.support.njs import BUDGET_RUNNER, run_table

CASES_FILE = REPO_ROOT / "tests" / "fixtures" / "budget-cases.json"
CASES: dict[str, list[dict[str, Any]]] = json.loads(CASES_FILE.read_text(encoding="utf-8"))


@functools.cache
def njs_answers() -> dict[str, list[Any]]:
    return run_table(BUDGET_RUNNER, CASES_FILE)


@pytest.mark.parametrize(("table", "index"), [
    (table, index) for table in ("bodies", "answers", "flags")
    for index in range(len(CASES[table]))],
    ids=[f"{table}: {case['case']}" for table in ("bodies", "answers", "flags")
         for case in CASES[table]])
def test_the_case(table: str, index: int) -> None:
    assert njs_answers()[table][index] == CASES[table][index]["expected"]
