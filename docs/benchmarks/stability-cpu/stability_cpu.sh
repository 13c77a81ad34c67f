#!/usr/bin/env bash
# How the figures in this folder were measured: two equal CPU vLLM replicas
# (the e2e suite's engine and model) under steady streamed load through the
# gateway, the controller with its defaults. Counts the controller's applied
# reloads and records the pace probes' inputs beside the load (a trace that
# tests/unit/test_pace_trace.py replays). Run from a checkout:
#
#   bash docs/benchmarks/stability-cpu/stability_cpu.sh [OUT]   # default /tmp/stability-cpu
#
# CONCURRENCY (4) clients for DURATION (300) s; the fleet is brought up and
# down by the script, on the ports of the spec it writes (PORT_BASE, 18000).
set -uo pipefail
out=${1:-/tmp/stability-cpu}
fleet=${FLEET:-.venv/bin/fleet}
base=${PORT_BASE:-18000}
mkdir -p "$out"
spec="$out/spec.yaml"
cat > "$spec" <<SPEC
engine: cpu
replicas: 2
runtime_dir: $out/rt
gateway: {port: $base, status_port: $((base + 1))}
gateway_metrics: {nginx_exporter_port: $((base + 2)), log_exporter_port: $((base + 3))}
controller: {port: $((base + 4))}
prometheus: {port: $((base + 5))}
gpu_exporter: {port: $((base + 6))}
ports: {replica_base: $((base + 10))}
SPEC
"$fleet" model prepare --engine cpu > /dev/null
t0=$SECONDS
"$fleet" up --spec "$spec" 2>&1 | tail -n 2
echo "fleet up: $((SECONDS - t0)) s"
"$fleet" bench trace --spec "$spec" --duration "${DURATION:-300}" --out "$out/trace.jsonl" \
  > "$out/trace.txt" 2>&1 &
"$fleet" bench run --spec "$spec" --concurrency "${CONCURRENCY:-4}" --duration "${DURATION:-300}" \
  --prompt-words 20-60 --output-tokens 32-64 --out "$out/steady" 2>&1 | tail -n 4
wait
"$fleet" status --spec "$spec" > "$out/status-end.txt" 2>&1
cp "$out/rt/logs/controller.log" "$out/"
echo "reloads applied: $(grep -c 'reload applied' "$out/controller.log")"
"$fleet" down --spec "$spec" 2>&1 | tail -n 1
