#!/usr/bin/env bash
# How the figures in this folder were measured: `fleet apply` rolling a
# max_num_seqs change (256 -> 128) through two GPU vLLM replicas of one GPU
# (gpu.replicas_per_gpu 2, config-only Qwen2.5-7B-Instruct-AWQ weights:
# model.load_format dummy) under 64 streaming clients, with the real gateway,
# controller and Prometheus. Run from a checkout, as root, on the GPU host:
#
#   bash docs/benchmarks/rollout-gpu/rollout_gpu.sh install PARTS_DIR  # the bundle's parts
#   bash docs/benchmarks/rollout-gpu/rollout_gpu.sh up      # fleet up (cold start)
#   bash docs/benchmarks/rollout-gpu/rollout_gpu.sh drill   # fleet drill rollout, then
#        fleet down; the report, logs and status go to $OUT/rollout-gpu.tgz
#
# Each phase fits one device command (at most 600 s). The checkout's router/
# comes before the bundle's on PYTHONPATH, so the code measured is the
# checkout's.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
work=${WORK:-/root/rollout-gpu}
prefix=${PREFIX:-/opt/llm-fleet}
out=${OUT:-$work/out}
mkdir -p "$work/results" "$out"
log() { echo "[$(date +%T)] $*" | tee -a "$work/results/rollout-gpu.log" >&2; }

env_up() {
  # shellcheck disable=SC1091
  . "$prefix/env.sh"
  export PYTHONPATH="$repo:$PYTHONPATH" PYTHONUNBUFFERED=1
}

spec() {  # MAX_NUM_SEQS: the fleet's spec with that many batch slots per replica
  cat <<SPEC
engine: gpu
replicas: auto
gpu:
  replicas_per_gpu: 2
model:
  load_format: dummy
vllm:
  max_num_seqs: $1
  max_model_len: 8192
  gpu_memory_utilization: 0.85
  extra_args: ["--num-gpu-blocks-override", "25000"]
prometheus:
  scrape_interval_s: 2
runtime_dir: $work/rt
startup_timeout_s: 540
SPEC
}

install() {
  local parts=${1:?install needs the folder holding the bundle parts}
  local t0=$SECONDS
  bash "$parts/install.sh" --parts "$parts" --prefix "$prefix" 2>&1 | tail -n 3
  log "install: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s"
}

up() {
  env_up
  spec 256 > "$work/spec.yaml"
  spec 128 > "$work/spec-128.yaml"
  nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv \
    > "$work/results/machine.txt" 2>&1
  local t0=$SECONDS
  fleet up --spec "$work/spec.yaml" > "$work/results/up.txt" 2>&1
  log "fleet up: exit $? in $((SECONDS - t0)) s"
  fleet status --spec "$work/spec.yaml" > "$work/results/status-up.txt" 2>&1
}

drill() {
  env_up
  fleet apply --dry-run --spec "$work/spec-128.yaml" > "$work/results/dry-run.txt" 2>&1
  local t0=$SECONDS
  fleet drill rollout --spec "$work/spec.yaml" --to "$work/spec-128.yaml" --streams 64 \
    --prompt-words 100 --output-tokens 256 --before "${BEFORE_S:-20}" --after "${AFTER_S:-20}" \
    --out "$work/results/report" > "$work/results/drill.txt" 2>&1
  log "fleet drill rollout: exit $? in $((SECONDS - t0)) s"
  fleet status --spec "$work/spec.yaml" > "$work/results/status-end.txt" 2>&1
  cp "$work"/rt/logs/controller.log "$work"/rt/logs/replica-*.log "$work/results/" 2>/dev/null
  fleet down --spec "$work/spec.yaml" > "$work/results/down.txt" 2>&1
  tar -czf "$out/rollout-gpu.tgz" -C "$work/results" .
  log "packed $(du -h "$out/rollout-gpu.tgz" | cut -f1)"
}

phase=${1:?give a phase: install PARTS | up | drill}
shift
"$phase" "$@"
