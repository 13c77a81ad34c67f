"""`fleet bench scenario NAME`: llm-fleet and its baselines, side by side in one run.

Each contender gets a fresh simulated fleet from the same spec, brought up
with `fleet up` (nginx, Prometheus, controller), and the same seeded load;
peers (vllm-router, LiteLLM's proxy) front the same kind of replicas. What
differs between two rows of a table is only the thing the row names.

The simulated replicas' step times follow the shape of a real vLLM's
(docs/simulator.md): a bigger batch makes every token slower, a replica at
speed 0.33 is three times slower, and at ``max_num_seqs`` requests queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from router.affinity import AffinityMode
from router.bench import fleets, load, stats
from router.bench.chat import ChatWorkload, run_conversations
from router.bench.fleets import Endpoint, Fleet, Progress
from router.disk.paths import RuntimePaths
from router.runtime.gateway import signal_reload

# The replicas of the policy and scaling scenarios: a GPU-like step time
# (20 ms plus 0.4 ms per sequence in the batch) and 32 sequences at most,
# so a replica has a capacity and queues beyond it.
POLICY_SIM: dict[str, Any] = {"decode_step_s": 0.02, "decode_s_per_seq": 0.0004,
                              "max_num_seqs": 32}
# The overhead scenario's replica answers almost at once, so what a gateway
# adds is not lost in the replica's own jitter.
OVERHEAD_SIM: dict[str, Any] = {"decode_step_s": 0.002, "decode_s_per_seq": 0.00002,
                                "max_num_seqs": 512}
OVERHEAD_ROUNDS = 10
OVERHEAD_WARMUP_S = 1.0
SLOW_SPEED = 0.33
LOAD_SHARE = 0.85


@dataclass(frozen=True)
class Size:
    """How long each part of a scenario runs; `--tiny` proves the machinery in seconds."""

    warmup_s: float = 45.0
    measure_s: float = 90.0
    calibrate_s: float = 15.0
    overhead_rate: float = 20.0
    overhead_s: float = 30.0
    capacity_rates: tuple[float, ...] = (25, 50, 100, 200, 400, 800, 1200, 1600)
    capacity_level_s: float = 5.0
    scaling_replicas: tuple[int, ...] = (1, 2, 4, 8)
    scaling_s: float = 45.0
    output_tokens: load.Range = (64, 128)
    reload_clients: int = 200
    reload_every_s: float = 10.0
    reload_warmup_s: float = 20.0
    reload_measure_s: float = 120.0
    reload_output_tokens: load.Range = (100, 200)
    chat: ChatWorkload = ChatWorkload()
    # Half of the conversations are one tenant's, keyed by tenant: keyed
    # routing alone would send them all to one replica, twice its fair share.
    chat_hot: ChatWorkload = ChatWorkload(conversations=240, hot_share=0.5, key_by="tenant")
    # Every stability cell (router.bench.stability), or two that prove the machinery.
    stability_every_cell: bool = True


FULL = Size()
_TINY_CHAT = ChatWorkload(tenants=3, system_tokens=300, conversations=8, turns=(2, 3),
                          output_tokens=(4, 8), think_s=0.05, concurrent=4)
TINY = Size(warmup_s=1.0, measure_s=2.0, calibrate_s=1.5, overhead_rate=10.0, overhead_s=2.0,
            capacity_rates=(20.0, 40.0), capacity_level_s=1.0, scaling_replicas=(1, 2),
            scaling_s=2.0, output_tokens=(8, 16), reload_clients=16, reload_every_s=0.5,
            reload_warmup_s=0.5, reload_measure_s=2.0, reload_output_tokens=(8, 16),
            chat=_TINY_CHAT, chat_hot=replace(_TINY_CHAT, hot_share=0.5, key_by="tenant"),
            stability_every_cell=False)


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
    # Policy scenarios: only these contenders (Policy.key); empty runs all.
    contenders: tuple[str, ...] = ()

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


def _run(endpoint: Endpoint, workload: load.Workload, arrivals: load.Arrivals,
         duration_s: float, sample_weights: bool = False) -> load.RunResult:
    return asyncio.run(load.run(endpoint.url, workload, arrivals, duration_s, endpoint.key,
                                sample_weights=sample_weights))


def window_summary(run: load.RunResult, start_s: float, length_s: float) -> dict[str, Any]:
    """Summary of the requests that started inside [start_s, start_s + length_s)."""
    inside = [r for r in run.records if start_s <= r.start < start_s + length_s]
    return stats.summarize(inside, length_s, stats.Slo(ttft_s=2.0, itl_s=0.1))


def _peer_rows(labels: list[str]) -> dict[str, str | None]:
    """Why each peer cannot run (None: it can)."""
    wanted = {"vllm-router": "vllm-router", "LiteLLM": "litellm"}
    missing = {}
    for label in labels:
        for prefix, command in wanted.items():
            if label.startswith(prefix):
                missing[label] = (None if fleets.peer_executable(command)
                                  else f"{command} is not installed (run `make peers`)")
    return missing


# ---------------------------------------------------------------- overhead

def overhead(ctx: Context) -> ScenarioResult:
    size = ctx.size
    latency_load = load.Workload(model="sim-model", prompt_words=(16, 16),
                                 output_tokens=(16, 16), seed=ctx.seed)
    capacity_load = replace(latency_load, stream=False)
    labels = ["direct", "llm-fleet (nginx)", "vllm-router", "LiteLLM proxy"]
    missing = _peer_rows(labels)
    slice_s = size.overhead_s / OVERHEAD_ROUNDS
    with ctx.fleet("overhead", 1, {"defaults": OVERHEAD_SIM}) as fleet, \
            contextlib.ExitStack() as peers:
        work = ctx.work_dir / "overhead"
        endpoints = {"direct": Endpoint(fleet.replica_urls[0]),
                     "llm-fleet (nginx)": Endpoint(fleet.gateway_url)}
        if not missing["vllm-router"]:
            endpoints["vllm-router"] = peers.enter_context(
                fleets.vllm_router(fleet.replica_urls, "round_robin", work))
        if not missing["LiteLLM proxy"]:
            endpoints["LiteLLM proxy"] = peers.enter_context(
                fleets.litellm_proxy(fleet.replica_urls, "sim-model", work))
        for label, why in missing.items():
            if why:
                ctx.progress(f"overhead: {label} skipped: {why}")
        # Slices in turn, so drift on the shared machine (Prometheus
        # compacting, a page cache flush) lands on every contender alike.
        slices: dict[str, list[load.RunResult]] = {label: [] for label in endpoints}
        for endpoint in endpoints.values():
            _run(endpoint, latency_load, load.Arrivals("poisson", rate=size.overhead_rate),
                 OVERHEAD_WARMUP_S)
        ctx.progress(f"overhead: latency, {OVERHEAD_ROUNDS} rounds of {slice_s:g}s per "
                     f"contender at {size.overhead_rate:g} req/s")
        for index in range(OVERHEAD_ROUNDS):
            for label, endpoint in endpoints.items():
                run = _run(endpoint, replace(latency_load, seed=ctx.seed + index),
                           load.Arrivals("poisson", rate=size.overhead_rate), slice_s)
                slices[label].append(run)
        rows = []
        for label in labels:
            if label not in endpoints:
                rows.append(Row(label, skipped=missing[label]))
                continue
            run = _joined(slices[label])
            summary = stats.summarize(run.records, run.duration_s, stats.Slo())
            row = Row(label, summary=summary, run=run)
            row.extra["capacity"] = _capacity_sweep(ctx, endpoints[label], capacity_load, label)
            rows.append(row)
    direct = rows[0].summary
    assert direct is not None
    targets: list[tuple[str, str, bool | None]] = []
    for row in rows[1:]:
        if row.summary is None:
            continue
        added = {q: _added(row.summary, direct, "e2e_s", q) for q in ("p50", "p99")}
        row.extra["added_e2e_s"] = added
        if row.label.startswith("llm-fleet"):
            targets.append(("gateway adds under 1 ms at p50", _fmt_ms(added["p50"]),
                            added["p50"] is not None and added["p50"] < 0.001))
            targets.append(("gateway adds under 5 ms at p99", _fmt_ms(added["p99"]),
                            added["p99"] is not None and added["p99"] < 0.005))
    return ScenarioResult(
        name="overhead", title="What a gateway adds to every request",
        setup=[f"One simulated replica ({sim_text(OVERHEAD_SIM)}), reached directly and "
               "through each gateway.",
               f"Latency: streamed chat requests, 16 prompt words, 16 output tokens, Poisson "
               f"arrivals at {size.overhead_rate:g} requests/s, {size.overhead_s:g} s per "
               f"contender, run as {OVERHEAD_ROUNDS} rounds of {slice_s:g} s slices taken in "
               "turn (after a discarded warm-up second each), so the contenders share any "
               "drift of the machine. Added latency is the contender's percentile minus "
               "direct's; the replica's own step jitter is about 1 ms, so differences "
               "below that are noise.",
               "Capacity: the same requests non-streamed, Poisson at "
               + ", ".join(f"{r:g}" for r in size.capacity_rates)
               + f" requests/s for {size.capacity_level_s:g} s each, stopping at the first "
               "level that fails. Sustained: no failed request and p99 E2E under 1 s (a "
               "gateway that falls behind queues, and its p99 grows past that at once).",
               "vllm-router runs its round_robin policy (one worker); LiteLLM its default "
               "simple-shuffle router with one worker process, authenticated with a master "
               "key (it refuses to start without one)."],
        rows=rows, targets=targets)


def _joined(runs: list[load.RunResult]) -> load.RunResult:
    """Slices of one contender's load as one run: records pooled, the worst
    slice's send lag, the client's CPU share averaged over time."""
    wall = sum(r.duration_s for r in runs)
    lags = [r.send_lag_p99_s for r in runs if r.send_lag_p99_s is not None]
    return load.RunResult(
        records=[record for r in runs for record in r.records], duration_s=wall,
        send_lag_p99_s=max(lags) if lags else None, dropped=sum(r.dropped for r in runs),
        client_cpu_share=sum(r.client_cpu_share * r.duration_s for r in runs) / wall)


def _capacity_sweep(ctx: Context, endpoint: Endpoint, workload: load.Workload,
                    label: str) -> dict[str, Any]:
    levels = []
    sustained = 0.0
    for rate in ctx.size.capacity_rates:
        run = _run(endpoint, workload, load.Arrivals("poisson", rate=rate),
                   ctx.size.capacity_level_s)
        summary = stats.summarize(run.records, run.duration_s, stats.Slo())
        served = summary["succeeded"] / run.duration_s
        p99 = summary["e2e_s"]["p99"]
        client_bound = run.client_bound(load.Arrivals("poisson", rate=rate))
        ok = summary["failed"] == 0 and p99 is not None and p99 < 1.0 and not client_bound
        levels.append({"rate": rate, "served": served, "failed": summary["failed"],
                       "e2e_p99_s": p99, "sustained": ok, "client_bound": client_bound})
        verdict = "sustained" if ok else "not sustained" + (" (client-bound)" if client_bound
                                                            else "")
        ctx.progress(f"overhead: {label}: {rate:g} req/s offered, {served:,.0f} served, "
                     f"{summary['failed']} failed, p99 {_fmt_s(p99)} -> {verdict}")
        if not ok:
            break
        sustained = rate
    return {"sustained_rate": sustained, "levels": levels}


def _added(row: dict[str, Any], base: dict[str, Any], metric: str, q: str) -> float | None:
    a, b = row[metric][q], base[metric][q]
    return None if a is None or b is None else a - b


# ------------------------------------------------------- policy scenarios

@dataclass(frozen=True)
class Policy:
    key: str  # what --contenders names it by
    label: str
    balance: str = "least_conn"
    controller: bool = False
    router_policy: str | None = None  # a vllm-router policy: the row is vllm-router
    affinity: AffinityMode = AffinityMode.OFF  # gateway.affinity
    load_bound: bool = True  # False: shed_above at its maximum, so nothing ever sheds


POLICIES = (
    Policy("round-robin", "round-robin (nginx)", balance="round_robin"),
    Policy("least_conn", "least_conn, static weights (nginx)"),
    Policy("adaptive", "llm-fleet adaptive", controller=True),
    Policy("power_of_two", "vllm-router power_of_two", router_policy="power_of_two"),
    Policy("cache_aware", "vllm-router cache_aware", router_policy="cache_aware"),
)
CONTENDERS = tuple(p.key for p in POLICIES)


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


def policies(ctx: Context, heterogeneous: bool) -> ScenarioResult:
    size = ctx.size
    name = "heterogeneous" if heterogeneous else "homogeneous"
    sim: dict[str, Any] = {"defaults": POLICY_SIM}
    if heterogeneous:
        sim["replicas"] = [{}, {}, {}, {"speed": SLOW_SPEED}]
    workload = load.Workload(model="sim-model", prompt_words=(32, 256),
                             output_tokens=size.output_tokens, seed=ctx.seed)
    missing = _peer_rows([p.label for p in POLICIES])
    rows: list[Row] = []
    rate = 0.0
    per_replica: list[float] = []
    chosen = [p for p in POLICIES if not ctx.contenders or p.key in ctx.contenders]
    for policy in chosen:
        if missing.get(policy.label):
            rows.append(Row(policy.label, skipped=missing[policy.label]))
            ctx.progress(f"{name}: {policy.label} skipped: {missing[policy.label]}")
            continue
        folder = policy.label.split(" ")[0].replace(",", "")
        with ctx.fleet(f"{name}/{folder}-{len(rows)}", 4, sim, balance=policy.balance,
                       controller=policy.controller) as fleet:
            if not rate:
                capacity, per_replica = calibrate(fleet, workload, ctx.size.calibrate_s)
                rate = round(LOAD_SHARE * capacity, 1)
                ctx.progress(f"{name}: capacity {capacity:.1f} req/s "
                             f"({', '.join(f'{c:.1f}' for c in per_replica)}); "
                             f"load {rate:g} req/s")
            opener: contextlib.AbstractContextManager[Endpoint] = (
                fleets.vllm_router(fleet.replica_urls, policy.router_policy,
                                   ctx.work_dir / name)
                if policy.router_policy else contextlib.nullcontext(Endpoint(fleet.gateway_url)))
            with opener as endpoint:
                total = size.warmup_s + size.measure_s
                ctx.progress(f"{name}: {policy.label}: Poisson {rate:g} req/s for {total:g}s "
                             f"(first {size.warmup_s:g}s warm-up)")
                run = _run(endpoint, workload, load.Arrivals("poisson", rate=rate), total,
                           sample_weights=policy.router_policy is None)
            summary = window_summary(run, size.warmup_s, size.measure_s)
            row = Row(policy.label, summary=summary, run=run, measured_from_s=size.warmup_s)
            if policy.controller:
                row.extra["weight_changes"] = weight_changes(run.weights, size.warmup_s)
            rows.append(row)
            ctx.progress(f"{name}: {policy.label}: E2E p99 {_fmt_s(summary['e2e_s']['p99'])}, "
                         f"{summary['request_throughput']:.1f} req/s, "
                         f"{summary['failed']} failed")
    result = ScenarioResult(
        name=name,
        title=("One replica at a third of the speed" if heterogeneous
               else "Four equal replicas"),
        setup=[f"4 simulated replicas ({sim_text(POLICY_SIM)})"
               + (f"; replica-3 runs at speed {SLOW_SPEED:g}" if heterogeneous else "") + ".",
               f"Capacity measured first: each replica driven directly with "
               f"{POLICY_SIM['max_num_seqs']} concurrent clients for {size.calibrate_s:g} s, "
               "all four at once: " + ", ".join(f"{c:.1f}" for c in per_replica)
               + f" requests/s, {sum(per_replica):.1f} in all.",
               f"Load: streamed chat, 32-256 prompt words, {size.output_tokens[0]}-"
               f"{size.output_tokens[1]} output tokens, Poisson arrivals at {rate:g} "
               f"requests/s ({LOAD_SHARE:.0%} of capacity) for "
               f"{size.warmup_s + size.measure_s:g} s; "
               + (f"figures are over the requests that started after a {size.warmup_s:g} s "
                  "warm-up." if size.warmup_s else "figures are over every request, from the "
                  "first second (no warm-up left out)."),
               "Each row is a fresh fleet from the same spec; only the balancing differs. "
               "Goodput counts requests with TTFT <= 2 s and TPOT <= 100 ms."],
        rows=rows)
    result.timeline_row = next((i for i, r in enumerate(rows) if r.label == "llm-fleet adaptive"
                                and r.summary), -1)
    _policy_targets(result, heterogeneous)
    return result


def weight_changes(samples: list[dict[str, Any]], after_s: float) -> int:
    """How often the sampled weights changed after ``after_s``: each change is
    a reload the controller made (samples are a second apart, reloads ten)."""
    seen = [s["weights"] for s in samples if s["t"] >= after_s and s["weights"]]
    return sum(1 for a, b in zip(seen, seen[1:], strict=False) if a != b)


def _row_by_label(rows: list[Row], prefix: str) -> Row | None:
    return next((r for r in rows if r.label.startswith(prefix) and r.summary), None)


def _by_label(rows: list[Row], prefix: str) -> dict[str, Any] | None:
    row = _row_by_label(rows, prefix)
    return None if row is None else row.summary


def _policy_targets(result: ScenarioResult, heterogeneous: bool) -> None:
    adaptive = _by_label(result.rows, "llm-fleet adaptive")
    least = _by_label(result.rows, "least_conn")
    robin = _by_label(result.rows, "round-robin")
    if adaptive is None or least is None:
        return
    e2e = adaptive["e2e_s"]["p99"]
    if heterogeneous:
        bases = [(least, 0.6, "static least_conn")] + (
            [(robin, 0.4, "round-robin")] if robin is not None else [])
        for base, limit, label in bases:
            ratio = e2e / base["e2e_s"]["p99"] if e2e and base["e2e_s"]["p99"] else None
            result.targets.append((f"adaptive P99 E2E <= {limit:g} x {label}",
                                   "–" if ratio is None else f"{ratio:.2f} x",
                                   ratio is not None and ratio <= limit))
        thr = adaptive["request_throughput"] / least["request_throughput"]
        result.targets.append(("adaptive throughput within 2 % of least_conn",
                               f"{thr - 1:+.1%}", abs(thr - 1) <= 0.02))
        return
    changes = next((r.extra["weight_changes"] for r in result.rows
                    if "weight_changes" in r.extra), None)
    if changes is not None:
        result.targets.append(("adaptive: zero weight reloads after warm-up",
                               f"{changes}", changes == 0))
    for metric, label in (("ttft_s", "P99 TTFT"), ("e2e_s", "P99 E2E")):
        a, b = adaptive[metric]["p99"], least[metric]["p99"]
        ratio = a / b if a and b else None
        result.targets.append((f"adaptive {label} within 5 % of least_conn",
                               "–" if ratio is None else f"{ratio - 1:+.1%}",
                               ratio is not None and ratio <= 1.05))
    for metric, label in (("request_throughput", "throughput"), ("goodput", "goodput")):
        ratio = adaptive[metric] / least[metric] if least[metric] else None
        result.targets.append((f"adaptive {label} within 5 % of least_conn",
                               "–" if ratio is None else f"{ratio - 1:+.1%}",
                               ratio is not None and ratio >= 0.95))


# -------------------------------------------------------------------- chat

# Replicas whose prefill costs what a 24 GB card's does (about 10,000 prompt
# tokens/s), with a KV cache that holds about 25 of these conversations.
CHAT_SIM: dict[str, Any] = {**POLICY_SIM, "prefill_s_per_token": 0.0001,
                            "kv_capacity_tokens": 100_000}
CHAT_POLICIES = (
    Policy("least_conn", "least_conn, static weights (nginx)"),
    Policy("adaptive", "llm-fleet adaptive", controller=True),
    Policy("affinity", "llm-fleet affinity (auto, load bound)", controller=True,
           affinity=AffinityMode.AUTO),
    Policy("affinity-unbounded", "llm-fleet affinity (auto, no load bound)", controller=True,
           affinity=AffinityMode.AUTO, load_bound=False),
    Policy("cache_aware", "vllm-router cache_aware", router_policy="cache_aware"),
    Policy("consistent_hash", "vllm-router consistent_hash", router_policy="consistent_hash"),
)
CHAT_CONTENDERS = tuple(p.key for p in CHAT_POLICIES)
# The hot tenant is about where keyed traffic piles up: the adaptive row
# routes no key and would repeat least_conn.
CHAT_HOT_POLICIES = tuple(p for p in CHAT_POLICIES if p.key != "adaptive")
CHAT_HOT_CONTENDERS = tuple(p.key for p in CHAT_HOT_POLICIES)


def prefix_cache_counts(urls: list[str]) -> list[tuple[float, float]]:
    """Each replica's prefix cache (queries, hits), in tokens, since it started."""
    import httpx

    counts = []
    for url in urls:
        text = httpx.get(url + "/metrics", timeout=5).text
        counts.append((metric_sum(text, "vllm:prefix_cache_queries_total"),
                       metric_sum(text, "vllm:prefix_cache_hits_total")))
    return counts


def _cache_hit_rates(urls: list[str]) -> list[float | None]:
    return [hits / queries if queries else None
            for queries, hits in prefix_cache_counts(urls)]


async def converse(endpoint: Endpoint, replica_urls: list[str], workload: ChatWorkload
                   ) -> tuple[load.RunResult, list[list[float]]]:
    """Every conversation of ``workload`` through ``endpoint``, and each
    replica's waiting queue sampled while they ran."""
    stop = asyncio.Event()
    samples: list[dict[str, Any]] = []
    sampler = asyncio.create_task(_sample_replicas(replica_urls, "vllm:num_requests_waiting",
                                                   "waiting", samples, time.perf_counter(),
                                                   stop))
    try:
        run = await run_conversations(endpoint.url, workload, endpoint.key)
    finally:
        stop.set()
        await sampler
    return run.result, [sample["waiting"] for sample in samples]


def chat(ctx: Context, hot: bool = False) -> ScenarioResult:
    name = "chat-hot" if hot else "chat"
    workload = replace(ctx.size.chat_hot if hot else ctx.size.chat, seed=ctx.seed)
    policies = CHAT_HOT_POLICIES if hot else CHAT_POLICIES
    missing = _peer_rows([p.label for p in policies])
    rows: list[Row] = []
    for policy in (p for p in policies if not ctx.contenders or p.key in ctx.contenders):
        if missing.get(policy.label):
            rows.append(Row(policy.label, skipped=missing[policy.label]))
            ctx.progress(f"{name}: {policy.label} skipped: {missing[policy.label]}")
            continue
        with ctx.fleet(f"{name}/{policy.key}", 4, {"defaults": CHAT_SIM},
                       controller=policy.controller, gateway={"affinity": policy.affinity.value},
                       controller_settings={} if policy.load_bound else {"shed_above": 2.0}
                       ) as fleet:
            opener: contextlib.AbstractContextManager[Endpoint] = (
                fleets.vllm_router(fleet.replica_urls, policy.router_policy,
                                   ctx.work_dir / name)
                if policy.router_policy else contextlib.nullcontext(Endpoint(fleet.gateway_url)))
            with opener as endpoint:
                ctx.progress(f"{name}: {policy.label}: {workload.conversations} conversations, "
                             f"{workload.concurrent} at a time")
                run, waiting = asyncio.run(converse(endpoint, fleet.replica_urls, workload))
                hit_rates = _cache_hit_rates(fleet.replica_urls)
        summary = stats.summarize(run.records, run.duration_s,
                                  stats.Slo(ttft_s=2.0, itl_s=0.1))
        row = Row(policy.label, summary=summary, run=run)
        row.extra.update(
            prefix_cache_hit_rate=hit_rates,
            worst_queue=max((max(sample) for sample in waiting if sample), default=0.0),
            mean_worst_queue=(sum(max(sample) for sample in waiting) / len(waiting)
                              if waiting else 0.0))
        rows.append(row)
        ctx.progress(f"{name}: {policy.label}: TTFT p50 {_fmt_s(summary['ttft_s']['p50'])}, "
                     f"p99 {_fmt_s(summary['ttft_s']['p99'])}, "
                     f"{summary['request_throughput']:.1f} req/s, cache hits "
                     + ", ".join("–" if h is None else f"{h:.0%}" for h in hit_rates))
    w = workload
    keyed = ("an X-Session-Id naming the conversation's tenant (a client keying on the "
             "prompt it shares, as OpenAI's prompt_cache_key advice has it); half of the "
             f"conversations ({w.hot_share:.0%}) are tenant 0's" if hot
             else "an X-Session-Id per conversation")
    result = ScenarioResult(
        name=name,
        title=("A hot tenant: half of all conversations share one key" if hot
               else "Multi-turn conversations with long shared system prompts"),
        setup=[f"4 simulated replicas ({sim_text(CHAT_SIM)}), each with vLLM's prefix cache "
               "(blocks of 16 tokens, least recently used evicted): it holds about "
               f"{CHAT_SIM['kv_capacity_tokens'] // (w.system_tokens + 1000)} of these "
               "conversations, not all of them.",
               f"Load: {w.conversations} conversations of {w.turns[0]}-{w.turns[1]} turns, "
               f"{w.concurrent} at a time (a finished one starts the next), each of one of "
               f"{w.tenants} tenants whose {w.system_tokens:,}-token system prompt all its "
               f"conversations share; user turns of {w.user_tokens[0]}-{w.user_tokens[1]} "
               f"tokens, streamed answers of {w.output_tokens[0]}-{w.output_tokens[1]} tokens, "
               f"think time exponential with mean {w.think_s:g} s; every turn re-sends the "
               f"history and {keyed}.",
               "Each row is a fresh fleet from the same spec; only the routing differs. "
               "Prefix cache hit rate per replica is vLLM's prefix_cache_hits over "
               "prefix_cache_queries at the end of the run (the controller's warm-up and pace "
               "probes included); the worst queue is the largest vllm:num_requests_waiting "
               f"of any replica, sampled every {IMBALANCE_SAMPLE_S:g} s."],
        rows=rows)
    result.timeline_row = next((i for i, r in enumerate(rows) if r.label.startswith(
        "llm-fleet affinity (auto, load") and r.summary), -1)
    if hot:
        _chat_hot_targets(result)
    else:
        _chat_targets(result)
    return result


def _chat_hot_targets(result: ScenarioResult) -> None:
    bound = _row_by_label(result.rows, "llm-fleet affinity (auto, load bound)")
    unbound = _row_by_label(result.rows, "llm-fleet affinity (auto, no load bound)")
    if bound is None or unbound is None or bound.summary is None or unbound.summary is None:
        return
    p99, p99_without = bound.summary["ttft_s"]["p99"], unbound.summary["ttft_s"]["p99"]
    if p99 is not None and p99_without:
        result.targets.append(("load bound: TTFT p99 below affinity without it",
                               f"{p99 / p99_without:.2f} x", p99 < p99_without))
    queue, queue_without = bound.extra["worst_queue"], unbound.extra["worst_queue"]
    result.targets.append(("load bound: the worst replica queue below affinity without it",
                           f"{queue:g} against {queue_without:g}", queue < queue_without))
    failed = bound.summary["failed"]
    result.targets.append(("load bound: no request fails", f"{failed} failed", failed == 0))


def _chat_targets(result: ScenarioResult) -> None:
    affinity = _by_label(result.rows, "llm-fleet affinity (auto, load bound)")
    least = _by_label(result.rows, "least_conn")
    aware = _by_label(result.rows, "vllm-router cache_aware")
    if affinity is None or least is None:
        return

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    p50 = ratio(affinity["ttft_s"]["p50"], least["ttft_s"]["p50"])
    result.targets.append(("affinity TTFT p50 at most 0.5 x least_conn",
                           "–" if p50 is None else f"{p50:.2f} x", p50 is not None and p50 <= 0.5))
    p99 = ratio(affinity["ttft_s"]["p99"], least["ttft_s"]["p99"])
    result.targets.append(("affinity TTFT p99 not worse than least_conn",
                           "–" if p99 is None else f"{p99:.2f} x", p99 is not None and p99 <= 1.0))
    thr = ratio(affinity["request_throughput"], least["request_throughput"])
    result.targets.append(("affinity throughput within 2 % of least_conn",
                           "–" if thr is None else f"{thr - 1:+.1%}",
                           thr is not None and thr >= 0.98))
    if aware is not None:
        versus = ratio(affinity["ttft_s"]["p50"], aware["ttft_s"]["p50"])
        result.targets.append(("affinity no worse than vllm-router cache_aware (TTFT p50)",
                               "–" if versus is None else f"{versus:.2f} x",
                               versus is not None and versus <= 1.0))


# ----------------------------------------------------------------- scaling

def scaling(ctx: Context) -> ScenarioResult:
    size = ctx.size
    seqs = int(POLICY_SIM["max_num_seqs"])
    # Non-streamed, so at 8 replicas the 2-core client and nginx move requests,
    # not tens of thousands of stream chunks a second. Each replica gets half
    # again its batch in clients, so it is always full and queues a little.
    workload = load.Workload(model="sim-model", stream=False, prompt_words=(32, 32),
                             output_tokens=size.output_tokens, seed=ctx.seed)
    per_replica_clients = seqs + seqs // 2
    # Throughput counts requests completed inside a steady window: not the
    # first third, while every client's first request is still in its first
    # batch, and not the drain after the last request was sent.
    steady_from = size.scaling_s / 3

    def measure(endpoint: Endpoint, clients: int) -> tuple[load.RunResult, dict[str, Any]]:
        run = _run(endpoint, workload, load.Arrivals("closed", concurrency=clients),
                   size.scaling_s)
        done = [r for r in run.records
                if r.e2e is not None and steady_from <= r.start + r.e2e < size.scaling_s]
        return run, stats.summarize(done, size.scaling_s - steady_from, stats.Slo())

    rows: list[Row] = []
    single = 0.0
    for replicas in size.scaling_replicas:
        with ctx.fleet(f"scaling/{replicas}", replicas, {"defaults": POLICY_SIM}) as fleet:
            if not single:
                ctx.progress(f"scaling: one replica direct, {per_replica_clients} clients")
                run, summary = measure(Endpoint(fleet.replica_urls[0]), per_replica_clients)
                single = summary["request_throughput"]
                rows.append(Row("1 replica, direct", summary=summary, run=run,
                                extra={"replicas": 1, "ideal": single, "ratio": 1.0}))
            clients = replicas * per_replica_clients
            ctx.progress(f"scaling: {replicas} replica(s) through the gateway, {clients} clients")
            run, summary = measure(Endpoint(fleet.gateway_url), clients)
            ideal = replicas * single
            rows.append(Row(f"{replicas} replica(s), gateway", summary=summary, run=run,
                            extra={"replicas": replicas, "ideal": ideal,
                                   "ratio": summary["request_throughput"] / ideal}))
    worst = min((r for r in rows[1:]), key=lambda r: r.extra["ratio"])
    return ScenarioResult(
        name="scaling", title="Throughput against N x one replica",
        setup=[f"Simulated replicas ({sim_text(POLICY_SIM)}), llm-fleet's default spec "
               "(adaptive controller on).",
               f"Closed loop of {per_replica_clients} clients per replica (the batch of "
               f"{seqs} plus half again, so every replica stays full), non-streamed chat, "
               f"32 prompt words, {size.output_tokens[0]}-{size.output_tokens[1]} output "
               f"tokens, {size.scaling_s:g} s per fleet size; throughput and latency count "
               f"the requests that completed between {steady_from:g} s and "
               f"{size.scaling_s:g} s, the steady part of the run.",
               "The ideal for N replicas is N times one replica driven directly."],
        rows=rows,
        targets=[("at least 0.97 x N x one replica, at every N",
                  f"lowest {worst.extra['ratio']:.3f} x at N = {worst.extra['replicas']}",
                  worst.extra["ratio"] >= 0.97)])


# ----------------------------------------------------------------- reloads

# Slow steps, so 200 long streams are a few thousand chunks a second (what a
# 2-core client can read), and a batch big enough that nothing queues: the
# running count per replica is then exactly where the gateway sent streams.
RELOAD_SIM: dict[str, Any] = {"decode_step_s": 0.1, "decode_s_per_seq": 0.0004,
                              "max_num_seqs": 128}
IMBALANCE_SAMPLE_S = 0.5


def metric_sum(metrics_text: str, name: str) -> float:
    """The sum of one metric's samples in a /metrics text (every label set)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith((name + "{", name + " ")))


async def _sample_replicas(urls: list[str], metric: str, label: str,
                           into: list[dict[str, Any]], run_start: float,
                           stop: asyncio.Event) -> None:
    """Every IMBALANCE_SAMPLE_S, each replica's ``metric``: {"t": s, label: [per replica]}."""
    import httpx

    async with httpx.AsyncClient(timeout=2.0) as client:
        while not stop.is_set():
            try:
                texts = await asyncio.gather(*(client.get(u + "/metrics") for u in urls))
                into.append({"t": time.perf_counter() - run_start,
                             label: [metric_sum(r.text, metric) for r in texts]})
            except httpx.HTTPError:
                pass
            await asyncio.sleep(IMBALANCE_SAMPLE_S)


async def reload_every(paths: RuntimePaths, every_s: float, stop: asyncio.Event,
                        done: list[float], run_start: float) -> None:
    """SIGHUP the nginx master every ``every_s``: a reload of the same file
    still starts a new generation of workers, which is what is measured."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            signal_reload(paths)
            done.append(time.perf_counter() - run_start)


async def _streams(fleet: Fleet, workload: load.Workload, clients: int, seconds: float,
                   reload_every_s: float | None, samples: list[dict[str, Any]],
                   reloaded: list[float]) -> load.RunResult:
    """The closed loop of streams, with the running counts sampled and, when
    asked, nginx reloaded every ``reload_every_s``."""
    stop = asyncio.Event()
    start = time.perf_counter()
    helpers = [asyncio.create_task(_sample_replicas(fleet.replica_urls, "vllm:num_requests_running",
                                                    "running", samples, start, stop))]
    if reload_every_s is not None:
        helpers.append(asyncio.create_task(reload_every(
            RuntimePaths(fleet.spec.runtime_dir), reload_every_s, stop, reloaded, start)))
    try:
        return await load.run(fleet.gateway_url, workload,
                              load.Arrivals("closed", concurrency=clients), seconds,
                              sample_weights=False)
    finally:
        stop.set()
        await asyncio.gather(*helpers)


def imbalance(samples: list[dict[str, Any]], after_s: float) -> dict[str, Any]:
    """max/min of the replicas' running requests per sample, after ``after_s``."""
    ratios = [max(s["running"]) / min(s["running"]) for s in samples
              if s["t"] >= after_s and s["running"] and min(s["running"]) > 0]
    empty = sum(1 for s in samples if s["t"] >= after_s and s["running"]
                and min(s["running"]) == 0)
    ratios.sort()
    return {"samples": len(ratios), "samples_with_an_idle_replica": empty,
            "mean": sum(ratios) / len(ratios) if ratios else None,
            "p50": stats.percentile(ratios, 50) if ratios else None,
            "p95": stats.percentile(ratios, 95) if ratios else None,
            "max": ratios[-1] if ratios else None}


def reloads(ctx: Context) -> ScenarioResult:
    size = ctx.size
    workload = load.Workload(model="sim-model", prompt_words=(32, 64),
                             output_tokens=size.reload_output_tokens, seed=ctx.seed)
    total = size.reload_warmup_s + size.reload_measure_s
    rows: list[Row] = []
    for label, every in (("no reloads", None),
                         (f"a reload every {size.reload_every_s:g} s", size.reload_every_s)):
        with ctx.fleet(f"reloads/{'none' if every is None else 'every'}", 4,
                       {"defaults": RELOAD_SIM}, controller=False) as fleet:
            ctx.progress(f"reloads: {label}: {size.reload_clients} streams for {total:g}s")
            samples: list[dict[str, Any]] = []
            reloaded: list[float] = []
            run = asyncio.run(_streams(fleet, workload, size.reload_clients, total, every,
                                       samples, reloaded))
        summary = window_summary(run, size.reload_warmup_s, size.reload_measure_s)
        row = Row(label, summary=summary, run=run, measured_from_s=size.reload_warmup_s)
        row.extra.update(imbalance=imbalance(samples, size.reload_warmup_s),
                         reloads=len(reloaded), running_samples=samples)
        rows.append(row)
        spread = row.extra["imbalance"]
        ctx.progress(f"reloads: {label}: running max/min mean {_fmt_ratio(spread['mean'])}, "
                     f"p95 {_fmt_ratio(spread['p95'])}; E2E p99 "
                     f"{_fmt_s(summary['e2e_s']['p99'])}")
    still, reloading = (r.extra["imbalance"] for r in rows)
    calm, busy = (r.summary for r in rows)
    assert calm is not None and busy is not None
    p99 = {m: (busy[m]["p99"] / calm[m]["p99"]) if busy[m]["p99"] and calm[m]["p99"] else None
           for m in ("ttft_s", "e2e_s")}
    result = ScenarioResult(
        name="reloads", title="What a reload every few seconds does to least_conn",
        setup=[f"4 simulated replicas ({sim_text(RELOAD_SIM)}): a batch large enough that "
               "nothing queues, so each replica's running count is where the gateway sent "
               "streams. Static least_conn; the controller is off in both runs, so the only "
               "difference is the reloads.",
               f"Load: a closed loop of {size.reload_clients} clients, streamed completions "
               f"of {size.reload_output_tokens[0]}-{size.reload_output_tokens[1]} tokens "
               f"(long streams), {total:g} s per run; figures after a "
               f"{size.reload_warmup_s:g} s warm-up.",
               f"With reloads: SIGHUP to the nginx master every {size.reload_every_s:g} s "
               "(the same configuration: each reload starts a new generation of workers, "
               "as a weight change does).",
               f"Imbalance: every {IMBALANCE_SAMPLE_S:g} s, each replica's "
               "`vllm:num_requests_running`; the figure is max/min across the four."],
        rows=rows, timeline_row=-1)
    # The question is whether the reloads hurt clients: a P99 more than 5 %
    # worse would call for a mitigation.
    result.targets.append((
        f"P99 TTFT and E2E with a reload every {size.reload_every_s:g} s within 5 % of "
        "without", f"{_fmt_ratio(p99['ttft_s'])} x, {_fmt_ratio(p99['e2e_s'])} x",
        all(v is not None and v <= 1.05 for v in p99.values())))
    result.notes.append(
        f"Running requests per replica, max/min: mean {_fmt_ratio(reloading['mean'])} with "
        f"reloads against {_fmt_ratio(still['mean'])} without (p95 "
        f"{_fmt_ratio(reloading['p95'])} against {_fmt_ratio(still['p95'])}).")
    result.notes.append(
        "Goodput is 0 in both rows by design of the load: these replicas take 0.1 s a step, "
        "above the goodput SLO's 100 ms per token; the long, slow streams are what keeps "
        "old workers busy across reloads.")
    return result


def _fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:+.2f} ms"


def _fmt_s(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} s"
