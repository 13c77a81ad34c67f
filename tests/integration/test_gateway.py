"""The gateway with real nginx in front of lightweight backends."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from router.config.spec import LIMIT_CONN_MAX
from router.disk.paths import RuntimePaths
from router.runtime.configs import write_checked
from tests.support.backend import Backend
from tests.support.harness import Running, free_port_block, gateway, plan_for, wait_for

pytestmark = pytest.mark.integration

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
# nginx's $request_id: 16 random bytes in hex.
REQUEST_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def two_backends() -> Iterator[tuple[int, list[Backend]]]:
    base = free_port_block(2)
    with Backend(base, "replica-0") as b0, Backend(base + 1, "replica-1") as b1:
        yield base, [b0, b1]


@pytest.fixture
def gw(tmp_path: Path, two_backends: tuple[int, list[Backend]]) -> Iterator[Running]:
    base, _ = two_backends
    with gateway(plan_for(tmp_path / "rt", 2, base)) as running:
        yield running


def _chat(url: str, body: dict | None = None, **kw: object) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", json=body or CHAT, timeout=10, **kw)


def test_requests_spread_over_replicas_and_name_the_server(
        gw: Running, two_backends: tuple[int, list[Backend]]) -> None:
    _, backends = two_backends
    seen = Counter()
    for _ in range(20):
        response = _chat(gw.url)
        assert response.status_code == 200
        # The header names the replica that really answered.
        assert response.headers["X-Fleet-Replica"] == response.json()["served_by"]
        seen[response.headers["X-Fleet-Replica"]] += 1
    assert set(seen) == {"replica-0", "replica-1"}
    assert [b.served for b in backends] == [seen["replica-0"], seen["replica-1"]]


def test_stream_reaches_client_before_backend_finishes(
        gw: Running, two_backends: tuple[int, list[Backend]]) -> None:
    gate = threading.Event()
    for backend in two_backends[1]:
        backend.stream_gate = gate
    try:
        with requests.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True},
                           stream=True, timeout=20) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            lines = response.iter_lines()
            first = next(line for line in lines if line)
            # The backend holds its second chunk until the gate opens (or 5 s
            # pass): the first one can only be here already if nginx did not
            # buffer it.
            assert sum(b.streams_finished for b in two_backends[1]) == 0
            event = json.loads(first.removeprefix(b"data: "))
            assert event["choices"][0]["delta"]["content"] == "t0 "
            gate.set()
            rest = [line for line in lines if line]
        assert rest[-1] == b"data: [DONE]"
        assert len(rest) == 3
    finally:
        gate.set()


def test_oversized_body_gets_json_413(tmp_path: Path,
                                      two_backends: tuple[int, list[Backend]]) -> None:
    base, backends = two_backends
    plan = plan_for(tmp_path / "rt", 2, base, gateway={"max_body_size": "1k"})
    with gateway(plan) as running:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
        response = _chat(running.url, big)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == 413 and "1k" in error["message"]
    assert sum(b.served for b in backends) == 0


def test_every_replica_down_gives_json_503(tmp_path: Path) -> None:
    base = free_port_block(2)  # nothing listens there
    with gateway(plan_for(tmp_path / "rt", 2, base)) as running:
        response = _chat(running.url)
        health = requests.get(f"{running.url}/health", timeout=10)
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["type"] == "ServiceUnavailableError"
    assert health.status_code == 503
    assert REQUEST_ID.fullmatch(response.headers["X-Request-Id"])
    assert REQUEST_ID.fullmatch(health.headers["X-Request-Id"])


def test_every_answer_the_gateway_makes_carries_a_request_id(
        tmp_path: Path, two_backends: tuple[int, list[Backend]]) -> None:
    """The openai SDK reads `request_id` from X-Request-Id; the gateway's own
    errors are the answers a client most needs to quote. The rate limit is
    the documented default burst (0), which nginx's burst= cannot take."""
    base, _ = two_backends
    plan = plan_for(tmp_path / "rt", 2, base, gateway={"max_body_size": "1k"},
                    limits={"requests_per_s": 1})
    with gateway(plan) as running:
        answers = {
            "404": requests.get(f"{running.url}/metrics", timeout=10),
            "405": requests.get(f"{running.url}/v1/chat/completions", timeout=10),
            "health": requests.get(f"{running.url}/health", timeout=10),
            "413": _chat(running.url, {**CHAT, "padding": "x" * 4096}),
        }
        # One request a second and no burst: among back-to-back requests one
        # is over the rate however slowly this machine sends them.
        for _ in range(20):
            response = _chat(running.url)
            if response.status_code == 429:
                answers["429"] = response
                break
    assert {name: r.status_code for name, r in answers.items()} == {
        "404": 404, "405": 405, "health": 200, "413": 413, "429": 429}
    for name, response in answers.items():
        assert REQUEST_ID.fullmatch(response.headers.get("X-Request-Id", "")), name
    assert answers["429"].headers["Retry-After"] == "1"
    assert answers["405"].headers["Allow"] == "POST"


def test_every_in_flight_cap_at_the_specs_bound_passes_nginx(tmp_path: Path) -> None:
    """The spec's largest in-flight caps are ones nginx's limit_conn takes: a
    spec that validates never fails at `nginx -t`."""
    plan = plan_for(tmp_path / "rt", 2, free_port_block(2), auth={"enabled": True},
                    limits={"concurrent": LIMIT_CONN_MAX},
                    priority={"enabled": True, "max_in_flight": {"batch": LIMIT_CONN_MAX},
                              "shed_queue_wait_s": {"batch": 3600}, "fair_share": True})
    paths = RuntimePaths(plan.spec.runtime_dir)
    write_checked(plan, paths)
    assert f"limit_conn fleet_class_batch {LIMIT_CONN_MAX};" in paths.nginx_conf.read_text()


def test_refused_replica_is_skipped_without_client_error(tmp_path: Path) -> None:
    base = free_port_block(2)
    with Backend(base, "replica-0") as alive:  # base + 1 refuses connections
        with gateway(plan_for(tmp_path / "rt", 2, base)) as running:
            codes = [_chat(running.url).status_code for _ in range(20)]
            health = requests.get(f"{running.url}/health", timeout=10)
    assert codes == [200] * 20
    assert alive.served == 20
    assert health.status_code == 200


def test_replica_503_is_retried_on_another(gw: Running,
                                           two_backends: tuple[int, list[Backend]]) -> None:
    _, (b0, b1) = two_backends
    b0.status_override = 503
    responses = [_chat(gw.url) for _ in range(10)]
    assert [r.status_code for r in responses] == [200] * 10
    assert {r.headers["X-Fleet-Replica"] for r in responses} == {"replica-1"}


def test_client_errors_pass_through_and_bench_no_replica(
        gw: Running, two_backends: tuple[int, list[Backend]]) -> None:
    for _ in range(6):
        response = _chat(gw.url, {**CHAT, "model": "unknown"})
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "model"  # the replica's own body
    # max_fails=2 would have benched a replica if 4xx counted as failures.
    seen = {_chat(gw.url).headers["X-Fleet-Replica"] for _ in range(10)}
    assert seen == {"replica-0", "replica-1"}


def test_unknown_path_gets_json_404(gw: Running) -> None:
    # "/" is the web console (test_console.py).
    for path in ("/metrics", "/admin", "/v2/models", "/v1/embeddings", "/sim/faults",
                 "/v1/responses/resp_1", "/pooling"):
        response = requests.get(gw.url + path, timeout=5)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == 404
        assert "/v1/responses, /tokenize, /detokenize" in response.json()["error"]["message"]


API_POSTS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/tokenize",
             "/detokenize"]


@pytest.mark.parametrize("path", API_POSTS)
def test_every_api_path_reaches_a_replica_with_the_same_checks(
        gw: Running, two_backends: tuple[int, list[Backend]], path: str) -> None:
    _, backends = two_backends
    response = requests.post(gw.url + path, json={"model": "m", "input": "hi"}, timeout=10)
    assert response.status_code == 200, path
    served = {b.name: b for b in backends}[response.headers["X-Fleet-Replica"]]
    assert served.last_path == path
    wrong_method = requests.get(gw.url + path, timeout=5)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    not_json = requests.post(gw.url + path, data=b"input=hi", timeout=5,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert not_json.status_code == 415
    streamed = requests.post(gw.url + path, json={"model": "m", "input": "hi", "stream": True},
                             timeout=10)
    assert streamed.headers["Content-Type"].startswith("text/event-stream")


def test_a_pooling_model_serves_embeddings_and_not_generation(
        tmp_path: Path, two_backends: tuple[int, list[Backend]]) -> None:
    base, backends = two_backends
    with gateway(plan_for(tmp_path / "rt", 2, base, model={"runner": "pooling"})) as running:
        embedded = requests.post(f"{running.url}/v1/embeddings",
                                 json={"model": "m", "input": "hi"}, timeout=10)
        assert embedded.status_code == 200
        assert {b.name: b for b in backends}[
            embedded.headers["X-Fleet-Replica"]].last_path == "/v1/embeddings"
        assert requests.post(f"{running.url}/tokenize", json={"model": "m", "prompt": "hi"},
                             timeout=10).status_code == 200
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
            refused = requests.post(running.url + path, json=CHAT, timeout=5)
            assert refused.status_code == 404, path
            assert "/v1/embeddings" in refused.json()["error"]["message"]
        # The console is a chat page.
        assert requests.get(running.url + "/", timeout=5).status_code == 404


def test_models_and_health_through_gateway(gw: Running) -> None:
    models = requests.get(f"{gw.url}/v1/models", timeout=5)
    assert models.json()["data"][0]["id"] == "m"
    assert requests.get(f"{gw.url}/health", timeout=5).status_code == 200


def test_access_log_is_json_with_the_replica(gw: Running) -> None:
    response = _chat(gw.url)
    log = gw.paths.log("gateway-access")

    def last_entry() -> dict | None:
        lines = log.read_text().splitlines() if log.exists() else []
        for line in reversed(lines):
            entry = json.loads(line)
            if entry["request_id"] == response.headers["X-Request-Id"]:
                return entry
        return None

    entry = wait_for(last_entry, 30, "the access log line")
    assert entry["replica"] == response.headers["X-Fleet-Replica"]
    assert entry["status"] == 200 and entry["upstream_status"] == "200"
    assert entry["upstream_addr"].startswith("127.0.0.1:")


def test_stub_status_only_on_loopback_status_port(gw: Running) -> None:
    port = gw.plan.spec.gateway.status_port
    text = requests.get(f"http://127.0.0.1:{port}/stub_status", timeout=5).text
    assert text.startswith("Active connections:")
    assert requests.get(f"{gw.url}/stub_status", timeout=5).status_code == 404
