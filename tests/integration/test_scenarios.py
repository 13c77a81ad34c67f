"""`fleet bench scenario NAME --tiny`: every scenario end to end in seconds,
with real `fleet up` fleets. Proves the machinery and the report; the tiny
runs measure nothing worth a timing assertion, and none is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.bench import fleets
from tests.support.cli import fleet

pytestmark = pytest.mark.integration

PEERS = {"vllm-router": "vllm-router", "LiteLLM proxy": "litellm"}


def _scenario(name: str, out: Path) -> dict:
    done = fleet("bench", "scenario", name, "--tiny", "--out", str(out), timeout=280)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["scenario"] == name
    readme = (out / "README.md").read_text()
    assert f"fleet bench scenario {name} --tiny --out {out}" in readme
    assert (out / "latency-cdf.png").stat().st_size > 5_000
    return result


def _check_row(row: dict) -> None:
    """llm-fleet's rows ran and lost nothing; a peer's row ran, or says why it
    was skipped. A peer's failures are its own figure, reported with how they
    failed: a third-party proxy on a busy 2-core machine is not ours to assert."""
    peer = next((cmd for prefix, cmd in PEERS.items() if row["label"].startswith(prefix)), None)
    if peer is not None and fleets.peer_executable(peer) is None:
        assert row["summary"] is None and "make peers" in row["skipped"]
        return
    assert row["skipped"] is None, row["skipped"]
    summary = row["summary"]
    assert summary["succeeded"] > 0, (row["label"], summary["failure_examples"])
    assert bool(summary["failure_examples"]) == bool(summary["failed"]), row["label"]
    if peer is None:
        assert summary["failed"] == 0, (row["label"], summary["failure_examples"])


def test_overhead(tmp_path: Path) -> None:
    result = _scenario("overhead", tmp_path)
    assert [r["label"] for r in result["rows"]] == [
        "direct", "llm-fleet (nginx)", "direct, second fleet", "llm-fleet, overload controls on",
        "vllm-router", "LiteLLM proxy"]
    for row in result["rows"]:
        _check_row(row)
        if row["summary"] is not None:
            levels = row["extra"]["capacity"]["levels"]
            assert levels and levels[0]["rate"] == 20
    gateway = result["rows"][1]
    assert set(gateway["extra"]["added_e2e_s"]) == {"p50", "p99"}
    assert [t["target"] for t in result["targets"]] == [
        "gateway adds under 1 ms at p50", "gateway adds under 5 ms at p99",
        "gateway with the overload controls on adds under 1 ms at p50",
        "gateway with the overload controls on adds under 5 ms at p99"]


@pytest.mark.parametrize("name", ["heterogeneous", "homogeneous"])
def test_policy_scenarios(tmp_path: Path, name: str) -> None:
    result = _scenario(name, tmp_path)
    labels = [r["label"] for r in result["rows"]]
    assert labels == ["round-robin (nginx)", "least_conn, static weights (nginx)",
                      "llm-fleet adaptive", "vllm-router power_of_two", "vllm-router cache_aware"]
    for row in result["rows"]:
        _check_row(row)
        if row["summary"] is not None:
            assert row["measured_from_s"] > 0
            # Only llm-fleet's gateway says which replica answered (X-Fleet-Replica).
            served_by = set(row["summary"]["by_replica"])
            assert served_by <= ({"?"} if row["label"].startswith("vllm-router")
                                 else {f"replica-{i}" for i in range(4)}), row["label"]
    adaptive = result["rows"][2]
    assert adaptive["summary"]["by_replica"], "the adaptive fleet served nothing"
    assert len(result["targets"]) == (3 if name == "heterogeneous" else 5)
    assert isinstance(adaptive["extra"]["weight_changes"], int)
    assert (tmp_path / "timeline.png").exists()
    if name == "heterogeneous":
        assert "replica-3 runs at speed 0.33" in (tmp_path / "README.md").read_text()


def test_stability(tmp_path: Path) -> None:
    result = _scenario("stability", tmp_path)
    labels = [r["label"] for r in result["rows"]]
    cells = ["30% load, closed, uniform prompts", "120% load, poisson, mixed prompts"]
    assert labels == [f"{c}, affinity {a}" for a in ("off", "session") for c in cells] + [
        "replica-3 slowed to a third",
        "replica-3 at 16 slots: least_conn, static weights (nginx)",
        "replica-3 at 16 slots: llm-fleet adaptive"]
    for row in result["rows"]:
        _check_row(row)
    assert all(isinstance(row["extra"]["weight_changes"], int)
               for row in result["rows"] if "static" not in row["label"])
    assert set(result["rows"][4]["extra"]) >= {"halved_after_s", "back_after_s"}
    assert len(result["targets"]) == 8
    assert (tmp_path / "timeline.png").exists()


def test_reloads(tmp_path: Path) -> None:
    result = _scenario("reloads", tmp_path)
    quiet, reloading = result["rows"]
    assert quiet["label"] == "no reloads" and reloading["label"].startswith("a reload every")
    for row in result["rows"]:
        _check_row(row)
        assert row["extra"]["imbalance"]["samples"] + \
            row["extra"]["imbalance"]["samples_with_an_idle_replica"] > 0
    assert quiet["extra"]["reloads"] == 0 and reloading["extra"]["reloads"] > 0
    assert (tmp_path / "imbalance.png").stat().st_size > 5_000
    assert "### Running requests per replica, max/min" in (tmp_path / "README.md").read_text()


def test_scaling(tmp_path: Path) -> None:
    result = _scenario("scaling", tmp_path)
    assert [r["label"] for r in result["rows"]] == [
        "1 replica, direct", "1 replica(s), gateway", "2 replica(s), gateway"]
    for row in result["rows"]:
        _check_row(row)
        assert row["extra"]["ideal"] == pytest.approx(
            row["extra"]["replicas"] * result["rows"][0]["summary"]["request_throughput"])
    two = result["rows"][2]["summary"]["by_replica"]
    assert set(two) == {"replica-0", "replica-1"}


def test_unknown_scenario_names_the_known_ones(tmp_path: Path) -> None:
    done = fleet("bench", "scenario", "fastest", "--out", str(tmp_path / "r"))
    assert done.returncode != 0
    assert "no scenario named 'fastest'" in done.stderr
    hint = done.stderr.split("hint: ", 1)[1]
    for name in ("overhead", "heterogeneous", "scaling", "chat-hot", "stability"):
        assert name in hint
    assert not (tmp_path / "r").exists()


def test_soak_tiny_runs_every_part_and_writes_its_series(tmp_path: Path) -> None:
    done = fleet("bench", "soak", "--tiny", "--out", str(tmp_path), timeout=280)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    soak = result["soak"]
    assert {e["kind"] for e in soak["events"]} == {"kill", "weight", "key"}
    assert all(e["ok"] for e in soak["events"]), soak["events"]
    assert len(soak["samples"]) >= 5
    sample = soak["samples"][-1]
    assert {"nginx", "controller", "prometheus", "log-exporter", "supervisord"} <= set(
        sample["rss_mib"])
    assert sample["fds"] > 0 and sample["workers"] > 0 and sample["disk_mib"] > 0
    assert sum(run["requests"] for run in soak["runs"]) > 0
    kills = result["gateway_kills"]["kills"]
    assert len(kills) == 1 and kills[0]["probes"] > 0
    assert result["storm"]["reloads"] > 0 and result["storm"]["run"]["requests"] > 0
    assert len(result["targets"]) == 6
    readme = (tmp_path / "README.md").read_text()
    assert f"fleet bench soak --tiny --out {tmp_path}" in readme
    for plot in ("memory.png", "fds-workers.png", "disk.png", "storm.png"):
        assert (tmp_path / plot).stat().st_size > 5_000, plot


def test_soak_refuses_a_bad_length(tmp_path: Path) -> None:
    done = fleet("bench", "soak", "--minutes", "0", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "--minutes must be more than 0" in done.stderr


def test_chat_tiny_runs_every_contender_and_reports_cache_hits(tmp_path: Path) -> None:
    result = _scenario("chat", tmp_path)
    labels = [row["label"] for row in result["rows"]]
    assert labels[:4] == ["least_conn, static weights (nginx)", "llm-fleet adaptive",
                          "llm-fleet affinity (auto, load bound)",
                          "llm-fleet affinity (auto, no load bound)"]
    for row in result["rows"]:
        _check_row(row)
        if row["summary"] is not None:
            rates = row["extra"]["prefix_cache_hit_rate"]
            assert len(rates) == 4 and any(r for r in rates), row["label"]
    assert "### Prefix cache and queues" in (tmp_path / "README.md").read_text()


def test_chat_hot_tiny_keys_by_tenant_and_judges_the_bound(tmp_path: Path) -> None:
    done = fleet("bench", "scenario", "chat-hot", "--tiny", "--out", str(tmp_path),
                 "--contenders", "affinity,affinity-unbounded", timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert [row["label"] for row in result["rows"]] == [
        "llm-fleet affinity (auto, load bound)", "llm-fleet affinity (auto, no load bound)"]
    for row in result["rows"]:
        _check_row(row)
    assert [t["target"] for t in result["targets"]] == [
        "load bound: TTFT p99 below affinity without it",
        "load bound: the worst replica queue below affinity without it",
        "load bound: no request fails"]
    # Three tenants keyed by tenant: at most three replicas see a conversation.
    assert sum(1 for r in result["rows"][1]["extra"]["prefix_cache_hit_rate"] if r) <= 3


def test_overload_tiny_runs_every_contender_and_reports_the_interactive_tenant(
        tmp_path: Path) -> None:
    result = _scenario("overload", tmp_path)
    rows = {r["label"]: r for r in result["rows"]}
    capped = "classes, batch capped at 12 of 16 slots"
    saturated = "classes, batch shed past a 5 s queue wait"
    for contender in ("classes off (arrival order)", "priority classes", capped, saturated):
        for label in (f"{contender}, no flood: interactive",
                      f"{contender}, batch at 2x capacity: interactive"):
            _check_row(rows[label])
    for contender in ("classes off (arrival order)", "priority classes"):
        _check_row(rows[f"{contender}, batch at 2x capacity: batch"])
    # The capped class is shed with 429s, and nothing else fails.
    shed = rows[f"{capped}, batch at 2x capacity: batch"]["summary"]
    assert shed["succeeded"] > 0
    assert all(kind.startswith("http_status 429") for kind in shed["failure_examples"]), \
        shed["failure_examples"]
    # Shedding for the queue wait answers 503 when it acts (a tiny flood may
    # end before the controller has read a queue), and nothing else fails.
    waited = rows[f"{saturated}, batch at 2x capacity: batch"]["summary"]
    assert waited["succeeded"] > 0
    assert all(kind.startswith("http_status 503") for kind in waited["failure_examples"]), \
        waited["failure_examples"]
    assert len(rows) == 12
    readme = (tmp_path / "README.md").read_text()
    assert "### The interactive tenant" in readme
    assert (tmp_path / "interactive-ttft.png").stat().st_size > 5_000


def test_fairness_tiny_runs_both_contenders_and_reports_each_keys_share(
        tmp_path: Path) -> None:
    result = _scenario("fairness", tmp_path)
    rows = {r["label"]: r for r in result["rows"]}
    assert len(rows) == 4
    for contender in ("no shares (arrival order)", "fair shares per key"):
        for key in ("light key (10 streams)", "heavy key (40 streams)"):
            summary = rows[f"{contender}: {key}"]["summary"]
            assert summary["succeeded"] > 0
            # A key past its share is refused with 429; nothing else fails.
            assert all(kind.startswith("http_status 429")
                       for kind in summary["failure_examples"]), summary["failure_examples"]
    assert len(result["targets"]) == 2
    assert "### Tokens served per key" in (tmp_path / "README.md").read_text()


def test_budget_tiny_counts_every_token_and_refuses_past_the_budget(tmp_path: Path) -> None:
    result = _scenario("budget", tmp_path)
    rows = {r["label"]: r for r in result["rows"]}
    assert len(rows) == 2
    for row in rows.values():
        extra = row["extra"]
        # The key reached its budget and was refused; nothing else failed.
        assert extra["refused"] > 0 and extra["other_failures"] == 0, extra
        assert extra["gateway_tokens"] == extra["replica_tokens"] > 0, extra
    asked, unasked = (r["extra"] for r in result["rows"])
    assert asked["usage_chunks_seen"] == asked["answered"]
    assert unasked["usage_chunks_seen"] == 0
    assert "### The key against its budget" in (tmp_path / "README.md").read_text()
