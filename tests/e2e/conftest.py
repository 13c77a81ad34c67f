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

from router.config.spec import load_spec, resolve_engine_settings
from router.disk.paths import RuntimePaths
from router.models import store as model_store
from tests.support.fleet import running_fleet

# Greedy decoding: a sampled answer from a 135M model may be a word and a stop
# (seen: "Ten." to "Count to five."), or a stop at once, which says nothing of
# the gateway or of the simulator's likeness.
GREEDY = {"temperature": 0}


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
    def model_is_prepared(spec_path: Path) -> None:
        spec = load_spec(spec_path)
        settings = resolve_engine_settings(spec, "cpu")
        try:
            model_store.resolve(settings.model, spec.model.cache_dir)
        except model_store.ModelError as exc:
            pytest.fail(f"{exc}; run `fleet model prepare` (make test does it first)")

    with running_fleet(tmp_path_factory.mktemp("e2e"), 2, engine="cpu",
                       before_up=model_is_prepared, up_timeout=900,
                       prometheus={"scrape_interval_s": 2},
                       # Classes on: every request through the gateway reaches
                       # real vLLM with the priority field the gateway wrote.
                       priority={"enabled": True}) as running:
        spec = load_spec(running.spec)
        settings = resolve_engine_settings(spec, "cpu")
        yield Cluster(running.spec, running.paths, running.url, settings.served_model_name,
                      settings.max_model_len, running.ports, running.replica_urls)


@pytest.fixture
def client(cluster: Cluster) -> Iterator[openai.OpenAI]:
    # No retries: a failure the gateway lets through must show up here.
    with openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", timeout=120,
                       max_retries=0) as client:
        yield client


