"""The benchmark's arithmetic on known inputs: percentiles, SLOs, goodput, errors."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from router.bench.load import Arrivals, RunResult, Workload, load_prompts, parse_range
from router.bench.report import markdown, result_entry
from router.bench.stats import (
    BEFORE_FIRST_BYTE,
    CONNECT,
    HTTP_STATUS,
    MID_STREAM,
    RequestRecord,
    Slo,
    parse_slo,
    percentile,
    summarize,
)
from router.errors import SpecError


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 10.0
    assert percentile(list(reversed(values)), 50) == pytest.approx(5.5)
    assert percentile([42.0], 99) == 42.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_slo_parsing() -> None:
    assert parse_slo("ttft=2s,itl=50ms") == Slo(ttft_s=2.0, itl_s=0.05)
    assert parse_slo("e2e=1.5s") == Slo(e2e_s=1.5)
    assert parse_slo("") == Slo()
    for bad, words in (("ttft=2", "NAME=DURATION"), ("tpot=5ms", "NAME=DURATION"),
                       ("ttft=2s,ttft=1s", "twice")):
        with pytest.raises(SpecError, match=words):
            parse_slo(bad)


def _ok(start: float, ttft: float, e2e: float, tokens: int, replica: str = "replica-0",
        itl: tuple[float, ...] = ()) -> RequestRecord:
    return RequestRecord(start, 200, replica, ttft=ttft, e2e=e2e, itl=itl, output_tokens=tokens)


def test_tpot_and_slo_checks_follow_vllm() -> None:
    record = _ok(0, ttft=0.5, e2e=1.5, tokens=11)
    # (1.5 - 0.5) / (11 - 1)
    assert record.tpot == pytest.approx(0.1)
    assert Slo(ttft_s=0.5, itl_s=0.1).met_by(record)
    assert not Slo(itl_s=0.09).met_by(record)
    assert not Slo(ttft_s=0.4).met_by(record)
    assert _ok(0, 0.1, 0.1, 1).tpot is None
    failed = RequestRecord(0, 503, error_phase=HTTP_STATUS)
    assert not Slo().met_by(failed)


def test_summary_counts_throughput_goodput_and_errors() -> None:
    records = [
        _ok(0.0, 0.1, 1.0, 10, "replica-0", itl=(0.1, 0.1)),
        _ok(0.5, 0.2, 2.0, 10, "replica-1", itl=(0.3,)),
        _ok(1.0, 3.0, 4.0, 20, "replica-1"),         # misses the TTFT SLO
        RequestRecord(1.5, None, error_phase=CONNECT, error="refused"),
        RequestRecord(2.0, None, error_phase=BEFORE_FIRST_BYTE, error="reset"),
        RequestRecord(2.5, 503, "replica-0", error_phase=HTTP_STATUS),
        RequestRecord(3.0, 200, "replica-0", error_phase=MID_STREAM, error="broke"),
        RequestRecord(3.5, 200, "replica-1", error_phase=MID_STREAM, error="  broke\n"),
        RequestRecord(3.8, 500, "replica-1"),  # a status alone is an HTTP failure too
    ]
    summary = summarize(records, duration_s=4.0, slo=Slo(ttft_s=1.0))
    assert summary["requests"] == 9 and summary["succeeded"] == 3 and summary["failed"] == 6
    assert summary["errors_by_phase"] == {CONNECT: 1, BEFORE_FIRST_BYTE: 1, HTTP_STATUS: 2,
                                          MID_STREAM: 2}
    assert summary["failed_statuses"] == {"200": 2, "500": 1, "503": 1}
    assert summary["failure_examples"] == {
        "mid_stream: broke": 2, "connect: refused": 1, "before_first_byte: reset": 1,
        "http_status 503": 1, "http_status 500": 1}
    assert summary["request_throughput"] == pytest.approx(3 / 4)
    assert summary["output_token_throughput"] == pytest.approx(40 / 4)
    assert summary["goodput"] == pytest.approx(2 / 4)
    assert summary["ttft_s"]["p50"] == pytest.approx(0.2)
    assert summary["itl_s"]["p50"] == pytest.approx(0.1)  # pooled gaps 0.1, 0.1, 0.3
    assert summary["e2e_s"]["mean"] == pytest.approx(7 / 3)
    assert summary["by_replica"] == {"replica-0": 1, "replica-1": 2}
    empty = summarize([], 1.0, Slo())
    assert empty["ttft_s"]["p99"] is None and empty["request_throughput"] == 0


def test_ranges_and_prompt_files(tmp_path: Path) -> None:
    assert parse_range("128", "--x") == (128, 128)
    assert parse_range("64-256", "--x") == (64, 256)
    for bad in ("0", "9-3", "many"):
        with pytest.raises(SpecError):
            parse_range(bad, "--x")
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    assert load_prompts(good) == ("a", "b")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(SpecError, match="bad.jsonl:2"):
        load_prompts(bad)


def test_workload_bodies_ask_for_what_was_set() -> None:
    workload = Workload(model="m", chat=False, stream=True, prompt_words=(3, 3),
                        output_tokens=(5, 9))
    body = json.loads(workload.body(random.Random(1)))
    assert body["model"] == "m" and len(body["prompt"].split()) == 3
    assert 5 <= body["max_tokens"] <= 9 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert workload.path == "/v1/completions"


def test_report_says_when_the_client_was_the_bottleneck() -> None:
    arrivals = Arrivals("poisson", rate=5000)
    run = RunResult(records=[_ok(0, 0.1, 0.2, 1)], duration_s=1.0, send_lag_p99_s=0.2,
                    dropped=0, client_cpu_share=0.97)
    entry = result_entry(arrivals, Workload(), run, summarize(run.records, 1.0, Slo()))
    text = markdown("x", "fleet bench run --rate 5000", [entry],
                    {"cpus": 2, "cpu_model": "cpu", "memory_gib": 1, "python": "3.11"}, [])
    assert "client may have been the bottleneck" in text
    assert "97% of its core" in text and "200 ms after their scheduled time" in text
    calm = RunResult(records=run.records, duration_s=1.0, send_lag_p99_s=0.001, dropped=0,
                     client_cpu_share=0.2)
    assert calm.client_bound(arrivals) is None
