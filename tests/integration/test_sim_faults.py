"""Each fault of the simulator, on a real simulator process."""

from __future__ import annotations

import socket
import threading

import pytest
import requests

from tests.support.harness import wait_for
from tests.support.sim import sim_replica

pytestmark = pytest.mark.integration

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_crash_exits_at_once_with_non_zero() -> None:
    with sim_replica() as sim:
        assert sim.faults(crash=True).status_code == 200
        assert sim.process.wait(timeout=10) == 1


def test_engine_dead_fails_in_flight_then_exits_zero() -> None:
    with sim_replica() as sim:
        outcome: dict[str, requests.Response] = {}

        def long_request() -> None:
            body = {**CHAT, "max_tokens": 2000, "ignore_eos": True}
            outcome["r"] = requests.post(f"{sim.url}/v1/chat/completions", json=body, timeout=60)

        worker = threading.Thread(target=long_request)
        worker.start()
        wait_for(lambda: requests.get(f"{sim.url}/load", timeout=2).json()["server_load"] == 1,
                 10, "the request to be in flight")
        assert sim.faults(engine_dead=True).json()["engine_dead"] is True
        worker.join(timeout=30)
        assert outcome["r"].status_code == 500
        assert outcome["r"].json()["error"]["type"] == "InternalServerError"
        assert requests.get(f"{sim.url}/health", timeout=2).status_code == 503
        assert requests.post(f"{sim.url}/v1/chat/completions", json=CHAT,
                             timeout=5).status_code == 500
        assert sim.process.wait(timeout=20) == 0  # as vLLM: a dead engine exits with 0


def test_hang_keeps_sockets_open_and_answers_nothing_until_it_ends() -> None:
    with sim_replica() as sim:
        sim.faults(hang=True)
        with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.settimeout(1.5)
            with pytest.raises(TimeoutError):
                conn.recv(1)  # connected, not answered, not closed
            with pytest.raises(requests.Timeout):
                requests.get(f"{sim.url}/health", timeout=1)
            assert sim.faults(hang=False).json()["hang"] is False
            # What was held carries on, as a SIGCONTed vLLM's requests do.
            conn.settimeout(5)
            assert conn.recv(64).startswith(b"HTTP/1.1 200")
        assert requests.get(f"{sim.url}/health", timeout=5).status_code == 200


def test_slow_changes_the_effective_speed() -> None:
    with sim_replica("--speed", "2") as sim:
        assert sim.faults(slow=0.25).json()["effective_speed"] == pytest.approx(0.5)
        assert requests.post(f"{sim.url}/v1/chat/completions", json=CHAT,
                             timeout=10).status_code == 200
        assert sim.faults(clear=True).json()["effective_speed"] == pytest.approx(2.0)


def test_error_rate_answers_500_in_vllm_shape() -> None:
    with sim_replica("--error-rate", "1") as sim:
        codes = {requests.post(f"{sim.url}/v1/chat/completions", json=CHAT,
                               timeout=5).status_code for _ in range(5)}
        assert codes == {500}
        assert requests.get(f"{sim.url}/health", timeout=2).status_code == 200
        sim.faults(error_rate=0)
        assert requests.post(f"{sim.url}/v1/chat/completions", json=CHAT,
                             timeout=5).status_code == 200


def test_startup_delay_refuses_connections_until_ready() -> None:
    with sim_replica("--startup-delay", "2", wait=False) as sim:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{sim.url}/health", timeout=1)
        wait_for(lambda: _ok(sim.url), 20, "the delayed simulator")


def _ok(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).ok
    except requests.RequestException:
        return False


@pytest.mark.parametrize(("body", "words"), [
    ({"explode": True}, "unknown fault"),
    ({"slow": 0}, "slow must be"),
    ({"error_rate": 2}, "between 0 and 1"),
])
def test_bad_fault_requests_are_400(body: dict, words: str) -> None:
    with sim_replica() as sim:
        response = sim.faults(**body)
        assert response.status_code == 400
        assert words in response.json()["error"]["message"]
        assert sim.process.poll() is None


def test_bad_sim_flags_are_one_clear_error() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "router.cli", "sim", "serve", "--port", "1",
                             "--speed", "-1"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("error: speed:")
    assert "hint:" in result.stderr
