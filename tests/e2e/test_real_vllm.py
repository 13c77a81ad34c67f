"""`fleet up` with two real CPU vLLM replicas, used through the official client.

Needs the CPU model prepared (`fleet model prepare`; `make test` does it).
The tests share one cluster and run in file order: the last one takes it down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests
import yaml

from router import model as model_store
from router.health import port_in_use
from router.runtime import RuntimePaths
from router.spec import load_spec, resolve_engine_settings
from router.supervise import Supervisor, descendants, process_alive
from tests.support.harness import free_port, free_port_block, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@dataclass
class Cluster:
    spec_path: Path
    paths: RuntimePaths
    url: str
    model: str
    ports: list[int]


def fleet(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("e2e")
    base = free_port_block(2)
    data = {
        "engine": "cpu",
        "replicas": 2,
        "runtime_dir": str(tmp / "rt"),
        "ports": {"replica_base": base},
        "gateway": {"port": free_port(), "status_port": free_port()},
        "prometheus": {"port": free_port(), "scrape_interval_s": 2},
    }
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    spec = load_spec(spec_path)
    settings = resolve_engine_settings(spec, "cpu")
    try:
        model_store.resolve(settings.model, spec.model.cache_dir)
    except model_store.ModelError as exc:
        pytest.fail(f"{exc}; run `fleet model prepare` (make test does it first)")
    up = fleet("up", "--spec", str(spec_path))
    assert up.returncode == 0, f"fleet up failed:\n{up.stdout}\n{up.stderr}"
    ports = [spec.gateway.port, spec.gateway.status_port, spec.prometheus.port, base, base + 1]
    try:
        yield Cluster(spec_path, RuntimePaths(spec.runtime_dir),
                      f"http://127.0.0.1:{spec.gateway.port}", settings.served_model_name, ports)
    finally:
        fleet("down", "--spec", str(spec_path), timeout=180)


@pytest.fixture
def client(cluster: Cluster) -> Iterator[openai.OpenAI]:
    # No retries: a failure the gateway lets through must show up here.
    with openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", timeout=120,
                       max_retries=0) as client:
        yield client


def test_chat_completion(cluster: Cluster, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=cluster.model, max_tokens=16,
        messages=[{"role": "user", "content": "Name a colour."}])
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 16


def test_completion(cluster: Cluster, client: openai.OpenAI) -> None:
    reply = client.completions.create(model=cluster.model, prompt="The sky is",
                                                max_tokens=8)
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens <= 8


def test_streaming_chat_arrives_in_pieces(cluster: Cluster, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=cluster.model, max_tokens=24, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count from one to ten."}])
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(pieces) >= 3, pieces
    assert finish in {"stop", "length"}
    assert usage is not None and usage.completion_tokens >= len(pieces) - 1


def test_both_replicas_serve(cluster: Cluster, client: openai.OpenAI) -> None:
    seen: set[str] = set()
    for _ in range(20):
        raw = client.chat.completions.with_raw_response.create(
            model=cluster.model, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        seen.add(raw.headers["X-Fleet-Replica"])
        if seen == {"replica-0", "replica-1"}:
            break
    assert seen == {"replica-0", "replica-1"}


def test_sigkilled_replica_is_restarted_and_clients_see_no_failure(
        cluster: Cluster, client: openai.OpenAI) -> None:
    supervisor = Supervisor(cluster.paths)
    before = supervisor.process("replica-0").pid
    vllm_pid = int(cluster.paths.launch_state("replica-0").read_text())
    os.kill(vllm_pid, signal.SIGKILL)
    failures = 0
    served_by_0_again = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not served_by_0_again:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=cluster.model, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
            served_by_0_again = raw.headers["X-Fleet-Replica"] == "replica-0"
        except openai.APIError:
            failures += 1
        time.sleep(0.5)
    after = supervisor.process("replica-0")
    assert after.pid != before and after.state == "RUNNING"
    assert served_by_0_again, "replica-0 did not serve again within 300 s"
    assert failures == 0
    assert not process_alive(vllm_pid)


def test_down_leaves_no_process_behind(cluster: Cluster) -> None:
    supervisor = Supervisor(cluster.paths)
    root = supervisor.pid()
    assert root is not None
    tree = [root, *descendants(root)]
    assert len(tree) >= 8  # supervisord, 2 launchers, 2 vLLM trees, nginx, Prometheus
    result = fleet("down", "--spec", str(cluster.spec_path), timeout=180)
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: not any(process_alive(p) for p in tree), 30, "every process to exit")
    assert not any(port_in_use("127.0.0.1", port) for port in cluster.ports)
    with pytest.raises(requests.ConnectionError):
        requests.get(cluster.url + "/health", timeout=2)
