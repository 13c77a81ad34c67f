"""Noisy neighbour: Poisson load through the gateway while a GPU hog runs on one
replica's GPU for a while, and what the gateway did about it.

The hog (hog.py) is started and stopped by this script on the same clock as
the load, so the windows are exact. Run it twice, once with every replica
pinned at the base weight (`fleet pin replica-N 50`: static least_conn) and
once without (the adaptive controller), and compare the JSON it writes:

    python3 noisy.py GATEWAY_URL MODEL RATE GPU_UUID REPLICA LABEL \
        [--before 30] [--hold 60] [--after 60]

Figures, per window (before, during and after the hog): requests, failed,
P99 TTFT and E2E, the slowed replica's share of requests; from the weights
sampled once a second on /fleet/status: how long after the hog started its
weight was half of what it was, and how long after the hog stopped it had 80 %
of it again. Output: LABEL.json and one table row on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from router.bench import load, stats

HERE = Path(__file__).resolve().parent


async def _hog_later(uuid: str, before_s: float, hold_s: float, start: float,
                     moments: dict[str, float]) -> None:
    await asyncio.sleep(before_s)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": uuid}
    moments["hog_start"] = time.perf_counter() - start
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "hog.py"), "--seconds", str(hold_s), env=env,
        stdout=asyncio.subprocess.PIPE)
    output, _ = await process.communicate()
    moments["hog_stop"] = time.perf_counter() - start
    moments["hog_report"] = output.decode().strip()  # type: ignore[assignment]


def _window(records: list[stats.RequestRecord], replica: str, low: float,
            high: float) -> dict[str, Any]:
    inside = [r for r in records if low <= r.start < high]
    summary = stats.summarize(inside, max(1e-9, high - low), stats.Slo())
    served = [r for r in inside if r.ok]
    return {"requests": len(inside), "failed": summary["failed"],
            "ttft_p99_s": summary["ttft_s"]["p99"], "e2e_p99_s": summary["e2e_s"]["p99"],
            "share": (sum(1 for r in served if r.replica == replica) / len(served))
            if served else None}


def _weight_times(weights: list[dict[str, Any]], replica: str,
                  moments: dict[str, float]) -> dict[str, float | None]:
    before = [s["weights"].get(replica) for s in weights
              if s["t"] < moments["hog_start"] and s["weights"]]
    base = before[-1] if before else None
    halved = next((s["t"] - moments["hog_start"] for s in weights
                   if base and s["t"] >= moments["hog_start"]
                   and s["weights"].get(replica, base) <= base / 2), None)
    regained = next((s["t"] - moments["hog_stop"] for s in weights
                     if base and s["t"] >= moments["hog_stop"]
                     and s["weights"].get(replica, 0) >= 0.8 * base), None)
    return {"weight_before": base, "halved_after_hog_start_s": halved,
            "regained_80pct_after_hog_stop_s": regained}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("gateway", "model", "rate", "gpu_uuid", "replica", "label"):
        parser.add_argument(name)
    parser.add_argument("--before", type=float, default=30.0)
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--after", type=float, default=60.0)
    args = parser.parse_args()
    workload = load.Workload(model=args.model, prompt_words=(100, 100), output_tokens=(256, 256))
    total = args.before + args.hold + args.after
    moments: dict[str, float] = {}
    start = time.perf_counter()
    hog = asyncio.create_task(_hog_later(args.gpu_uuid, args.before, args.hold, start, moments))
    run = await load.run(args.gateway, workload, load.Arrivals("poisson", float(args.rate)),
                         total)
    await hog
    records = run.records
    windows = {"before": _window(records, args.replica, 0, moments["hog_start"]),
               "during": _window(records, args.replica, moments["hog_start"],
                                 moments["hog_stop"]),
               "after": _window(records, args.replica, moments["hog_stop"], total)}
    result = {"label": args.label, "rate": float(args.rate), "moments": moments,
              "windows": windows, "weights": run.weights,
              **_weight_times(run.weights, args.replica, moments)}
    Path(f"{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    during = windows["during"]

    def s(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    print(f"| {args.label} | {during['requests']} | {during['failed']} | "
          f"{s(during['ttft_p99_s'])} | {s(during['e2e_p99_s'])} | "
          f"{'–' if during['share'] is None else format(during['share'], '.0%')} | "
          f"{s(result['halved_after_hog_start_s'])} | "
          f"{s(result['regained_80pct_after_hog_stop_s'])} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
