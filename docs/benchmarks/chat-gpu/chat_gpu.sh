#!/usr/bin/env bash
# How the figures in this folder were measured: the chat scenario's
# conversations on two GPU vLLM replicas (both on one GPU when the host has
# one: gpu.replicas_per_gpu 2), config-only Qwen2.5-7B-Instruct-AWQ weights
# (model.load_format: dummy), the real gateway with `affinity: session`,
# controller and Prometheus. Run from a checkout, as root, on the GPU host:
#
#   bash docs/benchmarks/chat-gpu/chat_gpu.sh install PARTS_DIR   # the bundle's parts
#   bash docs/benchmarks/chat-gpu/chat_gpu.sh up      # fleet up (cold start)
#   bash docs/benchmarks/chat-gpu/chat_gpu.sh chat    # the rows of chat_gpu.py
#   bash docs/benchmarks/chat-gpu/chat_gpu.sh down    # stop, pack $OUT/results.tgz
#
# ROWS, CONVERSATIONS and CONCURRENT pass to chat_gpu.py; KV_BLOCKS caps each
# replica's KV cache (16 tokens a block) so that, as in the simulated
# scenario, one replica's cache cannot hold every conversation; PACE, a YAML
# mapping, sets controller.pace (for example '{deadband: 1.5}'); VLLM_REPLICAS,
# a YAML list, sets vllm.replicas (for example '[{}, {max_num_seqs: 64}]').
# In the chat phase STATIC=1 pins every replica at weight 50 for the rows
# (static least_conn, the controller's weights out of play) and TAG names the
# rows' folder; the phase ends by listing the controller's reloads so far.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/root/chat-gpu}
prefix=${PREFIX:-/opt/llm-fleet}
out=${OUT:-$work/out}
mkdir -p "$work" "$out"
log() { echo "[$(date +%T)] $*" | tee -a "$work/chat-gpu.log" >&2; }
spec="$work/spec.yaml"

env_up() {
  # shellcheck disable=SC1091
  . "$prefix/env.sh"
  export PYTHONUNBUFFERED=1
}

install() {
  local parts=${1:?install needs the folder holding the bundle parts}
  local t0=$SECONDS
  bash "$parts/install.sh" --parts "$parts" --prefix "$prefix" 2>&1 | tail -n 5 | tee -a "$work/chat-gpu.log"
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
  extra_args: ["--num-gpu-blocks-override", "${KV_BLOCKS:-25000}"]
  replicas: ${VLLM_REPLICAS:-[]}
gateway:
  affinity: session
controller:
  pace: ${PACE:-{\}}
prometheus:
  scrape_interval_s: 2
runtime_dir: $work/rt
startup_timeout_s: 540
SPEC
  nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv > "$work/machine.txt" 2>&1
  local t0=$SECONDS
  fleet up --spec "$spec" 2>&1 | tee "$work/up.txt" | tail -n 5
  log "fleet up: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s"
  fleet status --spec "$spec" > "$work/status-up.txt" 2>&1
}

replica_names() {
  python3 -c "import json; print(' '.join(r['name'] for r in json.load(open('$work/rt/state.json'))['replicas']))"
}

chat() {
  env_up
  local rows_out="$out/rows${TAG:+-$TAG}"
  if [ -n "${STATIC:-}" ]; then
    for name in $(replica_names); do fleet pin --spec "$spec" --for 3600 "$name" 50 >/dev/null; done
    log "static: every replica pinned at 50"
  fi
  python3 "$here/chat_gpu.py" --state "$work/rt/state.json" --out "$rows_out" \
    --rows "${ROWS:-least_conn,affinity}" --conversations "${CONVERSATIONS:-400}" \
    --concurrent "${CONCURRENT:-96}" 2>&1 | tee "$work/chat${TAG:+-$TAG}.txt"
  log "chat rows done"
  if [ -n "${STATIC:-}" ]; then
    for name in $(replica_names); do fleet pin --spec "$spec" --clear "$name" >/dev/null; done
  fi
  fleet status --spec "$spec" > "$rows_out/status.txt" 2>&1
  grep -h "reload applied" "$work"/rt/logs/controller*.log > "$rows_out/reloads.txt" 2>/dev/null
  log "controller reloads so far: $(wc -l < "$rows_out/reloads.txt")"
  curl -s "$(python3 -c "import json; print(json.load(open('$work/rt/state.json'))['replicas'][0]['url'])")/metrics" \
    > "$work/vllm-replica-0.metrics"
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
  cp "$work/chat-gpu.log" "$out/" 2>/dev/null
  log "packed $(du -h "$out/results.tgz" | cut -f1) into $out/results.tgz"
}

phase=${1:?give a phase: install PARTS | up | chat | down | pack}
shift
"$phase" "$@"
