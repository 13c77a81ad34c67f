#!/usr/bin/env bash
# How the figures in this folder were measured: does the controller hold its
# weights still on two equal GPU vLLM replicas under steady load, and what
# does it do for a pair whose second replica has a quarter of the batch slots?
# Run from a checkout, as root, on the GPU host, after chat_gpu.sh's install:
#
#   bash docs/benchmarks/stability-gpu/stability_gpu.sh equal      # fleet up, then
#        128 streams for STEADY_S (300) s without a session key
#   bash docs/benchmarks/stability-gpu/stability_gpu.sh session    # on that fleet, the
#        chat conversations with a session key each (gateway.affinity: session)
#   bash docs/benchmarks/stability-gpu/stability_gpu.sh up         # fleet up alone, and
#   bash docs/benchmarks/stability-gpu/stability_gpu.sh steady     # the 128 streams on it
#        (equal = up + steady, for a lease where both fit one command)
#   bash docs/benchmarks/stability-gpu/stability_gpu.sh unequal    # replica-1 at
#        max_num_seqs 64 against 256: 256 streams for ROW_S (120) s with every
#        weight pinned at 50 (static least_conn), then with the controller
#   bash docs/benchmarks/stability-gpu/stability_gpu.sh install PARTS  # the bundle,
#        then this checkout's sources over the bundle's (the code measured)
#   bash docs/benchmarks/stability-gpu/stability_gpu.sh slow       # on the equal
#        fleet: `fleet drill slow replica-1` under Poisson load (DRILL_RATE, 12/s),
#        then the same drill with --static (weights pinned: static least_conn;
#        STATIC_TOO=0 leaves it out), each with a pace trace beside it
#   bash docs/benchmarks/stability-gpu/stability_gpu.sh eager      # replica-1 with
#        --enforce-eager (no CUDA graphs: slower steps, same slots): 128 streams
#        for ROW_S s pinned at 50, then with the controller
#
# Each phase fits one device command (at most 600 s) and leaves one archive in $OUT (the reports, the controller's log,
# fleet status, the start and end of each window in unix seconds, and a pace
# trace of each load: `fleet bench trace`, replayable in tests).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
chat_sh="$here/../chat-gpu/chat_gpu.sh"
prefix=${PREFIX:-/opt/llm-fleet}
out=${OUT:?OUT names the folder the archive goes to}
if [ "${1:-}" != install ]; then
  # shellcheck disable=SC1091
  . "$prefix/env.sh"
fi
export PYTHONUNBUFFERED=1

stamp() { echo "$1 $(date +%s.%N)" >> "$work/windows.txt"; }

bench() {  # NAME CONCURRENCY SECONDS: the load, and the pace inputs recorded beside it
  stamp "$1-start"
  fleet bench trace --spec "$work/spec.yaml" --duration "$3" \
    --out "$work/results/trace-$1.jsonl" > "$work/results/trace-$1.txt" 2>&1 &
  fleet bench run --spec "$work/spec.yaml" --concurrency "$2" --duration "$3" \
    --prompt-words 100 --output-tokens 256 --out "$work/results/$1" 2>&1 | tail -n 4
  wait
  stamp "$1-end"
}

finish() {
  fleet status --spec "$work/spec.yaml" > "$work/results/status-end.txt" 2>&1
  cp "$work"/rt/logs/controller*.log "$work/windows.txt" "$work/spec.yaml" "$work/results/" 2>/dev/null
  tar -czf "$out/$1.tgz" -C "$work/results" .
}

up() {
  work=/root/stability-equal
  mkdir -p "$work/results"
  WORK=$work bash "$chat_sh" up
}

steady() {
  work=/root/stability-equal
  mkdir -p "$work/results"
  bench steady-128 128 "${STEADY_S:-300}"
  finish steady
}

equal() {
  up
  steady
}

session() {
  work=/root/stability-equal
  stamp "session-start"
  WORK=$work OUT=$work/results ROWS=affinity CONCURRENT=128 TAG=session bash "$chat_sh" chat \
    | tail -n 6
  stamp "session-end"
  finish session
}

install() {
  local parts=${1:?install needs the folder holding the bundle parts}
  bash "$chat_sh" install "$parts"
  # The bundle's sources are the ones it was built from; measure this checkout's.
  for dir in router nginx prometheus grafana deploy; do
    rm -rf "${prefix:?}/llm-fleet/$dir"
    cp -r "$repo/$dir" "$prefix/llm-fleet/$dir"
  done
  (cd "$repo" && git rev-parse HEAD 2>/dev/null) > "$prefix/llm-fleet/COMMIT"
}

rows() {  # TAG STREAMS: static least_conn (weights pinned at 50), then the controller
  local names
  names=$(python3 -c "import json; print(' '.join(r['name'] for r in json.load(open('$work/rt/state.json'))['replicas']))")
  for name in $names; do fleet pin --spec "$work/spec.yaml" --for 3600 "$name" 50 >/dev/null; done
  bench "static-$1" "$2" "${ROW_S:-120}"
  for name in $names; do fleet pin --spec "$work/spec.yaml" --clear "$name" >/dev/null; done
  bench "adaptive-$1" "$2" "${ROW_S:-120}"
}

unequal_pair() {  # NAME REPLICAS STREAMS: a fresh fleet with vllm.replicas REPLICAS, both rows
  WORK=/root/stability-equal bash "$chat_sh" down >/dev/null 2>&1
  work=/root/stability-$1
  mkdir -p "$work/results"
  WORK=$work VLLM_REPLICAS=$2 bash "$chat_sh" up
  rows "$3" "$3"
  finish "$1"
}

unequal() {
  unequal_pair unequal '[{}, {max_num_seqs: 64}]' 256
}

slow() {  # the controller's drill, then the same with every weight pinned (static least_conn)
  work=/root/stability-equal
  mkdir -p "$work/results"
  local static variants=("" --static)
  [ "${STATIC_TOO:-1}" = 1 ] || variants=("")
  for static in "${variants[@]}"; do
    stamp "slow${static}-start"
    fleet bench trace --spec "$work/spec.yaml" --duration $((${BEFORE_S:-40} + ${HOLD_S:-60} + 30)) \
      --out "$work/results/trace-slow${static/--/-}.jsonl" > /dev/null 2>&1 &
    fleet drill slow replica-1 --spec "$work/spec.yaml" --load "${DRILL_RATE:-12}" $static \
      --output-tokens 128-256 --before "${BEFORE_S:-40}" --hold "${HOLD_S:-60}" --after 30 \
      --out "$work/results/drill-slow${static/--/-}" 2>&1 | tail -n 4
    wait
    stamp "slow${static}-end"
    fleet status --spec "$work/spec.yaml" > "$work/results/status-after-slow${static/--/-}.txt" 2>&1
  done
  finish slow
}

eager() {
  unequal_pair eager '[{}, {extra_args: [--enforce-eager]}]' 128
}

phase=${1:?give a phase: install | up | steady | equal | session | slow | unequal | eager}
shift
"$phase" "$@"
