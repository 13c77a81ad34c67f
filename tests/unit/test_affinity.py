"""Affinity's one table of cases, run through router/affinity.py and through
nginx/affinity.js under Debian's njs interpreter: the same keys, the same
ranking and the same load-bound spill, so the gateway and its reference
model cannot drift. The table is tests/fixtures/affinity-cases.json; a case
is added there, and both sides must answer it."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from router import REPO_ROOT
from router.affinity import (
    AffinityMode,
    RingEntry,
    RingState,
    find_key,
    key_hash,
    parse_ring,
    rank,
    ring_text,
    route,
)
from tests.support.njs import run_table

CASES_FILE = REPO_ROOT / "tests" / "fixtures" / "affinity-cases.json"
CASES: dict[str, list[dict[str, Any]]] = json.loads(CASES_FILE.read_text(encoding="utf-8"))
RUNNER = REPO_ROOT / "tests" / "support" / "affinity_cases.js"


@functools.cache
def njs_answers() -> dict[str, list[Any]]:
    return run_table(RUNNER, CASES_FILE)


def _ids(table: str) -> list[str]:
    return [case.get("case", f"{case.get('key')}/{case.get('name')}") for case in CASES[table]]


@pytest.mark.parametrize("index", range(len(CASES["keys"])), ids=_ids("keys"))
def test_the_key_a_request_has(index: int) -> None:
    case = CASES["keys"][index]
    expected = {"source": case["source"], "key": case["key"]}
    source, key = find_key(AffinityMode(case["mode"]), case["headers"], case["body"])
    assert {"source": str(source), "key": key} == expected, "router/affinity.py"
    assert njs_answers()["keys"][index] == expected, "nginx/affinity.js"


@pytest.mark.parametrize("index", range(len(CASES["hashes"])), ids=_ids("hashes"))
def test_the_hash_of_a_key_and_a_replica(index: int) -> None:
    case = CASES["hashes"][index]
    assert key_hash(case["key"], case["name"]) == case["hash"], "router/affinity.py"
    assert njs_answers()["hashes"][index] == case["hash"], "nginx/affinity.js"


@pytest.mark.parametrize("index", range(len(CASES["ranks"])), ids=_ids("ranks"))
def test_the_replica_ranked_first(index: int) -> None:
    case = CASES["ranks"][index]
    first = rank(parse_ring(case["ring"]), case["key"])
    answer = None if first is None else {"name": first.name, "state": str(first.state)}
    assert answer == case["first"], "router/affinity.py"
    assert njs_answers()["ranks"][index] == case["first"], "nginx/affinity.js"


@pytest.mark.parametrize("index", range(len(CASES["routes"])), ids=_ids("routes"))
def test_where_a_request_goes(index: int) -> None:
    case = CASES["routes"][index]
    expected = {name: case[name] for name in ("to", "label", "upstream")}
    went = route(AffinityMode(case["mode"]), parse_ring(case["ring"]), case["headers"],
                 case["body"])
    answer = {"to": "@chat_affinity" if went.replica else "@chat_balanced",
              "label": went.label, "upstream": f"fleet_{went.replica}" if went.replica else None}
    assert answer == expected, "router/affinity.py"
    assert njs_answers()["routes"][index] == expected, "nginx/affinity.js"


def test_the_ring_is_written_and_read_back() -> None:
    entries = [RingEntry("replica-0", 100, RingState.UP),
               RingEntry("replica-1", 37, RingState.SHED),
               RingEntry("replica-2", 100, RingState.DOWN)]
    text = ring_text(entries)
    assert text == "replica-0 100 up;replica-1 37 shed;replica-2 100 down"
    assert parse_ring(text) == entries
    assert ring_text([]) == "" and parse_ring("") == []


def test_a_replica_taken_out_moves_only_its_own_keys() -> None:
    ring = [RingEntry(f"replica-{i}", 100, RingState.UP) for i in range(4)]
    keys = [f"u:user-{n}" for n in range(400)]
    before = {key: rank(ring, key) for key in keys}
    out = [RingEntry(e.name, e.weight, RingState.DOWN if e.name == "replica-2" else e.state)
           for e in ring]
    moved = [key for key in keys if rank(out, key) != before[key]]
    assert moved and all(before[key].name == "replica-2" for key in moved)  # type: ignore[union-attr]
    shares = {name: sum(1 for f in before.values() if f and f.name == name)
              for name in (e.name for e in ring)}
    assert min(shares.values()) > 60, shares
