from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from router.config.spec import (
    ENGINE_DEFAULTS,
    EXAMPLE_SPEC,
    ClusterSpec,
    load_spec,
    parse_spec,
    resolve_engine_settings,
)
from router.errors import SpecError


def test_empty_spec_gets_every_default() -> None:
    spec = parse_spec({})
    assert spec.engine == "auto"
    assert spec.replicas == "auto"
    assert (spec.gateway.host, spec.gateway.port) == ("127.0.0.1", 8080)
    assert spec.ports.replica_base == 8100
    assert spec.prometheus.scrape_interval_s == 5
    assert spec.model.name is None


def test_example_spec_documents_the_real_defaults() -> None:
    """Every value written in deploy/cluster.example.yaml equals the code default."""
    written = yaml.safe_load(EXAMPLE_SPEC.read_text())
    defaults = ClusterSpec().model_dump(mode="json")

    def compare(node: dict, default: dict, path: str) -> None:
        for key, value in node.items():
            if value is None:  # a section with all keys commented out
                continue
            if isinstance(value, dict):
                compare(value, default[key], f"{path}{key}.")
            else:
                expected = default[key]
                assert value == expected or list(value) == list(expected), f"{path}{key}"

    compare(written, defaults, "")
    assert load_spec(EXAMPLE_SPEC) == load_spec(None)


def test_engine_defaults_fill_unset_fields_only() -> None:
    cpu = resolve_engine_settings(parse_spec({}), "cpu")
    assert cpu.model == ENGINE_DEFAULTS["cpu"].model
    assert cpu.max_model_len == ENGINE_DEFAULTS["cpu"].max_model_len
    gpu = resolve_engine_settings(
        parse_spec({"model": {"served_name": "m"}, "vllm": {"max_num_seqs": 3}}), "gpu")
    assert gpu.model == "Qwen/Qwen2.5-7B-Instruct-AWQ"
    assert (gpu.served_model_name, gpu.max_num_seqs) == ("m", 3)


def test_all_commented_section_means_defaults() -> None:
    assert parse_spec({"model": None, "vllm": None}) == parse_spec({})


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        ({"enigne": "cpu"}, "enigne", "unknown key"),
        ({"gateway": {"prot": 8080}}, "gateway.prot", "unknown key"),
        ({"engine": "tpu"}, "engine", "'auto', 'gpu', 'cpu', 'sim' or 'external'"),
        ({"replicas": 0}, "replicas", "need 1 to 64"),
        ({"replicas": 2**31}, "replicas", "need 1 to 64"),
        ({"replicas": "many"}, "replicas", "auto"),
        ({"gateway": {"port": 70000}}, "gateway.port", "65535"),
        ({"gateway": {"port": "http"}}, "gateway.port", "integer"),
        ({"gateway": {"max_body_size": "1 MB"}}, "gateway.max_body_size", "nginx size"),
        ({"gateway": {"port": 9090}}, "(top level)", "give each its own port"),
        ({"vllm": {"gpu_memory_utilization": 1.5}}, "vllm.gpu_memory_utilization", "1"),
        ({"vllm": {"extra_args": ["--port=1"]}}, "vllm.extra_args", "set by llm-fleet"),
        ({"vllm": {"extra_args": ["--quantization", "awq"]}}, "vllm.extra_args", "awq_marlin"),
        ({"vllm": {"extra_args": ["--runner=pooling"]}}, "vllm.extra_args", "set by llm-fleet"),
        ({"model": {"runner": "embed"}}, "model.runner", "pooling"),
        ({"engine": "sim", "model": {"runner": "pooling"}}, "(top level)", "engine cpu, gpu"),
        ({"prometheus": {"retention": "two days"}}, "prometheus.retention", "duration"),
        ({"prometheus": {"scrape_interval_s": 0}}, "prometheus.scrape_interval_s", "1"),
        ({"prometheus": {"retention_size": "2 gigs"}}, "prometheus.retention_size", "2GB"),
        ({"logs": {"keep": 0}}, "logs.keep", "1"),
        ({"logs": {"rotate_size_mb": "big"}}, "logs.rotate_size_mb", "integer"),
        ({"controller": {"pace": {"deadband": 0.9}}}, "controller.pace.deadband", "1"),
        ({"model": {"served_name": "my model"}}, "model.served_name", "letters"),
        ({"gateway": "8080"}, "gateway", "dictionary"),
        ({"gateway": {"max_header_size": "big"}}, "gateway.max_header_size", "nginx size"),
        ({"gateway": {"client_timeout_s": 0}}, "gateway.client_timeout_s", "1"),
        ({"auth": {"enabled": "sometimes"}}, "auth.enabled", "boolean"),
        ({"auth": {"keys": ["sk-1"]}}, "auth.keys", "unknown key"),
        ({"limits": {"requests_per_s": 0}}, "limits.requests_per_s", "1"),
        ({"limits": {"requests_per_s": 2.5}}, "limits.requests_per_s", "integer"),
        ({"limits": {"burst": -1}}, "limits.burst", "0"),
        ({"limits": {"concurrent": 0}}, "limits.concurrent", "1"),
        ({"console": {"grafana_url": "grafana:3000"}}, "console.grafana_url", "http(s) URL"),
        ({"sim": {"defaults": {"profile": ["h200"]}}}, "sim.defaults", "profiles are"),
        ({"vllm": {"replicas": [{}, {"max_num_sequences": 8}]}},
         "vllm.replicas[1].max_num_sequences", "unknown key"),
        ({"vllm": {"replicas": [{"max_num_seqs": 0}]}}, "vllm.replicas[0].max_num_seqs", "1"),
        ({"vllm": {"replicas": [{"extra_args": ["--port", "9"]}]}},
         "vllm.replicas[0].extra_args", "set by llm-fleet"),
        ({"controller": {"pace": {"false_moves_per_hour": 0}}},
         "controller.pace.false_moves_per_hour", "0"),
        ({"priority": {"classes": []}}, "priority.classes", "1 to 8 classes"),
        ({"priority": {"classes": ["gold", "Gold"]}}, "priority.classes", "lowercase"),
        ({"priority": {"classes": ["gold", "gold"]}}, "priority.classes", "repeated: gold"),
        ({"priority": {"classes": ["gold", "bulk"]}}, "priority", "default_class 'default'"),
        ({"priority": {"enabled": True, "default_class": "vip"}}, "priority",
         "interactive, default, batch"),
        ({"priority": {"max_in_flight": {"bulk": 4}}}, "priority", "names bulk, not a class"),
        ({"priority": {"max_in_flight": {"batch": 0}}}, "priority.max_in_flight", "1 to"),
        # nginx's limit_conn refuses more than 65535 at `nginx -t`.
        ({"priority": {"max_in_flight": {"batch": 65536}}}, "priority.max_in_flight",
         "1 to 65535"),
        ({"limits": {"concurrent": 65536}}, "limits.concurrent", "65535"),
        ({"priority": {"shed_queue_wait_s": {"bulk": 4}}}, "priority",
         "names bulk, not a class"),
        ({"priority": {"shed_queue_wait_s": {"batch": 0}}}, "priority.shed_queue_wait_s",
         "more than 0"),
        # Lower classes go first: one shed above an unshed one, or after it, is refused.
        ({"priority": {"shed_queue_wait_s": {"default": 10}}}, "priority",
         "sheds default but not batch"),
        ({"priority": {"shed_queue_wait_s": {"default": 10, "batch": 20}}}, "priority",
         "give batch at most 10"),
        ({"priority": {"shed_queue_wait_s": {"batch": 10}}}, "(top level)",
         "needs priority.enabled"),
        ({"priority": {"enabled": True, "shed_queue_wait_s": {"batch": 10}},
          "prometheus": {"enabled": False}}, "(top level)", "prometheus.enabled"),
        ({"priority": {"enabled": True, "fair_share": True}}, "(top level)",
         "auth.enabled"),
        ({"budgets": {"enabled": True}}, "(top level)", "needs auth.enabled"),
        ({"budgets": {"enabled": True}, "auth": {"enabled": True},
          "gateway_metrics": {"enabled": False}}, "(top level)", "gateway_metrics.enabled"),
        ({"budgets": {"tokens_per_min": 0}}, "budgets.tokens_per_min", "1"),
        ({"vllm": {"extra_args": ["--scheduling-policy=priority"]}}, "vllm.extra_args",
         "priority.enabled: true"),
    ],
)
def test_bad_spec_names_the_key_and_why(data: dict, where: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(data, "spec.yaml")
    message = str(caught.value)
    assert message.startswith("spec.yaml: ")
    assert any(p.startswith(f"{where}:") for p in caught.value.problems), caught.value.problems
    assert words in message
    assert caught.value.hint


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"engine": "tpu", "replicas": -1, "bogus": 1})
    assert len(caught.value.problems) == 3


def test_spec_that_is_not_a_mapping() -> None:
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_spec(["engine", "cpu"])


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("engine: cpu\ngateway:\n  port: [8080\n")
    with pytest.raises(SpecError, match=r"not valid YAML at line \d+"):
        load_spec(bad)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist") as caught:
        load_spec(tmp_path / "nope.yaml")
    assert "--spec" in caught.value.hint


def test_paths_expand_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = parse_spec({"runtime_dir": "~/rt", "model": {"cache_dir": "~/cache"}})
    assert spec.runtime_dir == tmp_path / "rt"
    assert spec.model.cache_dir == tmp_path / "cache"
