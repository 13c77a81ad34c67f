#!/usr/bin/env bash
# Installs the gateways `fleet bench scenario` compares llm-fleet with:
# vLLM's router (PyPI vllm-router, Rust) and LiteLLM's proxy (PyPI
# litellm[proxy]). They get a virtualenv of their own: their pins clash with
# vLLM's, and the serving environment must not change for a benchmark.
# Versions are pinned so published results can be repeated.
set -euo pipefail

VLLM_ROUTER_VERSION=0.1.17
LITELLM_VERSION=1.106.2
PEERS_DIR="${FLEET_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-fleet/peers}"
PYTHON="${PYTHON:-python3.11}"

installed="$("$PEERS_DIR/bin/python" -m pip show vllm-router litellm 2>/dev/null || true)"
if grep -qx "Version: $VLLM_ROUTER_VERSION" <<<"$installed" \
   && grep -qx "Version: $LITELLM_VERSION" <<<"$installed"; then
    echo "peers already installed in $PEERS_DIR"
    exit 0
fi
command -v "$PYTHON" >/dev/null || {
    echo "error: $PYTHON not found; hint: install Python 3.11 or set PYTHON=/path/to/python3" >&2
    exit 1
}
echo "installing vllm-router $VLLM_ROUTER_VERSION and litellm[proxy] $LITELLM_VERSION into $PEERS_DIR"
"$PYTHON" -m venv "$PEERS_DIR"
log="$PEERS_DIR/pip-install.log"
if ! "$PEERS_DIR/bin/pip" install --disable-pip-version-check \
        "vllm-router==$VLLM_ROUTER_VERSION" "litellm[proxy]==$LITELLM_VERSION" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "error: installing the peers failed; hint: see $log" >&2
    exit 1
fi
echo "peers installed: $PEERS_DIR/bin/vllm-router, $PEERS_DIR/bin/litellm"
