"""`fleet up` of a simulated fleet: supervision, restarts and a clean `fleet down`,
with real supervisord, nginx and Prometheus."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests
import yaml

from router.disk.paths import RuntimePaths
from router.runtime.health import port_in_use
from router.runtime.procs import descendants, process_alive
from router.runtime.supervise import Supervisor
from tests.support.cli import fleet
from tests.support.fleet import running_fleet
from tests.support.harness import wait_for

pytestmark = pytest.mark.integration

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@dataclass
class SimCluster:
    spec: Path
    paths: RuntimePaths
    url: str
    ports: list[int]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    with running_fleet(tmp_path, 3, sim={"replicas": [{}, {}, {"speed": 0.33}]}) as running:
        ports = [p for p in running.ports if p != running.data["controller"]["port"]]
        yield SimCluster(running.spec, running.paths, running.url, ports)


def _chat(url: str) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10)


def test_fleet_serves_through_the_gateway(cluster: SimCluster) -> None:
    seen = Counter(_chat(cluster.url).headers["X-Fleet-Replica"] for _ in range(30))
    assert set(seen) == {"replica-0", "replica-1", "replica-2"}
    status = fleet("status", "--spec", str(cluster.spec), "--json")
    replicas = yaml.safe_load(status.stdout)["replicas"]
    assert [r["device"] for r in replicas] == ["sim:speed=1", "sim:speed=1", "sim:speed=0.33"]
    assert all(r["health"] == 200 and r["state"] in {"RUNNING", "STARTING"} for r in replicas)
    # The Responses API with the official client (its default in newer SDKs),
    # and the tokenizer, through the gateway.
    with openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0,
                       timeout=30) as client:
        answer = client.responses.create(model="sim-model", input="hi", max_output_tokens=3)
        assert answer.status in {"completed", "incomplete"} and answer.output_text
        events = list(client.responses.create(model="sim-model", input="hi",
                                              max_output_tokens=3, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == events[-1].response.output_text
    tokens = requests.post(f"{cluster.url}/tokenize", json={"prompt": "Hello, wörld"},
                           timeout=10).json()["tokens"]
    assert requests.post(f"{cluster.url}/detokenize", json={"tokens": tokens},
                         timeout=10).json() == {"prompt": "Hello, wörld"}


def test_killed_replica_is_restarted_without_client_errors(cluster: SimCluster) -> None:
    supervisor = Supervisor(cluster.paths)
    before = supervisor.process("replica-1").pid
    os.kill(int(cluster.paths.launch_state("replica-1").read_text()), signal.SIGKILL)
    codes = [_chat(cluster.url).status_code for _ in range(30)]
    assert codes == [200] * 30
    wait_for(lambda: supervisor.process("replica-1").pid not in (0, before), 30,
             "supervisord to restart replica-1")
    wait_for(lambda: _healthy(f"http://127.0.0.1:{cluster.ports[4]}"), 30,
             "replica-1 to be healthy again")


def test_engine_death_exit_zero_is_restarted(cluster: SimCluster) -> None:
    supervisor = Supervisor(cluster.paths)
    before = supervisor.process("replica-0").pid
    replica_url = f"http://127.0.0.1:{cluster.ports[3]}"
    requests.post(f"{replica_url}/sim/faults", json={"engine_dead": True}, timeout=5)
    # vLLM exits with 0 when its engine dies; autorestart must not care.
    wait_for(lambda: supervisor.process("replica-0").pid not in (0, before), 30,
             "supervisord to restart replica-0 after its exit with status 0")
    wait_for(lambda: _healthy(replica_url), 30, "replica-0 to answer /health again")


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_down_leaves_no_process_and_frees_every_port(cluster: SimCluster) -> None:
    supervisor = Supervisor(cluster.paths)
    root = supervisor.pid()
    assert root is not None
    tree = [root, *descendants(root)]
    assert len(tree) >= 9  # supervisord, 3 launchers + 3 replicas, nginx master, Prometheus
    down = fleet("down", "--spec", str(cluster.spec))
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not any(process_alive(p) for p in tree), 20, "every process to exit")
    assert not any(port_in_use("127.0.0.1", port) for port in cluster.ports)


def test_second_up_on_a_running_cluster_is_refused(cluster: SimCluster) -> None:
    again = fleet("up", "--spec", str(cluster.spec))
    assert again.returncode == 6
    assert "already running" in again.stderr and "fleet down" in again.stderr
    assert _chat(cluster.url).status_code == 200
