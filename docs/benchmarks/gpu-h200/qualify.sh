#!/usr/bin/env bash
# How the figures in this folder were measured: llm-fleet on one NVIDIA H200,
# installed from an offline bundle, two GPU vLLM replicas pinned to the one
# GPU (gpu.replicas_per_gpu: 2) with config-only Qwen2.5-7B-Instruct-AWQ
# weights (model.load_format: dummy), behind the real gateway, controller,
# Prometheus and exporters. Run from a checkout, as root, on the GPU host:
#
#   bash docs/benchmarks/gpu-h200/qualify.sh install PARTS_DIR   # the bundle's parts
#   bash docs/benchmarks/gpu-h200/qualify.sh up        # doctor, fleet up (cold start)
#   bash docs/benchmarks/gpu-h200/qualify.sh gateway   # client checks, first burst, bench
#   bash docs/benchmarks/gpu-h200/qualify.sh direct    # bench one replica direct
#   bash docs/benchmarks/gpu-h200/qualify.sh drill     # fleet drill kill replica-1
#   REPLICAS_PER_GPU=1 ... up, then compare              # gateway vs direct, one replica
#   bash docs/benchmarks/gpu-h200/qualify.sh down      # stop, pack results
#   bash docs/benchmarks/gpu-h200/qualify.sh pack      # pack what exists so far
#
# Everything lands in $WORK (default /root/qualify); `down` packs it into
# $OUT/results.tgz. Phases may run in separate commands while the host stays up:
# the cluster runs under supervisord, which outlives the command that started it.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/root/qualify}
prefix=${PREFIX:-/opt/llm-fleet}
out=${OUT:-$work/out}
levels=${LEVELS:-1 16 64 256}
duration=${DURATION:-15}
mkdir -p "$work" "$out"
log() { echo "[$(date +%T)] $*" | tee -a "$work/qualify.log" >&2; }
spec="$work/spec.yaml"

state() {  # state KEY: a value from the running cluster's state.json
  python3 -c "import json, sys; s = json.load(open('$work/rt/state.json')); print(eval(sys.argv[1]))" "$1"
}

env_up() {
  # shellcheck disable=SC1091
  . "$prefix/env.sh"
  export PYTHONUNBUFFERED=1
}

install() {
  local parts=${1:?install needs the folder holding the bundle parts}
  local t0=$SECONDS
  bash "$parts/install.sh" --parts "$parts" --prefix "$prefix" 2>&1 | tee -a "$work/qualify.log"
  log "install: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s"
}

up() {
  env_up
  cat > "$spec" <<SPEC
engine: gpu
replicas: auto
gpu:
  replicas_per_gpu: ${REPLICAS_PER_GPU:-2}
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
  { nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  } 2>&1 | tee -a "$work/machine.txt"
  fleet doctor --spec "$spec" 2>&1 | tee "$work/doctor.txt"
  local t0=$SECONDS
  fleet up --spec "$spec" 2>&1 | tee "$work/up.txt"
  log "fleet up: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s"
  nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv | tee "$work/pinning.txt"
  fleet status --spec "$spec" | tee -a "$work/pinning.txt"
}

gateway() {
  env_up
  local url model controller
  url=$(state "s['gateway_url']")
  model=$(state "s['served_model_name']")
  controller=$(state "s['controller_url']")
  python3 "$here/client_checks.py" "$url" "$model" 2>&1 | tee "$work/client-checks.txt"
  curl -s "$controller/metrics" | grep -i warm > "$work/warmup.metrics" || true
  for c in $levels; do
    if [ "$c" = 256 ]; then  # the exporter and vLLM while the GPU is busiest
      (sleep $((duration / 2)); curl -s "http://127.0.0.1:${EXPORTER_PORT:-9400}/metrics" > "$work/gpu-exporter-loaded.metrics"
       nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw,temperature.gpu,clocks.sm \
         --format=csv > "$work/nvidia-smi-loaded.csv") &
    fi
    fleet bench run --url "$url" --model "$model" --concurrency "$c" --duration "$duration" \
      --prompt-words 100 --output-tokens 256 --out "$work/bench/gateway-c$c" 2>&1 | tail -n 3
    wait
  done
  curl -s "$(state "s['replicas'][0]['url']")/metrics" > "$work/vllm-gpu.metrics"
  log "gateway benches done"
}

direct() {
  env_up
  local model replica
  model=$(state "s['served_model_name']")
  replica=$(state "s['replicas'][0]['url']")
  for c in $levels; do
    fleet bench run --url "$replica" --model "$model" --concurrency "$c" \
      --duration "$duration" --prompt-words 100 --output-tokens 256 \
      --out "$work/bench/direct-c$c" 2>&1 | tail -n 3
  done
  log "direct benches done"
}

compare() {  # the gateway against replica-0 direct, alternating, each run with its own
             # prompts (seed) so neither finds the other's prompts in the prefix cache
  env_up
  local url model replica
  url=$(state "s['gateway_url']")
  model=$(state "s['served_model_name']")
  replica=$(state "s['replicas'][0]['url']")
  for c in $levels; do
    for target in gateway direct; do
      local where=$url seed=$((c * 2))
      [ $target = direct ] && where=$replica && seed=$((c * 2 + 1))
      fleet bench run --url "$where" --model "$model" --concurrency "$c" --seed "$seed" \
        --duration "$duration" --prompt-words 100 --output-tokens 256 \
        --out "$work/bench/cmp-$target-c$c" 2>&1 | tail -n 1
    done
  done
  log "comparison done"
}

drill() {
  env_up
  fleet drill kill replica-1 --spec "$spec" --load 20 --before 10 --after 15 \
    --recover-timeout 300 --out "$work/drill-kill-gpu" 2>&1 | tail -n 25
  log "drill done"
}

down() {
  env_up
  fleet status --spec "$spec" > "$work/status-end.txt" 2>&1
  fleet down --spec "$spec" 2>&1 | tail -n 3
  pack
}

pack() {  # what exists so far, into $OUT/results.tgz (safe to run after any phase)
  mkdir -p "$work/logs"
  cp "$work"/rt/logs/*.log "$work/logs/" 2>/dev/null
  tar -czf "$out/results.tgz" -C "$work" --exclude=./rt --exclude=./out .
  cp "$work/qualify.log" "$out/" 2>/dev/null
  log "packed $(du -h "$out/results.tgz" | cut -f1) into $out/results.tgz"
}

phase=${1:?give a phase: install PARTS | up | gateway | direct | compare | drill | down | pack}
shift
"$phase" "$@"
