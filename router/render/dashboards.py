"""The Grafana dashboards of llm-fleet, as data.

The JSON files under ``grafana/dashboards/`` are generated from this module
(``python -m router.render.dashboards``) and a test proves the committed files equal
what it builds, so layout rules (a 24-column grid, one datasource, a unit on
every panel) hold by construction instead of by review.

Every target reads series this project produces: vLLM's (job ``vllm``), the
gateway's (jobs ``gateway`` and ``gateway_log``), the controller's and the
GPU exporter's, joined on the ``replica`` label. Recording rules from
``prometheus/recording.rules.yml`` feed the headline figures, so a live
validation of the panels also proves those rules.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router import REPO_ROOT

# The uid of the datasource that grafana/provisioning/datasources declares.
DATASOURCE_UID = "llm-fleet-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
DASHBOARD_DIR = REPO_ROOT / "grafana" / "dashboards"
GRID_COLUMNS = 24
SCHEMA_VERSION = 39
TAG = "llm-fleet"

# Panels filter on the dashboard's replica variable; "All" matches any.
REPLICA = 'replica=~"$replica"'
RATE = "$__rate_interval"
# What the gateway answers a request it sheds: a cap or key limit, or saturation.
SHED_STATUSES = "429|503"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[Target, ...]
    description: str
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    # For stat panels: the value from which the figure turns red.
    red_from: float | None = None
    stack: bool = False
    minimum: float | None = 0


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    replica_variable: bool = False
    reload_annotations: bool = False


def _target(ref: int, target: Target) -> dict[str, Any]:
    return {
        "refId": chr(ord("A") + ref),
        "datasource": DATASOURCE,
        "expr": target.expr,
        "legendFormat": target.legend or "__auto",
        "range": True,
        "instant": False,
        "editorMode": "code",
    }


def _panel_json(panel_id: int, panel: Panel, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.minimum is not None:
        defaults["min"] = panel.minimum
    options: dict[str, Any]
    if panel.kind == "stat":
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        if panel.red_from is not None:
            steps.append({"color": "red", "value": panel.red_from})
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
        defaults["color"] = {"mode": "thresholds"}
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
        }
    else:
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stack else 5,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        defaults["color"] = {"mode": "palette-classic"}
        options = {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                       "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [_target(i, t) for i, t in enumerate(panel.targets)],
    }


def build(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard's JSON model, panels laid out left to right, row by row."""
    panels: list[dict[str, Any]] = []
    panel_id = 0
    y = 0
    for row in dashboard.rows:
        panel_id += 1
        panels.append({"id": panel_id, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y}, "panels": []})
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > GRID_COLUMNS:
                x, y, line_height = 0, y + line_height, 0
            panel_id += 1
            panels.append(_panel_json(panel_id, panel, x, y))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    templating: list[dict[str, Any]] = []
    if dashboard.replica_variable:
        query = 'label_values(vllm:num_requests_running{job="vllm"}, replica)'
        templating.append({
            "name": "replica",
            "label": "Replica",
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": query, "refId": "replicas"},
            "definition": query,
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".+",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        })
    annotations: list[dict[str, Any]] = [{
        "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts", "type": "dashboard",
    }]
    if dashboard.reload_annotations:
        annotations.append({
            "name": "Gateway reloads",
            "datasource": DATASOURCE,
            "enable": True,
            "iconColor": "orange",
            "expr": RELOAD_ANNOTATION,
            "step": "10s",
            "titleFormat": "gateway reload",
            "textFormat": "the controller applied new weights or rotation",
        })
    return {
        "id": None,
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": [TAG],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "links": [{"title": "llm-fleet", "type": "dashboards", "tags": [TAG],
                   "asDropdown": True, "includeVars": False, "keepTime": True}],
        "annotations": {"list": annotations},
        "templating": {"list": templating},
        "panels": panels,
    }


# A point wherever the controller's last successful reload time moved.
RELOAD_ANNOTATION = (
    f"changes(fleet_controller_last_successful_reload_timestamp_seconds{{job=\"controller\"}}"
    f"[{RATE}]) > 0"
)


def _quantiles(histogram: str, selector: str, by: str = "") -> tuple[Target, ...]:
    group = f"le{', ' + by if by else ''}"
    return tuple(
        Target(f"histogram_quantile({q}, sum by ({group}) "
               f"(rate({histogram}_bucket{{{selector}}}[{RATE}])))",
               f"P{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""))
        for q in (0.5, 0.99)
    )


def _per_replica(expr: str) -> tuple[Target, ...]:
    return (Target(expr, "{{replica}}"),)


OVERVIEW = Dashboard(
    uid="llm-fleet-overview",
    title="llm-fleet / Fleet overview",
    description="What clients of the gateway see: traffic, errors, latency, tokens and "
                "how many replicas are serving.",
    reload_annotations=True,
    rows=(
        Row("Now", (
            Panel("Replicas in rotation", "none",
                  (Target('sum(fleet_controller_replica_in_rotation{job="controller"})',
                          "in rotation"),),
                  "Replicas the gateway sends traffic to, per the controller.",
                  kind="stat", width=6, height=4),
            Panel("Requests/s", "reqps",
                  (Target("fleet:gateway_requests:rate1m", "requests/s"),),
                  "Client API requests through the gateway over the last minute "
                  "(recording rule fleet:gateway_requests:rate1m).",
                  kind="stat", width=6, height=4),
            Panel("5xx ratio", "percentunit",
                  (Target("fleet:gateway_5xx:ratio_rate1m", "5xx ratio"),),
                  "Share of client requests answered 5xx over the last minute.",
                  kind="stat", width=6, height=4, red_from=0.05),
            Panel("Generated tokens/s", "short",
                  (Target("fleet:vllm_generation_tokens:rate1m", "tokens/s"),),
                  "Output tokens per second across every replica.",
                  kind="stat", width=6, height=4),
        )),
        Row("Gateway", (
            Panel("Requests/s by status", "reqps",
                  (Target('sum by (status) (rate(fleet_gateway_requests_total'
                          f'{{job="gateway_log",route!="health"}}[{RATE}]))', "{{status}}"),),
                  "Client API requests by HTTP status, from the gateway's access log.",
                  stack=True),
            Panel("Errors/s by status and source", "reqps",
                  (Target('sum by (status, replica) (rate(fleet_gateway_requests_total'
                          f'{{job="gateway_log",route!="health",status=~"[45].."}}[{RATE}]))',
                          "{{status}} from {{replica}}"),),
                  "4xx and 5xx answers; source \"gateway\" means nginx answered itself "
                  "(unknown path, body too large, no replica left)."),
            Panel("nginx connections", "short",
                  (Target('sum by (instance) (nginx_connections_active{job="gateway"})', "active"),
                   Target('sum by (instance) (nginx_connections_waiting{job="gateway"})',
                          "idle keep-alive"),
                   Target('sum by (instance) (nginx_connections_writing{job="gateway"})',
                          "writing")),
                  "nginx's stub_status through prometheus-nginx-exporter."),
            Panel("nginx requests/s", "reqps",
                  (Target(f'sum(rate(nginx_http_requests_total{{job="gateway"}}[{RATE}]))',
                          "all requests"),),
                  "Every request nginx handled, health probes and admin calls included."),
        )),
        Row("Latency", (
            Panel("Time to first token", "s",
                  _quantiles("vllm:time_to_first_token_seconds", 'job="vllm"'),
                  "Fleet-wide P50 and P99 from vLLM's histograms."),
            Panel("End-to-end latency", "s",
                  _quantiles("vllm:e2e_request_latency_seconds", 'job="vllm"'),
                  "Fleet-wide P50 and P99, request arrival to last token. vLLM's buckets "
                  "start at 0.3s, so shorter requests all read as up to 0.3s."),
            Panel("Gateway latency", "s",
                  _quantiles("fleet_gateway_request_duration_seconds",
                             'job="gateway_log",route=~"chat|completions"'),
                  "P50 and P99 as clients see it: request received to last byte sent, "
                  "streams included."),
            Panel("Tokens/s", "short",
                  (Target(f'sum(rate(vllm:prompt_tokens_total{{job="vllm"}}[{RATE}]))', "prompt"),
                   Target(f'sum(rate(vllm:generation_tokens_total{{job="vllm"}}[{RATE}]))',
                          "generated")),
                  "Prompt tokens read and output tokens generated, whole fleet."),
        )),
        Row("Rotation", (
            Panel("Replicas serving", "none",
                  (Target('sum(fleet_controller_replica_in_rotation{job="controller"})',
                          "in rotation"),
                   Target('sum(fleet_controller_replica_healthy{job="controller"})', "healthy"),
                   Target('sum(up{job="vllm"})', "scraped")),
                  "In rotation (the gateway sends them traffic), healthy (the controller's "
                  "probes pass) and scraped (Prometheus reaches /metrics).", width=24),
        )),
        Row("Priority classes", (
            Panel("Admitted and shed per class", "reqps",
                  (Target('sum by (priority_class) (rate(fleet_gateway_class_requests_total'
                          f'{{job="gateway_log",status!~"{SHED_STATUSES}"}}[{RATE}]))',
                          "{{priority_class}} admitted"),
                   Target('sum by (priority_class, status) (rate('
                          'fleet_gateway_class_requests_total'
                          f'{{job="gateway_log",status=~"{SHED_STATUSES}"}}[{RATE}]))',
                          "{{priority_class}} shed ({{status}})")),
                  "Inference requests by priority class (spec priority; empty when classes "
                  "are off). Shed at the gateway: 429 by the class's max_in_flight cap or a "
                  "key limit, 503 while the fleet's queue wait is above the class's "
                  "shed_queue_wait_s. FleetClassShedding fires when it lasts ten minutes.",
                  width=12),
            Panel("Queue wait and classes shed", "s",
                  (Target("max(fleet_controller_queue_wait_seconds)", "queue wait"),
                   Target("max by (priority_class) (fleet_controller_class_shed) * "
                          "scalar(max(fleet_controller_queue_wait_seconds))",
                          "{{priority_class}} shed")),
                  "The controller's estimate of how long a new request waits before a "
                  "replica starts it: requests waiting in the replicas in rotation over the "
                  "rate they finish. A class's line shows the wait while the class is shed "
                  "(503 with Retry-After) and 0 while it is admitted "
                  "(priority.shed_queue_wait_s; no data when that is not set).", width=12),
        )),
        Row("API keys", (
            Panel("Requests per key", "reqps",
                  (Target('sum by (key, status) (rate(fleet_gateway_key_requests_total'
                          f'{{job="gateway_log"}}[{RATE}]))', "{{key}} {{status}}"),),
                  "Inference requests by API key id (`fleet keys list` names them) and "
                  "status: 429 is a key limit, its class's cap, its fair share or its token "
                  "budget. Empty when auth is off.", width=8),
            Panel("Tokens per key", "short",
                  (Target('sum by (key) (rate(fleet_gateway_key_tokens_total'
                          f'{{job="gateway_log"}}[{RATE}]))', "{{key}}"),),
                  "Tokens per second of each key's answers, prompt and completion, as the "
                  "replicas' usage reports them; a stream cut before its usage counts the "
                  "events it got. Counted while budgets.enabled is on.", width=8),
            Panel("Token budgets", "short",
                  (Target('max by (key) (fleet_controller_key_tokens{job="controller"})',
                          "{{key}} in the last minute"),
                   Target('sum(fleet_controller_key_over_budget{job="controller"})',
                          "keys over budget")),
                  "Each budgeted key's tokens over the last minute, as the controller's "
                  "ledger counts them, and how many keys the gateway answers 429 for their "
                  "budget now (`fleet keys budget`, budgets.tokens_per_min).", width=8),
        )),
    ),
)


REPLICAS = Dashboard(
    uid="llm-fleet-replicas",
    title="llm-fleet / Replicas",
    description="Each replica side by side: latency, queue, batch, KV cache, the weight the "
                "controller gives it and the share of traffic it gets.",
    replica_variable=True,
    reload_annotations=True,
    rows=(
        Row("Latency", (
            Panel("P99 time to first token", "s",
                  _per_replica(f"replica:vllm_ttft_seconds:p99_1m{{{REPLICA}}}"),
                  "Per replica over the last minute; the controller weighs replicas by it."),
            Panel("P99 end-to-end latency", "s",
                  _per_replica(f"replica:vllm_e2e_seconds:p99_1m{{{REPLICA}}}"),
                  "Per replica over the last minute."),
            Panel("P99 gateway latency", "s",
                  _quantiles("fleet_gateway_request_duration_seconds",
                             f'job="gateway_log",route=~"chat|completions",{REPLICA}',
                             by="replica")[1:],
                  "As clients see it, by the replica that served the request."),
            Panel("Generated tokens/s", "short",
                  _per_replica(f"replica:vllm_generation_tokens:rate1m{{{REPLICA}}}"),
                  "Output tokens per second."),
        )),
        Row("Load", (
            Panel("Waiting", "short",
                  _per_replica(f'sum by (replica) (vllm:num_requests_waiting{{job="vllm",'
                               f'{REPLICA}}})'),
                  "Requests queued inside vLLM, not yet scheduled."),
            Panel("Running", "short",
                  _per_replica(f'sum by (replica) (vllm:num_requests_running{{job="vllm",'
                               f'{REPLICA}}})'),
                  "Requests in the running batch (at most vllm.max_num_seqs)."),
            Panel("KV cache usage", "percentunit",
                  _per_replica(f'max by (replica) (vllm:kv_cache_usage_perc{{job="vllm",'
                               f'{REPLICA}}})'),
                  "Share of KV-cache blocks in use; above 95% requests queue or get "
                  "preempted."),
            Panel("Preemptions/s", "short",
                  _per_replica(f'sum by (replica) (rate(vllm:num_preemptions_total{{job="vllm",'
                               f'{REPLICA}}}[{RATE}]))'),
                  "Running requests evicted for lack of KV cache."),
            Panel("Prefix cache hit rate", "percentunit",
                  _per_replica(f'sum by (replica) (rate(vllm:prefix_cache_hits_total{{job="vllm",'
                               f'{REPLICA}}}[{RATE}])) / sum by (replica) (rate('
                               f'vllm:prefix_cache_queries_total{{job="vllm",{REPLICA}}}'
                               f'[{RATE}]))'),
                  "Share of prompt tokens whose KV was already cached on the replica; with "
                  "gateway.affinity a chat's next turn finds its history there."),
        )),
        Row("Routing", (
            Panel("Weight", "none",
                  _per_replica(f'fleet_controller_replica_weight{{job="controller",{REPLICA}}}'),
                  "The nginx weight the gateway runs with (1-100)."),
            Panel("Traffic share", "percentunit",
                  _per_replica(f"replica:gateway_traffic:share_rate1m{{{REPLICA}}}"),
                  "Each replica's share of the client requests the replicas served.",
                  stack=True),
            Panel("Requests/s through the gateway", "reqps",
                  _per_replica(f'sum by (replica) (rate(fleet_gateway_requests_total'
                               f'{{job="gateway_log",route!="health",{REPLICA}}}[{RATE}]))'),
                  "Client API requests each replica answered."),
            Panel("Retried requests/s", "reqps",
                  # 0 for replicas nginx never retried onto, rather than no line.
                  _per_replica(f'sum by (replica) (rate(fleet_gateway_retried_requests_total'
                               f'{{job="gateway_log",{REPLICA}}}[{RATE}])) or sum by (replica) '
                               f'(0 * rate(fleet_gateway_requests_total{{job="gateway_log",'
                               f'route!="health",{REPLICA}}}[{RATE}]))'),
                  "Requests nginx sent to more than one replica (proxy_next_upstream), by the "
                  "replica that finally answered."),
        )),
    ),
)


GPU_LEGEND = "GPU {{gpu_index}} · {{replica}}"


def _per_gpu(expr: str) -> tuple[Target, ...]:
    return (Target(expr, GPU_LEGEND),)


GPUS = Dashboard(
    uid="llm-fleet-gpus",
    title="llm-fleet / GPUs",
    description="NVML readings per GPU from llm-fleet's GPU exporter, labelled with the "
                "replica pinned to each GPU.",
    rows=(
        Row("Load", (
            Panel("GPU utilisation", "percent",
                  _per_gpu('fleet_gpu_utilization_percent{job="gpu"}'),
                  "Share of the sample period in which any kernel ran: a replica with any "
                  "active batch reads near 100%; read it with Running and KV cache."),
            Panel("Memory used", "bytes",
                  _per_gpu('fleet_gpu_memory_used_bytes{job="gpu"}'),
                  "vLLM reserves gpu_memory_utilization of the card at start, so this is flat "
                  "while a replica runs."),
            Panel("Memory used share", "percentunit",
                  _per_gpu('fleet_gpu_memory_used_bytes{job="gpu"} / '
                           'fleet_gpu_memory_total_bytes{job="gpu"}'),
                  "Used over total memory."),
            Panel("Memory bandwidth utilisation", "percent",
                  _per_gpu('fleet_gpu_memory_utilization_percent{job="gpu"}'),
                  "Share of the sample period in which memory was read or written; decode "
                  "is bandwidth-bound."),
        )),
        Row("Power and health", (
            Panel("Temperature", "celsius",
                  _per_gpu('fleet_gpu_temperature_celsius{job="gpu"}'),
                  "GPU core temperature; the FleetGpuTooHot alert fires above the spec's "
                  "alerts.gpu_temperature_max_c."),
            Panel("Power", "watt",
                  _per_gpu('fleet_gpu_power_watts{job="gpu"}')
                  + (Target('fleet_gpu_power_limit_watts{job="gpu"}',
                            "limit GPU {{gpu_index}}"),),
                  "Power draw against the enforced limit."),
            Panel("SM clock", "hertz",
                  _per_gpu('fleet_gpu_sm_clock_hertz{job="gpu"}'),
                  "A clock that drops under load means thermal or power throttling."),
            Panel("ECC errors/s", "short",
                  _per_gpu(f'rate(fleet_gpu_ecc_uncorrected_errors_total{{job="gpu"}}[{RATE}])')
                  + (Target(f'rate(fleet_gpu_ecc_corrected_errors_total{{job="gpu"}}[{RATE}])',
                            "corrected GPU {{gpu_index}}"),),
                  "Uncorrected errors corrupt results: drain the replica and reset the GPU. "
                  "Consumer cards without ECC report none."),
            Panel("NVML readable", "bool",
                  (Target('min(fleet_gpu_exporter_nvml_available{job="gpu"})', "NVML"),),
                  "1 while the exporter can read NVML.", kind="stat", width=6, height=4),
            Panel("GPUs present", "none",
                  (Target('sum(fleet_gpu_present{job="gpu"})', "present"),),
                  "GPUs NVML lists; a GPU that vanished reads 0 in fleet_gpu_present.",
                  kind="stat", width=6, height=4),
        )),
    ),
)


CONTROLLER = Dashboard(
    uid="llm-fleet-controller",
    title="llm-fleet / Controller",
    description="What the adaptive controller decided and why: weights over time, reloads, "
                "decisions and how fresh its signals are. GET /decisions on the admin API "
                "lists each decision with its reason.",
    replica_variable=True,
    reload_annotations=True,
    rows=(
        Row("Weights", (
            Panel("Running weight", "none",
                  _per_replica(f'fleet_controller_replica_weight{{job="controller",{REPLICA}}}'),
                  "The weight nginx runs with."),
            Panel("Desired weight", "none",
                  _per_replica(f'fleet_controller_desired_weight{{job="controller",{REPLICA}}}'),
                  "What the policy wants now; it leads the running weight while a change is "
                  "held by the hysteresis."),
            Panel("In rotation and healthy", "none",
                  (Target(f'fleet_controller_replica_in_rotation{{job="controller",{REPLICA}}}',
                          "in rotation {{replica}}"),
                   Target(f'fleet_controller_replica_healthy{{job="controller",{REPLICA}}}',
                          "healthy {{replica}}")),
                  "1 or 0 per replica."),
            Panel("Process starts and crash loops", "short",
                  (Target(f'increase(fleet_controller_replica_process_starts_total'
                          f'{{job="controller",{REPLICA}}}[10m])', "starts in 10m {{replica}}"),
                   Target(f'fleet_controller_replica_process_fatal{{job="controller",{REPLICA}}}',
                          "gave up (FATAL) {{replica}}")),
                  "Starts of each replica's process by supervisord over ten minutes; three or "
                  "more, or FATAL at 1, is a crash loop (FleetReplicaCrashLooping): read `fleet "
                  "logs REPLICA`, fix, then `fleet restart REPLICA`."),
            Panel("Load bound: keyed requests spilling", "none",
                  _per_replica(f'fleet_controller_replica_shedding{{job="controller",{REPLICA}}}'),
                  "1 while the replica's pressure is well above the fleet's median and the "
                  "requests of its keys (gateway.affinity) go to the balanced upstream "
                  "instead, one by one, until it recovers."),
            Panel("Admin overrides", "none",
                  (Target(f'fleet_controller_override{{job="controller",{REPLICA}}}',
                          "{{kind}} {{replica}}"),),
                  "1 while a drain or pin set through the admin API is active."),
            Panel("Pace against the fleet", "none",
                  _per_replica(f'fleet_controller_pace_ratio{{job="controller",{REPLICA}}}'),
                  "Seconds per output token over the fleet's median, from the controller's "
                  "pace probes (1 = even; 3 = three times slower). It moves weights within "
                  "seconds; the P99 panels need a minute."),
            Panel("Pace probe, seconds per token", "s",
                  _per_replica(f'fleet_controller_pace_seconds_per_token{{job="controller",'
                               f'{REPLICA}}}'),
                  "The latest probe's decode pace per replica: the same small request on "
                  "every replica each round."),
        )),
        Row("Decisions", (
            Panel("Reloads", "short",
                  (Target(f'sum by (result) (increase(fleet_controller_reloads_total'
                          f'{{job="controller"}}[{RATE}]))', "{{result}}"),),
                  "Gateway reloads by result; a failed one leaves the previous config live."),
            Panel("Decisions", "short",
                  (Target(f'sum by (applied) (increase(fleet_controller_decisions_total'
                          f'{{job="controller"}}[{RATE}]))', "applied={{applied}}"),),
                  "Policy evaluations, by whether they changed the gateway."),
            Panel("Signal age", "s",
                  _per_replica(f'fleet_controller_signal_age_seconds{{job="controller",'
                               f'{REPLICA}}}'),
                  "Age of each replica's newest Prometheus sample; above "
                  "controller.max_signal_age_s the controller ignores it."),
            Panel("Decision time P99", "s",
                  (Target(f'histogram_quantile(0.99, sum by (le) (rate('
                          f'fleet_controller_decision_duration_seconds_bucket{{job="controller"}}'
                          f'[{RATE}])))', "P99"),),
                  "Time to gather signals and decide."),
            Panel("Since last reload", "s",
                  (Target('time() - max(fleet_controller_last_successful_reload_timestamp_seconds'
                          '{job="controller"})', "age"),),
                  "Seconds since the last successful reload.", kind="stat", width=6, height=4),
            Panel("Change pending", "bool",
                  (Target('max(fleet_controller_change_pending{job="controller"})', "pending"),),
                  "1 while a wanted change failed to reload.", kind="stat", width=6, height=4,
                  red_from=1),
            Panel("Prometheus reachable", "bool",
                  (Target('min(fleet_controller_prometheus_up{job="controller"})', "up"),),
                  "0 while the controller cannot query Prometheus; weights are then held.",
                  kind="stat", width=6, height=4),
        )),
    ),
)

DASHBOARDS = (OVERVIEW, REPLICAS, GPUS, CONTROLLER)


def file_name(dashboard: Dashboard) -> str:
    return dashboard.uid.removeprefix(f"{TAG}-") + ".json"


def render(dashboard: Dashboard) -> str:
    return json.dumps(build(dashboard), indent=2) + "\n"


def write_all(out_dir: Path = DASHBOARD_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dashboard in DASHBOARDS:
        path = out_dir / file_name(dashboard)
        path.write_text(render(dashboard), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else DASHBOARD_DIR):
        print(written_path)
