"""Pace traces: recorded as JSON lines, replayed through the controller's own chain."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest

from router.bench.pace_trace import load_trace, record, replay, round_line
from router.config.spec import PaceSpec
from router.controller.pace import PaceReading
from router.errors import SpecError


def write_trace(path: Path, seconds: int, slow_from: int | None = None,
                slow_until: int | None = None) -> Path:
    rng = random.Random(3)
    with path.open("w") as out:
        for t in range(seconds):
            readings: dict[str, PaceReading | None] = {}
            for name in ("replica-0", "replica-1", "replica-2"):
                batch = rng.randint(4, 30)
                slow = (name == "replica-2" and slow_from is not None and
                        slow_from <= t < (slow_until or seconds))
                readings[name] = PaceReading((0.02 + 0.0004 * batch) * (3 if slow else 1)
                                             * rng.uniform(0.93, 1.07), batch, 0.0)
            readings["replica-1"] = None if t == 7 else readings["replica-1"]  # a failed probe
            out.write(round_line(float(t), readings))
    return path


def test_an_equal_trace_replays_to_no_weight_change(tmp_path: Path) -> None:
    result = replay(load_trace(write_trace(tmp_path / "equal.jsonl", 900)))
    assert result.weight_changes == 0 and result.moves == []


def test_a_slow_trace_replays_to_the_move_and_back(tmp_path: Path) -> None:
    result = replay(load_trace(write_trace(tmp_path / "slow.jsonl", 400, 200, 300)))
    (went, gone, ratio), (came, back, even) = result.moves
    assert gone == back == "replica-2" and ratio == pytest.approx(3.0, rel=0.15) and even == 1
    assert 200 <= went <= 205 and 300 <= came <= 320
    # A third of the weight: with no Prometheus in a replay the fleet's
    # pressure is unknown, so the outlier rule (weight 1) stays out of it.
    assert [w["replica-2"] for _, w in result.reloads] == [50, 16, 50]


def test_a_bad_trace_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(round_line(0.0, {"a": PaceReading(0.02, 4, 0)}) + '{"t": 1}\n')
    with pytest.raises(SpecError, match=r"t.jsonl:2 is not a trace round") as caught:
        load_trace(path)
    assert caught.value.hint
    with pytest.raises(SpecError, match="cannot read the trace"):
        load_trace(tmp_path / "missing.jsonl")


def test_record_probes_every_replica_each_round(tmp_path: Path) -> None:
    def replica(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, text="# TYPE vllm:num_requests_running gauge\n"
                                            "vllm:num_requests_running 3\n")
        if request.url.host == "down":
            return httpx.Response(503)
        chunks = "".join(f"data: {json.dumps({'choices': [{'text': 'x'}]})}\n\n"
                         for _ in range(4))
        return httpx.Response(200, content=(chunks + "data: [DONE]\n\n").encode())

    out = tmp_path / "trace.jsonl"
    rounds = asyncio.run(record({"a": "http://up", "b": "http://down"}, "m",
                                PaceSpec(interval_s=0.05), 0.2, out,
                                transport=httpx.MockTransport(replica)))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert rounds == len(lines) >= 2
    assert lines[0]["readings"]["b"] is None
    assert lines[0]["readings"]["a"]["batch"] == 3
    assert load_trace(out)[0][1].keys() == {"a"}


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("trace", [
    # One H200, two equal vLLM replicas, 128 steady streams, probes once a
    # second (docs/benchmarks/stability-gpu), the waiting gauge blipping.
    "pace-gpu-h200-equal-128.jsonl",
    # One H100, the same pair, 128 steady streams, probes twice a second.
    "pace-gpu-h100-equal-128.jsonl",
    # A later H100 lease, after the noise was read around each replica's own
    # median: 150 s of the same 128 streams (stability-gpu/runs/h100-b).
    "pace-gpu-h100-equal-128-b.jsonl",
    # The same H100 lease: the chat scenario's conversations, least_conn then
    # session affinity, the load under which weights once swung 78 -> 1.
    "pace-gpu-h100-chat-96.jsonl",
    # Two CPU vLLM replicas (the e2e engine) at 4 streams, every round slowed
    # by a saturated two-core host (docs/benchmarks/stability-cpu).
    "pace-cpu-vllm-equal-4.jsonl",
])
def test_a_recorded_equal_pair_moves_no_weight(trace: str) -> None:
    result = replay(load_trace(FIXTURES / trace))
    assert result.weight_changes == 0 and result.moves == []


def test_a_gpu_replica_with_a_quarter_of_the_slots_is_found_by_its_queue() -> None:
    """The same card, replica-1 at max_num_seqs 64 against 256, weights pinned
    equal: with no slots declared, its queue at a full batch is its limit."""
    result = replay(load_trace(FIXTURES / "pace-gpu-h200-quarter-slots-256.jsonl"))
    final = result.reloads[-1][1]
    assert final["replica-0"] == 50 and final["replica-1"] < 30
    assert result.moves == []
