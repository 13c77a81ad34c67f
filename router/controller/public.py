"""The read-only fleet summary the gateway serves at /fleet/status.

It is built from the admin API's /status but leaves out what a browser has
no business seeing: replica addresses, probe error texts (which name
internal ports) and override expiry details. No token is needed, because it
holds nothing that changes the fleet; the gateway puts the API key check in
front of it when keys are enabled.
"""

from __future__ import annotations

from typing import Any

from router.render.dashboards import DASHBOARDS


def _signal(replica: dict[str, Any], name: str) -> float | None:
    sample = replica["signals"].get(name)
    return None if sample is None else sample["value"]


def public_status(status: dict[str, Any], grafana_url: str | None) -> dict[str, Any]:
    replicas = [{
        "name": r["name"],
        "device": r["device"],
        "healthy": r["health"]["healthy"],
        "in_rotation": r["in_rotation"],
        "weight": r["weight"],
        "desired_weight": r["desired_weight"],
        "reason": r["reason"],
        "drained": r["override"]["drained"],
        "pinned_weight": r["override"]["pinned_weight"],
        "waiting": _signal(r, "waiting"),
        "running": _signal(r, "running"),
        "ttft_p99_s": _signal(r, "ttft_p99"),
        "e2e_p99_s": _signal(r, "e2e_p99"),
        "kv_usage": _signal(r, "kv_usage"),
        "gpu_util": _signal(r, "gpu_util"),
        "prefix_hit_rate": _signal(r, "prefix_hit_rate"),
        "shedding": r.get("shedding") is not None,
    } for r in status["replicas"]]
    last = status["last_decision"]
    return {
        "replicas": replicas,
        "prometheus_ok": status["prometheus"]["ok"],
        "last_decision": None if last is None else {
            "at": last["at"], "trigger": last["trigger"], "applied": last["applied"],
            "why": last["why"]},
        "dashboards": [] if grafana_url is None else [
            {"title": d.title, "url": f"{grafana_url}/d/{d.uid}"} for d in DASHBOARDS],
    }
