"""Priority classes through real nginx and its njs module: a request's class
comes from its API key, a header may lower it and never raise it, and the
replica gets it as vLLM's `priority` with every other byte of the body as the
client sent it. One lightweight backend stands in for the replica."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from router.config.spec import FAIR_SHARE_FILE
from router.controller.admission import ClassState, FairShare, ShedBoard
from router.disk.keys import KeyStore, save_store
from router.disk.paths import RuntimePaths
from router.host.machine import detect, shed_dir
from tests.support.backend import Backend
from tests.support.harness import Running, free_port_block, gateway, plan_for, wait_for
from tests.unit.test_mtail import one_shot

pytestmark = pytest.mark.integration

CLASSES = {"interactive": 0, "default": 1, "batch": 2}
CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "caf\\u00e9 \xe2\x98\x95"}],' \
       b' "seed": 12345678901234567890, "temperature": 0.10}'


@pytest.fixture(scope="module", params=["off", "session"], ids=["balanced", "affinity"])
def gw(request: pytest.FixtureRequest,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Backend, dict]]:
    """A gateway with classes and keys on, in front of one backend: the balanced
    path, and the one through affinity.js's named locations."""
    base = free_port_block(1)
    runtime = tmp_path_factory.mktemp("priority") / "rt"
    store = KeyStore()
    secrets: dict[str, str] = {}
    for name, priority_class in (("chat", "interactive"), ("jobs", "batch"), ("plain", None)):
        store, key = store.add(name, priority_class=priority_class)
        assert key.secret is not None
        secrets[name] = key.secret
    RuntimePaths(runtime).create()
    save_store(RuntimePaths(runtime).api_keys, store)
    plan = plan_for(runtime, 1, base, auth={"enabled": True},
                    priority={"enabled": True, "max_in_flight": {"batch": 1},
                              "shed_queue_wait_s": {"batch": 10},
                              "fair_share": True},
                    gateway={"affinity": request.param})
    with Backend(base, "replica-0") as backend, gateway(plan) as running:
        try:
            yield running, backend, secrets
        finally:
            shutil.rmtree(_board(running).folder, ignore_errors=True)


def _post(gw: Running, body: bytes, key: str, stream: bool = False,
          **headers: str) -> requests.Response:
    return requests.post(f"{gw.url}/v1/chat/completions", data=body, timeout=10, stream=stream,
                         headers={"Content-Type": "application/json",
                                  "Authorization": f"Bearer {key}", **headers})


@contextlib.contextmanager
def _held_stream(gw: Running, backend: Backend, key: str) -> Iterator[None]:
    """A stream of ``key`` held open after its first chunk until the block ends,
    then read to its end."""
    held = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True}).encode()
    gate = threading.Event()
    backend.stream_gate = gate
    try:
        with _post(gw, held, key, stream=True) as stream:
            # The line iterator is kept: dropping it mid-stream closes the connection.
            lines = stream.iter_lines()
            assert next(line for line in lines if line)
            yield
            gate.set()
            assert [line for line in lines if line][-1] == b"data: [DONE]"
    finally:
        gate.set()
        backend.stream_gate = None


def _with_priority(body: bytes, level: int) -> bytes:
    return body[:-1] + b',"priority":' + str(level).encode() + b"}"


@pytest.mark.parametrize(("key", "header", "level"), [
    ("chat", None, 0), ("plain", None, 1), ("jobs", None, 2),
    ("chat", "batch", 2), ("plain", "batch", 2),
    # Asking for more than the key's class gets the key's class.
    ("jobs", "interactive", 2), ("plain", "interactive", 1), ("chat", "interactive", 0),
    # The header matches in any case (nginx maps compare strings so).
    ("chat", "Batch", 2),
])
def test_the_class_reaches_the_replica_as_vllm_priority(
        gw: tuple[Running, Backend, dict], key: str, header: str | None, level: int) -> None:
    running, backend, secrets = gw
    headers = {"X-Fleet-Priority": header} if header else {}
    answer = _post(running, CHAT, secrets[key], **headers)
    assert answer.status_code == 200, answer.text
    # Only the field is added: the big seed, the escaped and the raw UTF-8
    # text and the float's spelling arrive as sent.
    assert backend.last_body == _with_priority(CHAT, level)


def test_a_client_priority_in_the_body_is_overwritten(gw: tuple[Running, Backend, dict]) -> None:
    running, backend, secrets = gw
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "priority": -100}
    answer = _post(running, json.dumps(body).encode(), secrets["jobs"])
    assert answer.status_code == 200, answer.text
    assert json.loads(backend.last_body) == {**body, "priority": 2}


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"',
                                  b'{"model": "m", "messages": [{"role": "user", '
                                  b'"content": "\xff\xfe"}]}'])
def test_a_body_that_is_no_json_object_passes_unchanged(
        gw: tuple[Running, Backend, dict], body: bytes) -> None:
    running, backend, secrets = gw
    answer = _post(running, body, secrets["chat"])
    # The replica's own 400, as without classes.
    assert answer.status_code == 400
    assert backend.last_body == body


def test_an_empty_body_stays_empty(gw: tuple[Running, Backend, dict]) -> None:
    """njs has no body buffer then; the replica must not get a word in its place."""
    running, backend, secrets = gw
    _post(running, b"", secrets["chat"])
    assert backend.last_body == b""


def test_an_empty_object_gets_the_field_alone(gw: tuple[Running, Backend, dict]) -> None:
    running, backend, secrets = gw
    _post(running, b"{ }", secrets["plain"])
    assert json.loads(backend.last_body) == {"priority": 1}


def test_a_header_that_names_no_class_is_refused_before_any_replica(
        gw: tuple[Running, Backend, dict]) -> None:
    running, backend, secrets = gw
    served = backend.served
    answer = _post(running, CHAT, secrets["chat"], **{"X-Fleet-Priority": "urgent"})
    assert answer.status_code == 400
    error: dict[str, Any] = answer.json()["error"]
    assert error["type"] == "BadRequestError"
    assert "interactive, default, batch" in error["message"]
    assert answer.headers["X-Request-Id"]
    assert backend.served == served


def test_a_stream_keeps_streaming(gw: tuple[Running, Backend, dict]) -> None:
    running, backend, secrets = gw
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True}).encode()
    with _post(running, body, secrets["jobs"], stream=True) as answer:
        lines = [line for line in answer.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    assert json.loads(backend.last_body)["priority"] == 2


def test_the_access_log_names_each_request_level(gw: tuple[Running, Backend, dict]) -> None:
    running, _, secrets = gw
    request_id = _post(running, CHAT, secrets["jobs"]).headers["X-Request-Id"]

    def logged() -> dict[str, Any] | None:
        # nginx writes the line as the request ends, just after the answer.
        lines = running.paths.access_log.read_text().splitlines()
        return next((json.loads(line) for line in lines if request_id in line), None)

    line = wait_for(logged, 30, "the request's access log line")
    assert (line["priority"], line["class"]) == ("2", "batch")


def test_a_class_at_its_cap_is_refused_at_once_and_the_others_pass(
        gw: tuple[Running, Backend, dict]) -> None:
    running, backend, secrets = gw
    # Its first chunk is here: the batch class's one slot is taken.
    with _held_stream(running, backend, secrets["jobs"]):
        refused = _post(running, CHAT, secrets["jobs"])
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] and refused.headers["X-Request-Id"]
        assert "class batch: 1 in flight across the fleet" in refused.json()["error"]["message"]
        # A request that lowers itself to batch is batch.
        lowered = _post(running, CHAT, secrets["chat"], **{"X-Fleet-Priority": "batch"})
        assert lowered.status_code == 429
        assert _post(running, CHAT, secrets["chat"]).status_code == 200
        assert _post(running, CHAT, secrets["plain"]).status_code == 200
    # The slot is free again once the stream ended.
    assert wait_for(lambda: _post(running, CHAT, secrets["jobs"]).status_code == 200, 30,
                    "the batch class's slot to be free")


def test_the_log_exporter_counts_requests_per_class_and_status(
        gw: tuple[Running, Backend, dict], tmp_path: Path) -> None:
    """mtail over this gateway's own access log: what the dashboards' per-class
    panel and FleetClassShedding read. Every inference line of the log is
    counted under its class, and nothing else is."""
    running, _, secrets = gw
    ids = [_post(running, CHAT, secrets[key]).headers["X-Request-Id"] for key in ("chat", "jobs")]
    wait_for(lambda: all(i in running.paths.access_log.read_text() for i in ids), 30,
             "both requests' access log lines")
    text = running.paths.access_log.read_text()
    text = text[:text.rfind("\n") + 1]  # whole lines: the gateway keeps writing
    lines = [json.loads(line) for line in text.splitlines()]
    expected = Counter((line["class"], str(line["status"])) for line in lines
                       if line["route"] in {"chat", "completions", "responses", "embeddings"})
    assert expected[("batch", "200")] >= 1 and expected[("interactive", "200")] >= 1
    log = tmp_path / "access.log"
    log.write_text(text)
    counted = one_shot(log)["fleet_gateway_class_requests_total"]
    assert {(dict(k)["priority_class"], dict(k)["status"]): v
            for k, v in counted.items()} == dict(expected)


def _board(running: Running) -> ShedBoard:
    """The flags' folder as the controller finds it (a staged one when the
    workers run as nobody)."""
    return ShedBoard(shed_dir(running.paths.root, detect().run_user, running.paths.shed_dir))


def test_a_shed_class_is_answered_503_at_once_with_the_controllers_retry_after(
        gw: tuple[Running, Backend, dict]) -> None:
    running, backend, secrets = gw
    board = _board(running)
    reason = "queue wait 14.0s (waiting 42, finishing 3.00/s) > limit 10s"
    board.clear()
    board.publish({"batch": ClassState("batch", 10.0, True, 9, reason)})
    try:
        before = backend.served
        for answer in (_post(running, CHAT, secrets["jobs"]),
                       # A request lowered to a shed class is shed too.
                       _post(running, CHAT, secrets["chat"], **{"X-Fleet-Priority": "batch"})):
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "9"
            assert answer.headers["X-Request-Id"]
            error = answer.json()["error"]
            assert (error["type"], error["code"]) == ("ServiceUnavailableError", 503)
            assert "priority class batch" in error["message"] and reason in error["message"]
        # The classes above it pass, and nothing shed reached the replica.
        assert _post(running, CHAT, secrets["chat"]).status_code == 200
        assert _post(running, CHAT, secrets["plain"]).status_code == 200
        assert backend.served == before + 2
    finally:
        board.publish({"batch": ClassState("batch", 10.0, False, 1, "drained")})
    assert _post(running, CHAT, secrets["jobs"]).status_code == 200


def test_a_flag_gone_between_test_and_read_still_answers_503_with_a_second(
        gw: tuple[Running, Backend, dict]) -> None:
    """The controller may let the class in between nginx's test and njs's
    read: the answer is still whole (Retry-After 1, a generic reason)."""
    running, _, secrets = gw
    board = _board(running)
    board.clear()
    flag = board.folder / "batch"
    flag.write_text("not json")
    try:
        answer = _post(running, CHAT, secrets["jobs"])
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "1"
        assert "the fleet is saturated" in answer.json()["error"]["message"]
    finally:
        board.clear()


def test_a_key_past_its_fair_share_is_refused_while_other_keys_pass(
        gw: tuple[Running, Backend, dict]) -> None:
    """The controller caps each key at 1 in flight: the key's second request
    is refused at once, another key's passes; without the cap both pass."""
    running, backend, secrets = gw
    board = _board(running)
    board.clear()
    board.publish_share(FairShare(1, 2, 2, "2 requests running and waiting on 2 slots"))
    assert (board.folder / FAIR_SHARE_FILE).read_text() == "1\n"
    try:
        with _held_stream(running, backend, secrets["chat"]):
            refused = _post(running, CHAT, secrets["chat"])
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] and refused.headers["X-Request-Id"]
            assert "each key: its equal share" in refused.json()["error"]["message"]
            assert _post(running, CHAT, secrets["plain"]).status_code == 200
            # No cap: the same key's second request passes beside its stream.
            board.publish_share(FairShare(None, 2, 2, "1 running and waiting: no cap"))
            assert _post(running, CHAT, secrets["chat"]).status_code == 200
    finally:
        board.clear()
