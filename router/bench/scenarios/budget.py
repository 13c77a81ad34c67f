"""`fleet bench scenario budget`: one API key on a token budget, streaming
more than its budget allows, counted and cut off by the gateway.

The overload scenario's two simulated replicas, keys and budgets on, the
key at 10,000 tokens per minute. Its clients stream 64-token answers in a
closed loop well above that rate and wait out each Retry-After, as the
openai SDK does. Two contenders: the clients ask for the usage chunk
themselves, or do not (the gateway asks the replica and keeps the chunk
from them). The figures: how many tokens the key got in any minute against
its budget, what the gateway counted against what the replicas processed
(no stream counted at zero), and how fast and with what Retry-After it
refused.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from router.bench import fleets, load, stats
from router.bench.fleets import Endpoint, Fleet
from router.bench.scenario_kit import (
    Context,
    Row,
    Scenario,
    ScenarioResult,
    sim_text,
    tenant_keys,
    whole_ms,
)
from router.bench.scenarios.overload import OVERLOAD_SIM, REPLICAS
from router.bench.stats import percentile
from router.config.spec import BUDGET_WINDOW_S
from router.controller.budget import parse_key_counters

CONTENDERS = {"asked": "clients ask for the usage chunk",
              "unasked": "clients do not ask (the gateway does, and keeps it from them)"}
TENANT = "metered"
# The target: 429s within 1 % of the budget.
OVER_TARGET = 1.01
REPLICA_TOKENS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")


@dataclass(frozen=True)
class BudgetSize:
    seconds: float = 150.0
    budget: int = 10_000
    streams: int = 6
    tokens: int = 64
    prompt_words: int = 16


FULL = BudgetSize()
TINY = BudgetSize(seconds=8.0, budget=600, streams=2, tokens=16)


def _replica_tokens(fleet: Fleet) -> float:
    """Prompt and generated tokens the replicas processed so far."""
    total = 0.0
    for url in fleet.replica_urls:
        for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
            if line.startswith(REPLICA_TOKENS):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _gateway_tokens(fleet: Fleet) -> float:
    """Tokens the gateway counted, every key (mtail, as the ledger reads it)."""
    port = fleet.spec.gateway_metrics.log_exporter_port
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(parse_key_counters(text).tokens.values())


def _settled(read: Any, reaches: float | None = None, timeout_s: float = 20.0) -> float:
    """A counter once it reached ``reaches``, or (None) stopped moving for a
    second: the last answers' log lines reach mtail a moment after their
    clients have them. What it read last when time is up."""
    last, deadline = read(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reaches is not None and last >= reaches:
            break
        time.sleep(1.0)
        now = read()
        if reaches is None and now == last:
            break
        last = now
    return float(last)


def _completions(run: load.RunResult) -> list[tuple[float, int]]:
    """(seconds from the start when it ended, its tokens) of every answered request."""
    return sorted((r.start + (r.e2e or 0.0), r.total_tokens or 0) for r in run.records if r.ok)


def most_in_a_window(done: list[tuple[float, int]], window_s: float) -> int:
    """The most tokens that ended within any ``window_s`` seconds."""
    best, first, inside = 0, 0, 0
    for at, tokens in done:
        inside += tokens
        while done[first][0] <= at - window_s:
            inside -= done[first][1]
            first += 1
        best = max(best, inside)
    return best


def budget_scenario(ctx: Context) -> ScenarioResult:
    own = ctx.pick(FULL, TINY)
    chosen = [key for key in CONTENDERS if not ctx.contenders or key in ctx.contenders]
    rows: list[Row] = []
    for contender in chosen:
        workload = load.Workload(model="sim-model",
                                 prompt_words=(own.prompt_words, own.prompt_words),
                                 output_tokens=(own.tokens, own.tokens), seed=ctx.seed,
                                 ask_usage=contender == "asked")
        data, path = ctx.fleet_spec(f"budget/{contender}", REPLICAS,
                                    {"defaults": OVERLOAD_SIM}, auth={"enabled": True},
                                    budgets={"enabled": True, "tokens_per_min": own.budget},
                                    # The pace probes' tokens would count at the
                                    # replicas, not at the gateway.
                                    controller_settings={"pace": {"enabled": False}})
        secret = tenant_keys(Path(data["runtime_dir"]), {TENANT: None})[TENANT]
        ctx.progress(f"budget/{contender}: fleet up ({REPLICAS} simulated replicas)")
        with fleets.running_fleet(data, path, lambda _msg: None) as fleet:
            replicas_before, gateway_before = _replica_tokens(fleet), _gateway_tokens(fleet)
            ctx.progress(f"budget: {CONTENDERS[contender]}, {own.seconds:g} s")
            run = asyncio.run(load.run(
                Endpoint(fleet.gateway_url).url, workload,
                load.Arrivals("closed", concurrency=own.streams, honour_retry_after=True),
                own.seconds, secret, sample_weights=False))
            replicas = _settled(lambda fleet=fleet: _replica_tokens(fleet)) - replicas_before
            gateway = _settled(lambda fleet=fleet: _gateway_tokens(fleet),
                               reaches=gateway_before + replicas) - gateway_before
        rows.append(Row(CONTENDERS[contender], run=run,
                        summary=stats.summarize(run.records, own.seconds, stats.Slo()),
                        extra={"contender": contender, "budget": own.budget,
                               **_figures(run, own, gateway, replicas)}))
    return ScenarioResult(
        name="budget", title="One key on a token budget, streaming past it",
        setup=[f"{REPLICAS} simulated replicas ({sim_text(OVERLOAD_SIM)}), auth and "
               f"budgets on (budgets.tokens_per_min: {own.budget:,}), the controller on "
               "without its pace probes (their tokens would count at the replicas, not at "
               "the gateway); a fresh fleet per contender.",
               f"One key, {own.streams} closed-loop clients, each asking for "
               f"{own.prompt_words} prompt words and {own.tokens} tokens out, streamed, for "
               f"{own.seconds:g} s; every client waits out a Retry-After before its next "
               "request, as the openai SDK does.",
               "Contenders: the clients ask for the usage chunk (stream_options."
               "include_usage), or do not (the gateway asks the replica for it, counts it "
               "and keeps it from them).",
               "Tokens in a minute: the prompt and completion tokens of the answers that "
               "ended within any 60 s, from the usage the clients got (the contender that "
               "asks). Counted: the gateway's count for the key (mtail) against the prompt "
               "and generated tokens the replicas processed (their own counters), read "
               "before and after the run."],
        rows=rows, targets=_targets(rows, own))


def _figures(run: load.RunResult, own: BudgetSize, gateway: float,
             replicas: float) -> dict[str, Any]:
    refused = [r for r in run.records if r.status == 429]
    # The budget's own 429s say so; the others are the one-in-flight cap near it.
    over = [r for r in refused if "tokens per minute" in (r.error or "")]
    # Only a client that asks gets the usage: the other's tokens are unknown to it.
    done = _completions(run) if any(r.total_tokens for r in run.records) else []
    answered = sum(1 for r in run.records if r.ok)
    refused_in = [r.refused_in for r in refused if r.refused_in is not None]
    first = min((r.start for r in over), default=None)
    before_first = sum(t for at, t in done if first is not None and at <= first)
    waits = [r.retry_after for r in refused if r.retry_after is not None]
    return {
        "streams": own.streams, "answered": answered, "refused": len(refused),
        "refused_over": len(over),
        "other_failures": sum(1 for r in run.records if not r.ok and r.status != 429),
        "first_refusal_s": first, "tokens_before_first_refusal": before_first,
        "most_in_a_minute": most_in_a_window(done, BUDGET_WINDOW_S) if done else None,
        "client_tokens": sum(t for _at, t in done),
        "gateway_tokens": gateway, "replica_tokens": replicas,
        "usage_chunks_seen": sum(1 for r in run.records if r.ok and r.total_tokens is not None),
        "refused_p99_ms": 1000 * percentile(refused_in, 99) if refused_in else None,
        "retry_after": (min(waits), max(waits)) if waits else None,
    }


def _targets(rows: list[Row], own: BudgetSize) -> list[tuple[str, str, bool | None]]:
    targets: list[tuple[str, str, bool | None]] = []
    for row in rows:
        extra = row.extra
        most = extra["most_in_a_minute"]
        if most is not None:
            # A run shorter than the window cannot hold a whole minute.
            met = None if own.seconds < BUDGET_WINDOW_S else most <= OVER_TARGET * own.budget
            targets.append((
                f"a key at {own.budget:,} tokens/min streaming {own.tokens}-token answers: "
                f"at most {OVER_TARGET:.0%} of its budget in any minute",
                f"{most:,} tokens in the busiest minute ({most / own.budget:.3f}x); first "
                f"over-budget 429 after {extra['tokens_before_first_refusal']:,} tokens had "
                "ended", met))
        counted = extra["gateway_tokens"] / extra["replica_tokens"] \
            if extra["replica_tokens"] else None
        targets.append((
            f"{row.label}: no stream counted as zero (the gateway's count = the "
            "replicas' tokens)",
            "nothing ran" if counted is None else
            f"{extra['gateway_tokens']:,.0f} of {extra['replica_tokens']:,.0f} ({counted:.4f})",
            counted is not None and counted >= 0.999))
    return targets


def _budget_table(rows: list[Row]) -> list[str]:
    lines = ["", "### The key against its budget", "",
             "| contender | answered | 429: over budget / one in flight near it | other "
             "failures | busiest minute | first over-budget 429 at "
             "| counted by the gateway / processed by the replicas | usage chunks the clients "
             "saw | 429 answered in (p99) | Retry-After |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | --- |"]
    for row in rows:
        extra: dict[str, Any] = row.extra
        first = extra["first_refusal_s"]
        retry = extra["retry_after"]
        lines.append(
            f"| {row.label} | {extra['answered']} | {extra['refused_over']} / "
            f"{extra['refused'] - extra['refused_over']} | "
            f"{extra['other_failures']} | "
            + ("not known to the clients" if extra["most_in_a_minute"] is None else
               f"{extra['most_in_a_minute']:,} of {extra['budget']:,}") + " | "
            + ("–" if first is None else f"{first:.1f} s"
               + ("" if extra["most_in_a_minute"] is None else
                  f", {extra['tokens_before_first_refusal']:,} tokens")) + " | "
            f"{extra['gateway_tokens']:,.0f} / {extra['replica_tokens']:,.0f} | "
            f"{extra['usage_chunks_seen']} | "
            + ("–" if extra["refused_p99_ms"] is None else
               f"{whole_ms(extra['refused_p99_ms'] / 1000)}") + " | "
            + ("–" if retry is None else f"{retry[0]:g}-{retry[1]:g} s") + " |")
    return lines


SCENARIOS = (Scenario("budget", budget_scenario, contenders=tuple(CONTENDERS),
                      tables=_budget_table),)

