"""Conversation affinity through real nginx and its njs module: which key a
request has, that a key keeps its replica, and how a drained or shedding
replica's keys move. Four lightweight backends stand in for replicas."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from router.render.upstream import render_upstream
from router.runtime.gateway import apply_gateway_file, status_url
from tests.support.backend import Backend
from tests.support.harness import Running, free_port_block, gateway, plan_for

pytestmark = pytest.mark.integration

SYSTEM = {"role": "system", "content": "You are the support desk of a tea shop."}


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[int, list[Backend]]]:
    base = free_port_block(4)
    with Backend(base, "replica-0") as b0, Backend(base + 1, "replica-1") as b1, \
            Backend(base + 2, "replica-2") as b2, Backend(base + 3, "replica-3") as b3:
        yield base, [b0, b1, b2, b3]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory,
       backends: tuple[int, list[Backend]]) -> Iterator[Running]:
    base, _ = backends
    plan = plan_for(tmp_path_factory.mktemp("affinity") / "rt", 4, base,
                    gateway={"affinity": "auto"})
    with gateway(plan) as running:
        yield running


def _post(gw: Running, body: Any, path: str = "/v1/chat/completions",
          **headers: str) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(gw.url + path, data=data, timeout=10,
                         headers={"Content-Type": "application/json", **headers})


def _chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **fields}


def _turns(first_user: str, turns: int) -> list[dict[str, Any]]:
    """The request bodies of one conversation's turns: each re-sends the history."""
    history = [SYSTEM, {"role": "user", "content": first_user}]
    bodies = []
    for turn in range(turns):
        bodies.append(_chat(*history))
        history += [{"role": "assistant", "content": f"answer {turn}"},
                    {"role": "user", "content": f"follow-up {turn}"}]
    return bodies


def _replace_upstream(gw: Running, **changes: Any) -> None:
    plan = gw.plan
    rendered = render_upstream(plan.spec.gateway, plan.replicas, **changes)
    apply_gateway_file(gw.paths, gw.paths.upstream_conf, rendered.text,
                       version=rendered.version,
                       version_url=status_url(plan.spec.gateway.status_port, "config"))


KEYS = [
    ("X-Session-Id header", _chat({"role": "user", "content": "hi"}), {"X-Session-Id": "s-1"},
     "session"),
    ("prompt_cache_key", _chat({"role": "user", "content": "hi"}, prompt_cache_key="tenant-7"),
     {}, "prompt_cache_key"),
    ("user", _chat({"role": "user", "content": "hi"}, user="alice"), {}, "user"),
    ("header before body fields", _chat({"role": "user", "content": "hi"}, user="alice"),
     {"X-Session-Id": "s-2"}, "session"),
    ("chat opening", _chat(SYSTEM, {"role": "user", "content": "Do you sell oolong?"}), {},
     "opening"),
    ("content parts", _chat({"role": "user", "content": [{"type": "text", "text": "hi"}]}), {},
     "opening"),
    ("no user message yet", _chat(SYSTEM), {}, "none"),
    ("messages not a list", {"model": "m", "messages": "hi"}, {}, "none"),
    ("a message not an object", {"model": "m", "messages": [1, 2]}, {}, "none"),
    ("body is a list", [1, 2], {}, "none"),
    ("empty user field", _chat({"role": "user", "content": "hi"}, user=""), {}, "opening"),
]


@pytest.mark.parametrize(("case", "body", "headers", "kind"), KEYS, ids=[k[0] for k in KEYS])
def test_the_key_a_request_has(gw: Running, case: str, body: Any, headers: dict[str, str],
                               kind: str) -> None:
    response = _post(gw, body, **headers)
    assert response.headers["X-Fleet-Affinity"] == kind, case
    assert response.headers["X-Fleet-Replica"].startswith("replica-")


def test_a_completion_prompt_keys_on_its_first_block(gw: Running) -> None:
    shared = "Instructions shared by every request of one tenant. " * 200  # over the block
    replicas = {_post(gw, {"model": "m", "prompt": shared + f"question {i}"},
                      path="/v1/completions").headers["X-Fleet-Replica"] for i in range(8)}
    assert len(replicas) == 1
    assert _post(gw, {"model": "m", "prompt": "short"},
                 path="/v1/completions").headers["X-Fleet-Affinity"] == "opening"


def test_not_json_and_huge_bodies_pass_on_untouched(gw: Running,
                                                    backends: tuple[int, list[Backend]]) -> None:
    _, replicas = backends
    broken = _post(gw, b"{not json")
    assert broken.status_code == 400  # the replica's own answer, passed through
    assert broken.headers["X-Fleet-Affinity"] == "none"
    served = {b.name: b for b in replicas}[broken.headers["X-Fleet-Replica"]]
    assert served.last_body == b"{not json"
    huge = json.dumps(_chat(SYSTEM, {"role": "user", "content": "x" * 900_000})).encode()
    answer = _post(gw, huge)
    assert answer.status_code == 200 and answer.headers["X-Fleet-Affinity"] == "opening"
    assert {b.name: b for b in replicas}[answer.headers["X-Fleet-Replica"]].last_body == huge
    too_big = _post(gw, json.dumps(_chat({"role": "user", "content": "x" * 1_100_000})).encode())
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == 413


def test_every_turn_of_a_conversation_lands_where_it_began_and_streams(gw: Running) -> None:
    placed: dict[str, set[str]] = {}
    for number in range(24):
        opening = f"Question {number} about tea"
        for body in _turns(opening, 4):
            response = _post(gw, {**body, "stream": number % 2 == 0})
            assert response.status_code == 200
            placed.setdefault(opening, set()).add(response.headers["X-Fleet-Replica"])
    assert all(len(replicas) == 1 for replicas in placed.values()), placed
    # 24 conversations on a ring of four: every replica gets some.
    assert len(Counter(next(iter(r)) for r in placed.values())) == 4


RESPONSES_KEYS = [
    ("string input", {"model": "m", "input": "Do you sell oolong?"}, {}, "opening"),
    ("instructions and items",
     {"model": "m", "instructions": SYSTEM["content"],
      "input": [{"role": "user", "content": [{"type": "input_text", "text": "oolong?"}]}]},
     {}, "opening"),
    ("X-Session-Id header", {"model": "m", "input": "hi"}, {"X-Session-Id": "s-9"}, "session"),
    ("prompt_cache_key", {"model": "m", "input": "hi", "prompt_cache_key": "t"}, {},
     "prompt_cache_key"),
    ("empty input", {"model": "m", "input": ""}, {}, "none"),
    ("input not text or items", {"model": "m", "input": 5}, {}, "none"),
]


@pytest.mark.parametrize(("case", "body", "headers", "kind"), RESPONSES_KEYS,
                         ids=[k[0] for k in RESPONSES_KEYS])
def test_the_key_a_responses_request_has(gw: Running, case: str, body: Any,
                                         headers: dict[str, str], kind: str) -> None:
    response = _post(gw, body, path="/v1/responses", **headers)
    assert response.headers["X-Fleet-Affinity"] == kind, case


def test_a_responses_conversation_stays_on_its_replica(gw: Running) -> None:
    placed: dict[int, set[str]] = {}
    for number in range(12):
        history: list[dict[str, Any]] = [{"role": "user", "content": f"Question {number}"}]
        for turn in range(3):
            body = {"model": "m", "instructions": SYSTEM["content"], "input": history}
            response = _post(gw, body, path="/v1/responses")
            placed.setdefault(number, set()).add(response.headers["X-Fleet-Replica"])
            history = [*history, {"role": "assistant", "content": f"answer {turn}"},
                       {"role": "user", "content": f"follow-up {turn}"}]
    assert all(len(replicas) == 1 for replicas in placed.values()), placed


def test_the_tokenizer_is_balanced_not_keyed(gw: Running) -> None:
    # No prefix cache to reuse: the least_conn upstream spreads it.
    seen: Counter[str] = Counter()
    for _ in range(16):
        response = _post(gw, {"model": "m", "prompt": "hi"}, path="/tokenize",
                         **{"X-Session-Id": "one-session"})
        assert response.status_code == 200 and "X-Fleet-Affinity" not in response.headers
        seen[response.headers["X-Fleet-Replica"]] += 1
    assert len(seen) > 1


def _where(gw: Running, sessions: list[str]) -> dict[str, str]:
    body = _chat({"role": "user", "content": "hi"})
    return {s: _post(gw, body, **{"X-Session-Id": s}).headers["X-Fleet-Replica"]
            for s in sessions}


def test_a_drained_replicas_sessions_move_and_only_they_move(gw: Running) -> None:
    sessions = [f"session-{i}" for i in range(40)]
    before = _where(gw, sessions)
    try:
        _replace_upstream(gw, down=frozenset({"replica-1"}))
        during = _where(gw, sessions)
        assert "replica-1" not in during.values()
        assert all(during[s] == before[s] for s in sessions if before[s] != "replica-1")
        assert _where(gw, sessions) == during  # moved ones stay moved
    finally:
        _replace_upstream(gw)
    assert _where(gw, sessions) == before


def test_a_shedding_replicas_keys_spill_to_the_balanced_upstream_and_stay_its(
        gw: Running) -> None:
    sessions = [f"load-{i}" for i in range(40)]
    before = _where(gw, sessions)
    shed = [s for s in sessions if before[s] == "replica-2"]
    assert shed
    try:
        _replace_upstream(gw, shedding={"replica-2": "queue 9.0 against a median of 1.0"})
        for session in sessions:
            answer = _post(gw, _chat({"role": "user", "content": "hi"}),
                           **{"X-Session-Id": session})
            if session in shed:
                assert answer.headers["X-Fleet-Affinity"] == "session spilled"
            else:
                assert answer.headers["X-Fleet-Affinity"] == "session"
                assert answer.headers["X-Fleet-Replica"] == before[session]
        # One hot key spills over the fleet, not onto one neighbour.
        spilled = Counter(_post(gw, _chat({"role": "user", "content": "hi"}),
                                **{"X-Session-Id": shed[0]}).headers["X-Fleet-Replica"]
                          for _ in range(16))
        assert len(spilled) > 1
        assert "shedding: queue 9.0" in gw.paths.upstream_conf.read_text()
    finally:
        _replace_upstream(gw)
    assert _where(gw, shed) == {s: "replica-2" for s in shed}


def test_with_affinity_off_nothing_is_keyed(tmp_path: Path,
                                            backends: tuple[int, list[Backend]]) -> None:
    base, _ = backends
    with gateway(plan_for(tmp_path / "rt", 4, base)) as plain:
        response = _post(plain, _chat({"role": "user", "content": "hi"}),
                         **{"X-Session-Id": "s"})
        assert response.status_code == 200 and "X-Fleet-Affinity" not in response.headers
        assert "js_import" not in plain.paths.nginx_conf.read_text()


def test_session_mode_ignores_the_opening(tmp_path: Path,
                                          backends: tuple[int, list[Backend]]) -> None:
    base, _ = backends
    with gateway(plan_for(tmp_path / "rt", 4, base, gateway={"affinity": "session"})) as gws:
        opening = _post(gws, _chat(SYSTEM, {"role": "user", "content": "hi"}))
        assert opening.headers["X-Fleet-Affinity"] == "none"
        user = _post(gws, _chat({"role": "user", "content": "hi"}, user="bob"))
        assert user.headers["X-Fleet-Affinity"] == "user"
