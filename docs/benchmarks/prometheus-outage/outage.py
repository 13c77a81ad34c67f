"""Prometheus down for ten minutes under load: weights hold, health still acts.

A simulated fleet of three replicas (one at half speed, so the controller has
weights worth holding) serves Poisson load through the gateway. Prometheus is
stopped with supervisord; two minutes later a replica hangs for 20 s (the
simulator's hang fault: sockets open, no answers), which the controller must
still take out of rotation and back from its own probes; after ten minutes
Prometheus starts again and the controller must read it again. The
controller's /status is sampled four times a second throughout.

Run from the repository root: .venv/bin/python docs/benchmarks/prometheus-outage/outage.py
[--outage-s 600] [--hang-after-s 120]; it writes result.json and README.md here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from router.bench import fleets, load, stats  # noqa: E402
from router.bench.drill import FaultInjector  # noqa: E402
from router.disk.paths import RuntimePaths  # noqa: E402
from router.runtime.cluster import controller_call  # noqa: E402
from router.runtime.state import ClusterState  # noqa: E402
from router.runtime.supervise import Supervisor  # noqa: E402

HERE = Path(__file__).resolve().parent
HANG_S = 20.0
SIM = {"defaults": {"decode_step_s": 0.02, "decode_s_per_seq": 0.0004, "max_num_seqs": 32},
       "replicas": [{}, {}, {"speed": 0.5}]}


async def _watch(paths: RuntimePaths, state: ClusterState, start: float, stop: asyncio.Event,
                 into: list[dict[str, Any]]) -> None:
    while not stop.is_set():
        view = await asyncio.to_thread(controller_call, paths, state, "GET", "/status")
        if view is not None:
            into.append({"t": time.perf_counter() - start,
                         "prometheus_ok": view["prometheus"]["ok"],
                         "weights": {r["name"]: r["weight"] for r in view["replicas"]},
                         "in_rotation": {r["name"]: r["in_rotation"] for r in view["replicas"]}})
        await asyncio.sleep(0.25)


async def _outage(fleet: fleets.Fleet, outage_s: float, hang_after_s: float, rate: float,
                  moments: dict[str, float], samples: list[dict[str, Any]]) -> load.RunResult:
    paths = RuntimePaths(fleet.spec.runtime_dir)
    state = ClusterState.load(paths)
    assert state is not None
    supervisor = Supervisor(paths)
    start = time.perf_counter()
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch(paths, state, start, stop, samples))
    workload = load.Workload(model="sim-model", output_tokens=(32, 64))
    loader = asyncio.create_task(load.run(fleet.gateway_url, workload,
                                          load.Arrivals("poisson", rate=rate),
                                          60 + outage_s + 120, sample_weights=False))
    await asyncio.sleep(60)
    await asyncio.to_thread(supervisor.stop_process, "prometheus")
    moments["prometheus_stopped"] = time.perf_counter() - start
    await asyncio.sleep(hang_after_s)
    replica = state.replicas[0]
    injector = FaultInjector(paths, replica.name, replica.url, "sim")
    await asyncio.to_thread(injector.apply, "hang")
    moments["replica_hung"] = time.perf_counter() - start
    await asyncio.sleep(HANG_S)
    await asyncio.to_thread(injector.clear, "hang")
    moments["replica_resumed"] = time.perf_counter() - start
    await asyncio.sleep(outage_s - hang_after_s - HANG_S)
    await asyncio.to_thread(supervisor.start_process, "prometheus")
    moments["prometheus_started"] = time.perf_counter() - start
    run = await loader
    stop.set()
    await watcher
    return run


def _first(samples: list[dict[str, Any]], after: float, test: Any) -> float | None:
    return next((s["t"] - after for s in samples if s["t"] >= after and test(s)), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=600.0)
    parser.add_argument("--hang-after-s", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=4.0, help="requests/s")
    args = parser.parse_args()
    moments: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-outage-") as work:
        spec = fleets.sim_fleet_spec(Path(work) / "runtime", 3, SIM)
        with fleets.running_fleet(spec, Path(work) / "spec.yaml", print) as fleet:
            run = asyncio.run(_outage(fleet, args.outage_s, args.hang_after_s, args.rate,
                                      moments, samples))
    stopped, hung, resumed, started = (moments["prometheus_stopped"], moments["replica_hung"],
                                         moments["replica_resumed"], moments["prometheus_started"])
    during = [s for s in samples if stopped + 35 <= s["t"] < started]
    live = [s for s in during if s["t"] < hung]
    held = all(s["weights"] == live[0]["weights"] for s in live) if live else None
    out_after = _first(samples, hung, lambda s: not s["in_rotation"]["replica-0"])
    back_after = _first(samples, resumed, lambda s: s["in_rotation"]["replica-0"])
    reading_again = _first(samples, started, lambda s: s["prometheus_ok"])
    summary = stats.summarize(run.records, run.duration_s, stats.Slo())
    before_first_byte = stats.failed_before_first_byte(run.records)
    result = {
        "command": " ".join(["python", *sys.argv]), "moments_s": moments,
        "weights_before_the_hang": live[0]["weights"] if live else None,
        "weights_held_while_prometheus_was_down": held,
        "hung_replica_out_of_rotation_after_s": out_after,
        "hung_replica_back_after_it_resumed_s": back_after,
        "prometheus_read_again_after_s": reading_again,
        "requests": summary["requests"], "failed_before_first_byte": before_first_byte,
        "failed": summary["failed"], "samples": samples,
    }
    (HERE / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
