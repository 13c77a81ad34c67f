#!/usr/bin/env bash
# Install what llm-fleet needs on a Debian/Ubuntu machine, skipping what is
# already there:
#   - system packages (apt-get): nginx, Prometheus (with promtool), the nginx
#     exporter and mtail (gateway metrics), logrotate (nginx's logs), nginx's njs module
#     (affinity keys), keepalived and curl (a gateway pair); with --dev also
#     docker-compose and systemd (systemd-analyze), which the tests validate the
#     production files with, and chromium, which the console's browser tests
#     drive
#   - a virtual environment at .venv with llm-fleet and the vLLM build that
#     fits the machine: `gpu` when nvidia-smi lists a GPU, `cpu` otherwise.
# Usage: deploy/setup.sh [--dev] [--engine cpu|gpu]
set -euo pipefail

cd "$(dirname "$0")/.."
dev=0
engine=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --engine) engine="${2:?--engine needs cpu or gpu}"; shift ;;
    *) echo "error: unknown argument $1" >&2
       echo "hint: deploy/setup.sh [--dev] [--engine cpu|gpu]" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages --------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-nginx-exporter >/dev/null 2>&1 || need+=(prometheus-nginx-exporter)
command -v mtail >/dev/null 2>&1 || need+=(mtail)
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || need+=(logrotate)
# nginx's JavaScript module: reads affinity keys from request bodies (gateway.affinity).
[ -f /usr/lib/nginx/modules/ngx_http_js_module.so ] || need+=(libnginx-mod-http-js)
# A gateway pair (ha.enabled): keepalived holds the virtual IP, curl is its health check.
command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || need+=(keepalived)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ "$dev" -eq 1 ]; then
  # What the test suite checks the production files with (no Docker engine:
  # docker-compose only parses and validates).
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
  # The njs interpreter runs nginx/affinity.js's table tests (tests/unit/test_affinity.py).
  command -v njs >/dev/null 2>&1 || need+=(njs)
  # The web console's browser tests drive Debian's Chromium with Playwright.
  [ -x /usr/bin/chromium ] || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: need root to install ${need[*]}" >&2;
      echo "hint: run as root or install sudo" >&2; exit 3; }
    sudo="sudo"
  fi
  say "installing system packages: ${need[*]}"
  $sudo apt-get update -qq
  # policy-rc.d keeps Debian from starting the system-wide nginx, Prometheus
  # and exporter services on ports our cluster wants.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
fi

# --- Python environment -----------------------------------------------------
if [ -z "$engine" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    engine=gpu
  else
    engine=cpu
  fi
fi
extras="$engine"
[ "$dev" -eq 1 ] && extras="$extras,dev"

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($python --version)"
  $python -m venv .venv
fi
stamp=".venv/.llm-fleet-installed-${extras//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing llm-fleet[$extras] into .venv (first time takes a few minutes)"
  log=.venv/pip-install.log
  if ! .venv/bin/python -m pip install -e ".[$extras]" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "error: pip could not install llm-fleet[$extras]; the full log is $log" >&2
    if grep -q "No space left on device" "$log"; then
      # The CPU build with its torch takes about 4 GB in .venv, and pip
      # unpacks wheels under TMPDIR first.
      echo "hint: the disk is full: free a few GB where .venv and TMPDIR live" \
           "(df -h . \"\${TMPDIR:-/tmp}\"), then run the command again" >&2
    else
      echo "hint: check that this machine reaches PyPI, then run the command again" >&2
    fi
    exit 4
  fi
  if [ "$engine" = cpu ]; then
    # The registry's torchvision/torchaudio/torchcodec are CUDA builds that
    # break `import transformers` against the CPU torch.
    .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
  touch "$stamp"
else
  say "llm-fleet[$extras] already installed in .venv"
fi
