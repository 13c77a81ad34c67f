#!/usr/bin/env bash
# One replica per GPU on a multi-GPU host: pinning, scaling, a noisy
# neighbour and a kill drill (docs/benchmarks/gpu-multi/README.md). Run from
# a checkout, as root, on the GPU host, after the bundle's parts are there:
#
#   bash docs/benchmarks/gpu-multi/multi.sh install PARTS_DIR  # offline bundle
#   bash docs/benchmarks/gpu-multi/multi.sh up        # doctor, fleet up (replicas: auto)
#   bash docs/benchmarks/gpu-multi/multi.sh pinning   # NVML processes and utilisation per GPU
#   bash docs/benchmarks/gpu-multi/multi.sh scaling   # N through the gateway vs N x one direct
#   bash docs/benchmarks/gpu-multi/multi.sh hogcheck  # how much the hog slows replica-0 alone
#   bash docs/benchmarks/gpu-multi/multi.sh noisy     # a GPU hog on replica-0's GPU: static vs adaptive
#   bash docs/benchmarks/gpu-multi/multi.sh drill     # fleet drill kill replica-1
#   bash docs/benchmarks/gpu-multi/multi.sh down      # stop, pack results
#
# REPLICAS_PER_GPU=2 puts two replicas on each GPU (how the phases were first
# tried on a one-GPU host). Everything lands in $WORK (default /root/multi); `down` and `pack` put it in
# $OUT/results.tgz. The cluster runs under supervisord, so phases may run in
# separate commands while the host stays up.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/root/multi}
prefix=${PREFIX:-/opt/llm-fleet}
out=${OUT:-$work/out}
levels=${LEVELS:-16 64 128 256}
duration=${DURATION:-20}
mkdir -p "$work" "$out"
log() { echo "[$(date +%T)] $*" | tee -a "$work/multi.log" >&2; }
spec="$work/spec.yaml"

state() {  # state EXPR: a value from the running cluster's state.json
  python3 -c "import json, sys; s = json.load(open('$work/rt/state.json')); print(eval(sys.argv[1]))" "$1"
}

env_up() {
  # shellcheck disable=SC1091
  . "$prefix/env.sh"
  export PYTHONUNBUFFERED=1
}

bench() {  # bench URL CONCURRENCY NAME SEED: closed loop, 100-word prompts, 256 tokens; a
           # seed of its own per run, so no run finds another's prompts in the prefix cache
  fleet bench run --url "$1" --model "$(state "s['served_model_name']")" --concurrency "$2" \
    --duration "$duration" --prompt-words 100 --output-tokens 256 --seed "$4" \
    --out "$work/bench/$3" 2>&1 | tail -n 1
}

throughput() {  # throughput NAME: output tokens/s of a bench report
  python3 -c "import json; r = json.load(open('$work/bench/$1/result.json'))['results'][0]; print(round(r['summary']['output_token_throughput']))"
}

install() {
  local parts=${1:?install needs the folder holding the bundle parts}
  local t0=$SECONDS
  bash "$parts/install.sh" --parts "$parts" --prefix "$prefix" 2>&1 | tee -a "$work/multi.log"
  log "install: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s"
}

up() {
  env_up
  cat > "$spec" <<SPEC
engine: gpu
replicas: auto
gpu:
  replicas_per_gpu: ${REPLICAS_PER_GPU:-1}
model:
  load_format: dummy
vllm:
  max_num_seqs: 256
  max_model_len: 8192
  gpu_memory_utilization: 0.85
prometheus:
  scrape_interval_s: 2
runtime_dir: $work/rt
startup_timeout_s: 540
SPEC
  { nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv
    nvidia-smi topo -m
  } 2>&1 | tee "$work/machine.txt"
  fleet doctor --spec "$spec" 2>&1 | tee "$work/doctor.txt"
  local t0=$SECONDS
  fleet up --spec "$spec" 2>&1 | tee "$work/up.txt"
  log "fleet up: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s"
}

pinning() {
  env_up
  (cd "$work" && python3 "$here/pinning.py" "$work/rt" "http://127.0.0.1:${EXPORTER_PORT:-9400}" \
     "$(state "s['served_model_name']")" "${PIN_SECONDS:-20}") | tee "$work/pinning.md"
  log "pinning done"
}

scaling() {  # one replica direct at every level, then N at N x the peak level via the gateway
  env_up
  local n peak=0 best=0 tps
  n=$(state "len(s['replicas'])")
  for c in $levels; do
    bench "$(state "s['replicas'][0]['url']")" "$c" "direct-c$c" "$c"
    tps=$(throughput "direct-c$c")
    if [ "$tps" -gt "$best" ]; then best=$tps; peak=$c; fi
  done
  log "one replica peaks at $best output tok/s with $peak clients"
  bench "$(state "s['gateway_url']")" $((n * peak)) "gateway-n$n-c$((n * peak))" 1
  tps=$(throughput "gateway-n$n-c$((n * peak))")
  python3 -c "print(f'scaling: {$n} replicas through the gateway: {$tps} tok/s = {$tps / ($n * $best):.3f} x {$n} x one replica direct ({$best} tok/s at {$peak} clients)')" \
    | tee "$work/scaling.txt"
}

hogcheck() {  # replica-0 direct at 64 clients, without and then with the hog on its GPU
  env_up
  local url uuid
  url=$(state "s['replicas'][0]['url']")
  uuid=$(state "s['replicas'][0]['gpu_uuid']")
  bench "$url" 64 "hogcheck-quiet" 2
  CUDA_VISIBLE_DEVICES=$uuid python3 "$here/hog.py" --seconds $((duration + 15)) \
    > "$work/hog.txt" 2>&1 &
  sleep 5
  bench "$url" 64 "hogcheck-hog" 3
  wait
  cat "$work/hog.txt"
  python3 -c "q, h = $(throughput hogcheck-quiet), $(throughput hogcheck-hog); print(f'hog: replica-0 direct at 64 clients: {q} tok/s alone, {h} with the hog ({h / q:.2f} x)')" \
    | tee "$work/hogcheck.txt"
}

noisy() {  # Poisson at RATE (default: 80 % of the fleet's capacity from `scaling`)
  env_up
  local url model uuid rate names
  url=$(state "s['gateway_url']")
  model=$(state "s['served_model_name']")
  uuid=$(state "s['replicas'][0]['gpu_uuid']")
  names=$(state "' '.join(r['name'] for r in s['replicas'])")
  rate=${RATE:?set RATE to about 80 % of the fleet\'s capacity in requests/s (see scaling.txt)}
  cd "$work" || exit 1
  for name in $names; do fleet pin "$name" 50 --for 900 --spec "$spec" >/dev/null; done
  python3 "$here/noisy.py" "$url" "$model" "$rate" "$uuid" replica-0 noisy-static | tee -a noisy.md
  for name in $names; do fleet pin "$name" --clear --spec "$spec" >/dev/null; done
  sleep 60  # the pins' weights settle back before the adaptive run
  python3 "$here/noisy.py" "$url" "$model" "$rate" "$uuid" replica-0 noisy-adaptive | tee -a noisy.md
  log "noisy neighbour done"
}

drill() {
  env_up
  fleet drill kill replica-1 --spec "$spec" --load 20 --before 10 --after 15 \
    --recover-timeout 300 --out "$work/drill-kill" 2>&1 | tail -n 25
  log "drill done"
}

down() {
  env_up
  fleet status --spec "$spec" > "$work/status-end.txt" 2>&1
  fleet down --spec "$spec" 2>&1 | tail -n 3
  pack
}

pack() {
  mkdir -p "$work/logs"
  cp "$work"/rt/logs/*.log "$work/logs/" 2>/dev/null
  tar -czf "$out/results.tgz" -C "$work" --exclude=./rt --exclude=./out .
  cp "$work/multi.log" "$out/" 2>/dev/null
  log "packed $(du -h "$out/results.tgz" | cut -f1) into $out/results.tgz"
}

phase=${1:?give a phase: install PARTS | up | pinning | scaling | hogcheck | noisy | drill | down | pack}
shift
"$phase" "$@"
