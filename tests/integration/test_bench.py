"""`fleet bench run` in a tiny mode (seconds): the machinery and the report
files, against real nginx in front of simulated replicas. No timing is
asserted; only counts and the shape of what is written."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.bench import load
from router.bench.stats import CONNECT, HTTP_STATUS, Slo, summarize
from tests.support.cli import fleet
from tests.support.fleet import running_fleet
from tests.support.harness import free_port
from tests.support.sim import sim_replica

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with running_fleet(tmp_path_factory.mktemp("bench"), replicas=2,
                       gateway={"worker_processes": 1}) as running:
        yield running.spec


def test_open_loop_sweep_writes_the_report(sim_fleet: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = fleet("bench", "run", "--spec", str(sim_fleet), "--rate", "10,20", "--duration", "2",
                 "--output-tokens", "4-8", "--slo", "ttft=2s,itl=500ms", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == {"result.json", "README.md", "latency-cdf.png",
                                              "timeline.png"}
    result = json.loads((out / "result.json").read_text())
    assert [r["arrivals"] for r in result["results"]] == [
        "Poisson arrivals at 10 requests/s", "Poisson arrivals at 20 requests/s"]
    for entry in result["results"]:
        summary = entry["summary"]
        assert summary["requests"] > 0 and summary["failed"] == 0
        assert set(summary["by_replica"]) == {"replica-0", "replica-1"}
        assert summary["ttft_s"]["p50"] is not None and summary["itl_s"]["p50"] is not None
        assert summary["goodput"] <= summary["request_throughput"]
    readme = (out / "README.md").read_text()
    assert "fleet bench run --spec" in readme and "--rate 10,20" in readme
    assert "![timeline.png](timeline.png)" in readme
    assert (out / "timeline.png").stat().st_size > 5_000


def test_closed_loop_non_streamed(sim_fleet: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello there"}\n{"prompt": "good morning"}\n')
    done = fleet("bench", "run", "--spec", str(sim_fleet), "--concurrency", "4", "--no-stream",
                 "--completions", "--prompts", str(prompts), "--duration", "5",
                 "--output-tokens", "2", "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    entry = json.loads((tmp_path / "r" / "result.json").read_text())["results"][0]
    assert entry["arrivals"] == "closed loop, 4 concurrent clients"
    assert entry["workload"]["path"] == "/v1/completions"
    # How many fit in the five seconds depends on the host; that they answered,
    # unstreamed (no inter-token gaps), does not.
    assert entry["summary"]["succeeded"] >= 1 and entry["summary"]["itl_s"]["p50"] is None


def test_failures_are_counted_by_phase() -> None:
    with sim_replica() as sim:
        sim.faults(error_rate=1.0)
        result = asyncio.run(load.run(sim.url, load.Workload(output_tokens=(2, 2)),
                                      load.Arrivals("closed", concurrency=2), 0.5,
                                      sample_weights=False))
    summary = summarize(result.records, result.duration_s, Slo())
    assert summary["succeeded"] == 0 and summary["errors_by_phase"][HTTP_STATUS] > 0
    assert summary["failed_statuses"] == {"500": summary["failed"]}

    closed = asyncio.run(load.run(f"http://127.0.0.1:{free_port()}", load.Workload(),
                                  load.Arrivals("poisson", rate=20), 0.3,
                                  sample_weights=False))
    assert closed.records and all(r.error_phase == CONNECT for r in closed.records)


def test_bad_bench_arguments_say_what_to_do(sim_fleet: Path) -> None:
    for args, words in ((["--rate", "fast"], "not a list of numbers"),
                        (["--rate", "0"], "above 0"),
                        (["--slo", "ttft=soon"], "NAME=DURATION"),
                        (["--output-tokens", "9-3"], "LOW <= HIGH")):
        done = fleet("bench", "run", "--spec", str(sim_fleet), "--duration", "1", *args)
        assert done.returncode != 0 and words in done.stderr and "hint:" in done.stderr, args
