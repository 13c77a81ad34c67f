#!/usr/bin/env bash
# How the figures in this folder were measured: the overload scenario's
# interactive key beside a batch flood at 4x the fleet's capacity, on real
# GPU vLLM with --scheduling-policy priority. Run from a checkout, as root,
# on the GPU host:
#
#   bash docs/benchmarks/overload-gpu/overload_gpu.sh install PARTS  # the bundle
#   bash docs/benchmarks/overload-gpu/overload_gpu.sh up      # two replicas on the
#        GPU, keys and classes on, the keys made before `fleet up`
#   bash docs/benchmarks/overload-gpu/overload_gpu.sh run fcfs classes  # contenders,
#        each a no-flood cell and a FLOODS (4) x capacity cell; the capacity is
#        measured before the first and kept in results/capacity.json
#   bash docs/benchmarks/overload-gpu/overload_gpu.sh run reserved
#   bash docs/benchmarks/overload-gpu/overload_gpu.sh pack    # $OUT/overload-gpu.tgz
#
# One fleet serves every contender: they differ in the keys' classes and the
# gateway's batch cap, not in the replicas (which run --scheduling-policy
# priority throughout). fcfs: both keys in one class, so each replica admits
# in arrival order, as with classes off; classes: interactive and batch;
# reserved: classes, and batch capped at the fleet's slots less an eighth.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=${PREFIX:-/opt/llm-fleet}
work=${WORK:-/root/overload-gpu}
out=${OUT:-$work/out}
slots=${SLOTS:-64}
spec="$work/spec.yaml"
mkdir -p "$work/results" "$out"
log() { echo "[$(date +%T)] $*" | tee -a "$work/overload-gpu.log" >&2; }

env_up() {
  # shellcheck disable=SC1091
  . "$prefix/env.sh"
  export PYTHONUNBUFFERED=1
}

install() {  # the bundle, then this checkout's sources over the bundle's (the code measured)
  OUT=$out bash "$here/../stability-gpu/stability_gpu.sh" install "$@"
}

write_spec() {  # BATCH_CAP: priority.max_in_flight for batch, or none
  local caps="{}"
  [ -n "${1:-}" ] && caps="{batch: $1}"
  if [ "${ENGINE:-gpu}" = gpu ]; then
    cat > "$spec" <<SPEC
engine: gpu
replicas: auto
gpu:
  replicas_per_gpu: 2
model:
  load_format: dummy
vllm:
  max_num_seqs: $slots
  max_model_len: 4096
  gpu_memory_utilization: 0.85
SPEC
  else  # a rehearsal of the phases on simulated replicas
    cat > "$spec" <<SPEC
engine: sim
replicas: 2
sim:
  defaults: {max_num_seqs: $slots, decode_step_s: 0.02}
SPEC
  fi
  cat >> "$spec" <<SPEC
auth:
  enabled: true
priority:
  enabled: true
  max_in_flight: $caps
prometheus:
  scrape_interval_s: 2
runtime_dir: $work/rt
startup_timeout_s: 540
SPEC
}

up() {
  env_up
  write_spec
  nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv > "$work/results/machine.txt" 2>&1
  python3 - "$work/keys.json" <<'PY'
import json, subprocess, sys
keys = {}
for name in ("interactive", "batch"):
    done = subprocess.run(["fleet", "keys", "add", name, "--class", name, "--spec",
                           sys.argv[1].replace("keys.json", "spec.yaml")],
                          capture_output=True, text=True, check=True)
    keys[name] = done.stdout.strip()
json.dump(keys, open(sys.argv[1], "w"))
PY
  local t0=$SECONDS
  fleet up --spec "$spec" 2>&1 | tee "$work/results/up.txt" | tail -n 5
  log "fleet up: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s"
  fleet status --spec "$spec" > "$work/results/status-up.txt" 2>&1
}

state() {  # FIELD: from state.json
  python3 -c "import json,sys; s=json.load(open('$work/rt/state.json')); print($1)"
}

contender() {  # NAME: the keys' classes and the gateway's cap for it
  case "$1" in
    fcfs) fleet keys class interactive default --spec "$spec"
          fleet keys class batch default --spec "$spec" ;;
    classes) fleet keys class interactive interactive --spec "$spec"
             fleet keys class batch batch --spec "$spec" ;;
    reserved) fleet keys class interactive interactive --spec "$spec"
              fleet keys class batch batch --spec "$spec"
              local total reserve
              total=$(( $(state "len(s['replicas'])") * slots ))
              reserve=$(( total / 8 > 4 ? total / 8 : 4 ))
              write_spec $((total - reserve))
              fleet apply --spec "$spec" ;;
    *) echo "no contender $1: fcfs, classes or reserved" >&2; return 2 ;;
  esac
}

run() {
  env_up
  local gateway model replicas
  gateway=$(state "s['gateway_url']")
  model=$(state "s['served_model_name']")
  replicas=$(state "','.join(r['url'] for r in s['replicas'])")
  for name in "$@"; do
    contender "$name" >> "$work/overload-gpu.log" 2>&1 || {
      log "contender $name: could not be set up (overload-gpu.log says why); skipped"
      continue
    }
    log "contender $name"
    python3 "$here/overload_gpu.py" --gateway "$gateway" --keys "$work/keys.json" \
      --replicas "$replicas" --slots "$slots" --model "$model" \
      --capacity-file "$work/results/capacity.json" \
      --contender "$name" --floods "${FLOODS:-0,4}" --flood-s "${FLOOD_S:-20}" \
      --after-s "${AFTER_S:-10}" --out "$work/results" 2>&1 | tee "$work/results/$name.txt"
    fleet status --spec "$spec" > "$work/results/status-$name.txt" 2>&1
  done
  pack
}

pack() {
  cp "$work"/rt/logs/controller*.log "$work/overload-gpu.log" "$spec" "$work/results/" \
    2>/dev/null
  tar -czf "$out/overload-gpu.tgz" -C "$work/results" .
  log "packed $(du -h "$out/overload-gpu.tgz" | cut -f1)"
}

phase=${1:?give a phase: install PARTS | up | run CONTENDER... | pack}
shift
"$phase" "$@"
