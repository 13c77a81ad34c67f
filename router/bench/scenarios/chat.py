"""`fleet bench scenario chat` and `chat-hot`: multi-turn conversations
with long shared system prompts, where prefix caching and affinity matter;
chat-hot gives half of them one key, to test the affinity load bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import Any

import requests

from router.affinity import AffinityMode
from router.bench import fleets, load, stats
from router.bench.chat import ChatWorkload, run_conversations
from router.bench.fleets import Endpoint
from router.bench.scenario_kit import (
    POLICY_SIM,
    REPLICA_SAMPLE_S,
    Context,
    Policy,
    Row,
    Scenario,
    ScenarioResult,
    metric_sum,
    peer_rows,
    row_by_label,
    s_text,
    sample_replicas,
    sim_text,
    summary_by_label,
)

FULL_CHAT = ChatWorkload()
TINY_CHAT = ChatWorkload(tenants=3, system_tokens=300, conversations=8, turns=(2, 3),
                         output_tokens=(4, 8), think_s=0.05, concurrent=4)
# Half of the conversations are one tenant's, keyed by tenant: keyed
# routing alone would send them all to one replica, twice its fair share.
FULL_CHAT_HOT = ChatWorkload(conversations=240, hot_share=0.5, key_by="tenant")
TINY_CHAT_HOT = replace(TINY_CHAT, hot_share=0.5, key_by="tenant")


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
    # Keys only from what clients send: the candidate for the default.
    Policy("affinity-session", "llm-fleet affinity (session, load bound)", controller=True,
           affinity=AffinityMode.SESSION),
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
    counts = []
    for url in urls:
        text = requests.get(url + "/metrics", timeout=5).text
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
    sampler = asyncio.create_task(sample_replicas(replica_urls, "vllm:num_requests_waiting",
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
    workload = replace(ctx.pick(FULL_CHAT_HOT, TINY_CHAT_HOT) if hot
                       else ctx.pick(FULL_CHAT, TINY_CHAT), seed=ctx.seed)
    policies = CHAT_HOT_POLICIES if hot else CHAT_POLICIES
    missing = peer_rows([p.label for p in policies])
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
        ctx.progress(f"{name}: {policy.label}: TTFT p50 {s_text(summary['ttft_s']['p50'])}, "
                     f"p99 {s_text(summary['ttft_s']['p99'])}, "
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
               f"of any replica, sampled every {REPLICA_SAMPLE_S:g} s."],
        rows=rows)
    result.timeline_row = next((i for i, r in enumerate(rows) if r.label.startswith(
        "llm-fleet affinity (auto, load") and r.summary), -1)
    if hot:
        _chat_hot_targets(result)
    else:
        _chat_targets(result)
    return result


def _chat_hot_targets(result: ScenarioResult) -> None:
    bound = row_by_label(result.rows, "llm-fleet affinity (auto, load bound)")
    unbound = row_by_label(result.rows, "llm-fleet affinity (auto, no load bound)")
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
    affinity = summary_by_label(result.rows, "llm-fleet affinity (auto, load bound)")
    least = summary_by_label(result.rows, "least_conn")
    aware = summary_by_label(result.rows, "vllm-router cache_aware")
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
    session = summary_by_label(result.rows, "llm-fleet affinity (session")
    if session is not None:
        # Whether `affinity: session` could be the default: a TTFT win with
        # no loss in the tail or in throughput.
        s50 = ratio(session["ttft_s"]["p50"], least["ttft_s"]["p50"])
        s99 = ratio(session["ttft_s"]["p99"], least["ttft_s"]["p99"])
        sthr = ratio(session["request_throughput"], least["request_throughput"])
        if s50 is not None and s99 is not None and sthr is not None:
            result.targets.append((
                "affinity session: TTFT p50 below least_conn's, p99 not worse, throughput "
                "within 2 %", f"p50 {s50:.2f} x, p99 {s99:.2f} x, throughput {sthr - 1:+.1%}",
                s50 < 1.0 and s99 <= 1.0 and sthr >= 0.98))
    if aware is not None:
        versus = ratio(affinity["ttft_s"]["p50"], aware["ttft_s"]["p50"])
        result.targets.append(("affinity no worse than vllm-router cache_aware (TTFT p50)",
                               "–" if versus is None else f"{versus:.2f} x",
                               versus is not None and versus <= 1.0))


def _chat_table(rows: list[Row]) -> list[str]:
    lines = ["", "### Prefix cache and queues", "",
             "| contender | prefix cache hit rate per replica | worst queue (max / mean of "
             "samples) |", "| --- | --- | --- |"]
    for row in rows:
        if row.summary is None:
            continue
        rates = ", ".join("–" if r is None else f"{r:.0%}"
                          for r in row.extra["prefix_cache_hit_rate"])
        lines.append(f"| {row.label} | {rates} | {row.extra['worst_queue']:.0f} / "
                     f"{row.extra['mean_worst_queue']:.1f} |")
    return lines


SCENARIOS = (
    Scenario("chat", chat, CHAT_CONTENDERS, tables=_chat_table),
    Scenario("chat-hot", lambda ctx: chat(ctx, hot=True), CHAT_HOT_CONTENDERS,
             tables=_chat_table),
)
