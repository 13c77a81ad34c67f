"""Priority classes through real nginx and its njs module: a request's class
comes from its API key, a header may lower it and never raise it, and the
replica gets it as vLLM's `priority` with every other byte of the body as the
client sent it. One lightweight backend stands in for the replica."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from router.disk.keys import KeyStore, save_store
from router.disk.paths import RuntimePaths
from tests.support.backend import Backend
from tests.support.harness import Running, free_port_block, gateway, plan_for, wait_for

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
                    priority={"enabled": True, "max_in_flight": {"batch": 1}},
                    gateway={"affinity": request.param})
    with Backend(base, "replica-0") as backend, gateway(plan) as running:
        yield running, backend, secrets


def _post(gw: Running, body: bytes, key: str, stream: bool = False,
          **headers: str) -> requests.Response:
    return requests.post(f"{gw.url}/v1/chat/completions", data=body, timeout=10, stream=stream,
                         headers={"Content-Type": "application/json",
                                  "Authorization": f"Bearer {key}", **headers})


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

    assert wait_for(logged, 30, "the request's access log line")["priority"] == "2"


def test_a_class_at_its_cap_is_refused_at_once_and_the_others_pass(
        gw: tuple[Running, Backend, dict]) -> None:
    running, backend, secrets = gw
    held = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True}).encode()
    gate = threading.Event()
    backend.stream_gate = gate
    try:
        with _post(running, held, secrets["jobs"], stream=True) as stream:
            # Its first chunk is here: the batch class's one slot is taken.
            # (The line iterator is kept: dropping it mid-stream closes the
            # connection.)
            lines = stream.iter_lines()
            assert next(line for line in lines if line)
            refused = _post(running, CHAT, secrets["jobs"])
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] and refused.headers["X-Request-Id"]
            assert "class batch: 1 in flight across the fleet" in \
                refused.json()["error"]["message"]
            # A request that lowers itself to batch is batch.
            lowered = _post(running, CHAT, secrets["chat"], **{"X-Fleet-Priority": "batch"})
            assert lowered.status_code == 429
            assert _post(running, CHAT, secrets["chat"]).status_code == 200
            assert _post(running, CHAT, secrets["plain"]).status_code == 200
            gate.set()
            assert [line for line in lines if line][-1] == b"data: [DONE]"
    finally:
        gate.set()
        backend.stream_gate = None
    # The slot is free again once the stream ended.
    assert wait_for(lambda: _post(running, CHAT, secrets["jobs"]).status_code == 200, 30,
                    "the batch class's slot to be free")
