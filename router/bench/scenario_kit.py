"""What every scenario of `fleet bench scenario` is built from.

Each contender gets a fresh simulated fleet from the same spec, brought up
with `fleet up` (nginx, Prometheus, controller), and the same seeded load;
peers (vllm-router, LiteLLM's proxy) front the same kind of replicas. What
differs between two rows of a table is only the thing the row names.

The simulated replicas' step times follow the shape of a real vLLM's
(docs/simulator.md): a bigger batch makes every token slower, a replica at
speed 0.33 is three times slower, and at ``max_num_seqs`` requests queue.

A scenario is one module of router/bench/scenarios/ (see its __init__):
this module holds the rows, results and helpers they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from router.affinity import AffinityMode
from router.bench import fleets, load, stats
from router.bench.fleets import Endpoint, Fleet, Progress
from router.disk.keys import KeyStore, save_store
from router.disk.paths import RuntimePaths

# The replicas of the policy and scaling scenarios: a GPU-like step time
# (20 ms plus 0.4 ms per sequence in the batch) and 32 sequences at most,
# so a replica has a capacity and queues beyond it.
POLICY_SIM: dict[str, Any] = {"decode_step_s": 0.02, "decode_s_per_seq": 0.0004,
                              "max_num_seqs": 32}
LOAD_SHARE = 0.85
# How often a scenario samples each replica's /metrics while load runs.
REPLICA_SAMPLE_S = 0.5


@dataclass(frozen=True)
class Size:
    """The timings every scenario shares; `--tiny` proves the machinery in seconds.
    A scenario's own knobs are its module's (a full and a tiny value each)."""

    warmup_s: float = 45.0
    measure_s: float = 90.0
    calibrate_s: float = 15.0
    output_tokens: load.Range = (64, 128)


FULL = Size()
TINY = Size(warmup_s=1.0, measure_s=2.0, calibrate_s=1.5, output_tokens=(8, 16))

T = TypeVar("T")


@dataclass
class Row:
    """One contender's result, or why it did not run."""

    label: str
    summary: dict[str, Any] | None = None
    run: load.RunResult | None = None
    skipped: str | None = None
    # The summary covers requests started from here on (after a warm-up).
    measured_from_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScenarioResult:
    name: str
    title: str
    setup: list[str]
    rows: list[Row]
    # (target as written in the issue, the figure, met or not; None: not measured)
    targets: list[tuple[str, str, bool | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Which row's timeline to draw (the one whose weights move).
    timeline_row: int = -1


@dataclass(frozen=True)
class Context:
    work_dir: Path
    size: Size
    progress: Progress
    seed: int = 0
    # Scenarios with contenders: only these (Policy.key); empty runs all.
    contenders: tuple[str, ...] = ()
    tiny: bool = False

    def pick(self, full: T, tiny: T) -> T:
        """A scenario's own setting: its full value, or its `--tiny` one."""
        return tiny if self.tiny else full

    def fleet_spec(self, name: str, replicas: int, sim: dict[str, Any], **kwargs: Any
                   ) -> tuple[dict[str, Any], Path]:
        folder = self.work_dir / name
        return (fleets.sim_fleet_spec(folder / "runtime", replicas, sim, **kwargs),
                folder / "spec.yaml")

    @contextlib.contextmanager
    def fleet(self, name: str, replicas: int, sim: dict[str, Any], **kwargs: Any
              ) -> Iterator[Fleet]:
        data, path = self.fleet_spec(name, replicas, sim, **kwargs)
        self.progress(f"{name}: fleet up ({replicas} simulated replicas)")
        with fleets.running_fleet(data, path, lambda _msg: None) as fleet:
            yield fleet


def tenant_keys(runtime_dir: Path, tenants: Mapping[str, str | None]) -> dict[str, str]:
    """A key per tenant, in its class (None: the default class), written where
    `fleet up` reads keys."""
    store, secrets = KeyStore(), {}
    for tenant, priority_class in tenants.items():
        store, key = store.add(tenant, priority_class=priority_class)
        assert key.secret is not None
        secrets[tenant] = key.secret
    paths = RuntimePaths(runtime_dir)
    paths.create()
    save_store(paths.api_keys, store)
    return secrets


def whole_ms(value: float | None) -> str:
    """Seconds as whole milliseconds for a report, e.g. "1,234 ms"; "–" for none."""
    return "–" if value is None else f"{value * 1000:,.0f} ms"


def run_load(endpoint: Endpoint, workload: load.Workload, arrivals: load.Arrivals,
             duration_s: float, sample_weights: bool = False) -> load.RunResult:
    return asyncio.run(load.run(endpoint.url, workload, arrivals, duration_s, endpoint.key,
                                sample_weights=sample_weights))


def window_summary(run: load.RunResult, start_s: float, length_s: float) -> dict[str, Any]:
    """Summary of the requests that started inside [start_s, start_s + length_s)."""
    inside = [r for r in run.records if start_s <= r.start < start_s + length_s]
    return stats.summarize(inside, length_s, stats.Slo(ttft_s=2.0, itl_s=0.1))


def peer_rows(labels: list[str]) -> dict[str, str | None]:
    """Why each peer cannot run (None: it can)."""
    wanted = {"vllm-router": "vllm-router", "LiteLLM": "litellm"}
    missing = {}
    for label in labels:
        for prefix, command in wanted.items():
            if label.startswith(prefix):
                missing[label] = (None if fleets.peer_executable(command)
                                  else f"{command} is not installed (run `make peers`)")
    return missing


@dataclass(frozen=True)
class Policy:
    key: str  # what --contenders names it by
    label: str
    balance: str = "least_conn"
    controller: bool = False
    router_policy: str | None = None  # a vllm-router policy: the row is vllm-router
    affinity: AffinityMode = AffinityMode.OFF  # gateway.affinity
    load_bound: bool = True  # False: shed_above at its maximum, so nothing ever sheds


def sim_text(sim: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sim.items())


def calibrate(fleet: Fleet, workload: load.Workload, seconds: float) -> tuple[float, list[float]]:
    """The fleet's capacity in requests/s: every replica driven directly, all at
    once, at a closed loop of max_num_seqs clients each (a full batch, no queue)."""
    seqs = int(POLICY_SIM["max_num_seqs"])

    async def all_at_once() -> list[load.RunResult]:
        return list(await asyncio.gather(*(
            load.run(url, workload, load.Arrivals("closed", concurrency=seqs),
                     seconds, sample_weights=False)
            for url in fleet.replica_urls)))

    runs = asyncio.run(all_at_once())
    per_replica = [sum(1 for r in run.records if r.ok) / run.duration_s for run in runs]
    return sum(per_replica), per_replica


def weight_changes(samples: list[dict[str, Any]], after_s: float) -> int:
    """How often the sampled weights changed after ``after_s``: each change is
    a reload the controller made (samples are a second apart, reloads ten)."""
    seen = [s["weights"] for s in samples if s["t"] >= after_s and s["weights"]]
    return sum(1 for a, b in zip(seen, seen[1:], strict=False) if a != b)


def row_by_label(rows: list[Row], prefix: str) -> Row | None:
    return next((r for r in rows if r.label.startswith(prefix) and r.summary), None)


def summary_by_label(rows: list[Row], prefix: str) -> dict[str, Any] | None:
    row = row_by_label(rows, prefix)
    return None if row is None else row.summary


def metric_sum(metrics_text: str, name: str) -> float:
    """The sum of one metric's samples in a /metrics text (every label set)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith((name + "{", name + " ")))


async def sample_replicas(urls: list[str], metric: str, label: str,
                          into: list[dict[str, Any]], run_start: float,
                          stop: asyncio.Event) -> None:
    """Every REPLICA_SAMPLE_S, each replica's ``metric``: {"t": s, label: [per replica]}."""
    import httpx

    async with httpx.AsyncClient(timeout=2.0) as client:
        while not stop.is_set():
            try:
                texts = await asyncio.gather(*(client.get(u + "/metrics") for u in urls))
                into.append({"t": time.perf_counter() - run_start,
                             label: [metric_sum(r.text, metric) for r in texts]})
            except httpx.HTTPError:
                pass
            await asyncio.sleep(REPLICA_SAMPLE_S)


def ratio_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def ms_text(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:+.2f} ms"


def s_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} s"


def no_tables(rows: list[Row]) -> list[str]:
    return []


def no_plots(out: Path, rows: list[Row]) -> list[str]:
    return []


@dataclass(frozen=True)
class Scenario:
    """One scenario of `fleet bench scenario`, as its module declares it."""

    name: str
    run: Callable[[Context], ScenarioResult]
    # What --contenders may name (Policy.key); empty: the scenario takes none.
    contenders: tuple[str, ...] = ()
    # What its report adds below the rows table: Markdown lines, plot files.
    tables: Callable[[list[Row]], list[str]] = no_tables
    plots: Callable[[Path, list[Row]], list[str]] = no_plots
