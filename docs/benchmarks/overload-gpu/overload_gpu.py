"""The overload scenario's figures on a GPU fleet: an interactive key at one
request a second beside a batch key flooding at a multiple of the fleet's
capacity, through the gateway, on real vLLM with --scheduling-policy priority.

overload_gpu.sh runs it once per contender on one fleet (the contenders
differ in the keys' classes and the gateway's caps, not in the replicas);
this prints one JSON document per cell and writes them all to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from router.bench import load
from router.bench.scenarios.overload import (
    INTERACTIVE_RATE,
    SHED_STATUSES,
    OverloadSize,
    interactive_summary,
    measure_capacity,
    recovery_s,
    run_cell,
)
from router.bench.stats import Slo, percentile, summarize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--keys", required=True, type=Path,
                        help="JSON {interactive: secret, batch: secret}")
    parser.add_argument("--replicas", default="", help="replica URLs, comma-separated "
                        "(only to measure the capacity)")
    parser.add_argument("--slots", type=int, default=64, help="max_num_seqs of each replica")
    parser.add_argument("--model", required=True)
    parser.add_argument("--capacity-file", required=True, type=Path,
                        help="JSON {capacity_per_s}: read when it exists, else measured "
                             "(each replica driven directly) and written")
    parser.add_argument("--calibrate-s", type=float, default=20.0)
    parser.add_argument("--contender", required=True)
    parser.add_argument("--floods", default="0,4")
    parser.add_argument("--flood-s", type=float, default=20.0)
    parser.add_argument("--after-s", type=float, default=10.0)
    parser.add_argument("--batch-tokens", type=int, default=256)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    own = OverloadSize(flood_s=args.flood_s, after_s=args.after_s,
                       batch_tokens=args.batch_tokens)
    interactive = load.Workload(model=args.model, prompt_words=(32, 32),
                                output_tokens=(own.interactive_tokens,) * 2, seed=1)
    batch = load.Workload(model=args.model, prompt_words=(64, 64),
                          output_tokens=(own.batch_tokens,) * 2, seed=2)
    keys = json.loads(args.keys.read_text())
    if args.capacity_file.exists():
        capacity = json.loads(args.capacity_file.read_text())["capacity_per_s"]
    else:
        capacity = measure_capacity([u for u in args.replicas.split(",") if u], batch,
                                    args.calibrate_s, args.slots)
        args.capacity_file.write_text(json.dumps({"capacity_per_s": capacity}) + "\n")
    print(json.dumps({"capacity_per_s": capacity}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    cells = []
    alone_p50 = None
    for multiple in (float(m) for m in args.floods.split(",")):
        tenant, flood = run_cell(args.gateway, keys, interactive, batch, multiple * capacity,
                                 own)
        summary = interactive_summary(tenant, own.flood_s)
        if not multiple:
            alone_p50 = summary["ttft_s"]["p50"]
        shed = [] if flood is None else [r for r in flood.records
                                         if r.status in SHED_STATUSES]
        cell = {
            "contender": args.contender, "multiple": multiple, "capacity_per_s": capacity,
            "batch_rate": multiple * capacity, "interactive": summary,
            "recovery_s": (None if not multiple or alone_p50 is None
                           else recovery_s(tenant.records, own.flood_s, alone_p50)),
            "batch": None if flood is None else summarize(flood.records, flood.duration_s,
                                                          Slo()),
            "batch_shed": len(shed),
            "shed_p99_s": percentile([r.refused_in for r in shed if r.refused_in is not None],
                                     99) if shed else None,
            "interactive_rate": INTERACTIVE_RATE,
        }
        cells.append(cell)
        ttft = summary["ttft_s"]
        print(json.dumps({"contender": args.contender, "multiple": multiple,
                          "interactive_ttft_p50_s": ttft["p50"],
                          "interactive_ttft_p99_s": ttft["p99"],
                          "recovery_s": cell["recovery_s"], "batch_shed": len(shed),
                          "batch_throughput": None if cell["batch"] is None
                          else cell["batch"]["request_throughput"]}), flush=True)
    (args.out / f"{args.contender}.json").write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
