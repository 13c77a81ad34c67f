"""One real CPU vLLM cluster for the whole e2e tier: starting one costs most
of a minute on two cores.

Needs the CPU model prepared (`fleet model prepare`; `make test` does it).
Modules run in name order; test_real_vllm.py ends with `fleet down`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import yaml

from router.config.spec import load_spec, resolve_engine_settings
from router.disk.paths import RuntimePaths
from router.models import store as model_store
from tests.support.cli import fleet
from tests.support.harness import free_port, free_port_block, gateway_metrics_ports


@dataclass
class Cluster:
    spec_path: Path
    paths: RuntimePaths
    url: str
    model: str
    max_model_len: int
    ports: list[int]
    replica_urls: list[str]


@pytest.fixture(scope="session")
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
        "controller": {"port": free_port()},
        "gateway_metrics": gateway_metrics_ports(),
    }
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    spec = load_spec(spec_path)
    settings = resolve_engine_settings(spec, "cpu")
    try:
        model_store.resolve(settings.model, spec.model.cache_dir)
    except model_store.ModelError as exc:
        pytest.fail(f"{exc}; run `fleet model prepare` (make test does it first)")
    up = fleet("up", "--spec", str(spec_path), timeout=900)
    assert up.returncode == 0, f"fleet up failed:\n{up.stdout}\n{up.stderr}"
    ports = [spec.gateway.port, spec.gateway.status_port, spec.prometheus.port,
             spec.controller.port, base, base + 1]
    try:
        yield Cluster(spec_path, RuntimePaths(spec.runtime_dir),
                      f"http://127.0.0.1:{spec.gateway.port}", settings.served_model_name,
                      settings.max_model_len, ports,
                      [f"http://127.0.0.1:{base + i}" for i in range(2)])
    finally:
        fleet("down", "--spec", str(spec_path), timeout=180)


@pytest.fixture
def client(cluster: Cluster) -> Iterator[openai.OpenAI]:
    # No retries: a failure the gateway lets through must show up here.
    with openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", timeout=120,
                       max_retries=0) as client:
        yield client


