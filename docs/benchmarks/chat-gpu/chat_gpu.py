"""`fleet bench scenario chat`'s conversations against a running fleet of
real vLLM replicas, with and without a session key.

The fleet runs `gateway.affinity: session`, so one fleet serves both rows: a
conversation that sends no key is balanced by `least_conn` (with the
controller's weights) turn by turn; one that sends `X-Session-Id` goes back to
the replica its key ranks first, within the load bound. Each row uses its own
seed, so its texts (system prompts included) are new to every prefix cache.
Prefix cache hits are the replicas' `vllm:prefix_cache_hits_total` over
`vllm:prefix_cache_queries_total`, counted over the row alone.

    python3 chat_gpu.py --state RUNTIME/state.json --out DIR [--rows ROW,ROW,...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from router.bench import stats
from router.bench.chat import ChatWorkload, KeyBy
from router.bench.fleets import Endpoint
from router.bench.scenarios.chat import converse, prefix_cache_counts

ROWS: dict[str, tuple[str, KeyBy]] = {
    "least_conn": ("least_conn, no session key", "none"),
    "affinity": ("affinity, a session key per conversation", "conversation"),
}


def _row(name: str, seed: int, base: ChatWorkload, gateway: str,
         replica_urls: list[str]) -> dict[str, Any]:
    label, key_by = ROWS[name]
    workload = replace(base, key_by=key_by, seed=seed)
    before = prefix_cache_counts(replica_urls)
    run, waiting = asyncio.run(converse(Endpoint(gateway), replica_urls, workload))
    after = prefix_cache_counts(replica_urls)
    hit_rates = [(h1 - h0) / (q1 - q0) if q1 > q0 else None
                 for (q0, h0), (q1, h1) in zip(before, after, strict=True)]
    prompt_tokens = [q1 - q0 for (q0, _), (q1, _) in zip(before, after, strict=True)]
    summary = stats.summarize(run.records, run.duration_s, stats.Slo(ttft_s=2.0, itl_s=0.1))
    return {"row": name, "label": label, "seed": seed, "summary": summary,
            "prefix_cache_hit_rate": hit_rates, "prompt_tokens": prompt_tokens,
            "worst_queue": max((max(s) for s in waiting if s), default=0.0),
            "mean_worst_queue": (sum(max(s) for s in waiting) / len(waiting)
                                 if waiting else 0.0)}


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| row | requests | failed | req/s | TTFT p50 / p99 (ms) | E2E p99 (ms) | "
             "prefix cache hits per replica | worst queue max / mean | served by |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- | --- | --- |"]
    for row in rows:
        s = row["summary"]
        hits = ", ".join("–" if h is None else f"{h:.0%}" for h in row["prefix_cache_hit_rate"])
        total = max(1, s["succeeded"])
        share = ", ".join(f"{k.removeprefix('replica-')}: {v / total:.0%}"
                          for k, v in s["by_replica"].items())
        lines.append(f"| {row['label']} (seed {row['seed']}) | {s['requests']:,} | "
                     f"{s['failed']:,} | {s['request_throughput']:.1f} | "
                     f"{_ms(s['ttft_s']['p50'])} / {_ms(s['ttft_s']['p99'])} | "
                     f"{_ms(s['e2e_s']['p99'])} | {hits} | "
                     f"{row['worst_queue']:.0f} / {row['mean_worst_queue']:.1f} | {share} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, required=True,
                        help="the running cluster's state.json (in its runtime_dir)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", default="least_conn,affinity",
                        help=f"rows in order, from {', '.join(ROWS)} (a row may repeat)")
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--concurrent", type=int, default=96)
    # The workload's texts are pseudo-words ("w12345") sized at four characters
    # a token, the simulator's count; Qwen's tokenizer splits digits one by
    # one, about 1.2 characters a token, so 600 of these make a system prompt
    # of about 2,000 real tokens, the simulated scenario's.
    parser.add_argument("--system-tokens", type=int, default=600)
    args = parser.parse_args(argv)
    names = args.rows.split(",")
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        parser.error(f"unknown row {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    state = json.loads(args.state.read_text())
    gateway = state["gateway_url"]
    replica_urls = [r["url"] for r in state["replicas"]]
    base = ChatWorkload(conversations=args.conversations, concurrent=args.concurrent,
                        system_tokens=args.system_tokens, model=state["served_model_name"])
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, name in enumerate(names):
        rows.append(_row(name, index + 1, base, gateway, replica_urls))
        (args.out / "result.json").write_text(json.dumps(
            {"workload": asdict(base), "rows": rows}, indent=1, default=str))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    (args.out / "table.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
