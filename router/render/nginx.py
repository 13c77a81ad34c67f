"""The gateway's nginx.conf: listen, limits, the API allowlist, the console."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from router.affinity import AffinityMode
from router.config.plan import ClusterPlan
from router.config.spec import (
    BUDGET_CAP_FOLDER,
    BUDGET_CAP_LEVELS,
    BUDGET_FOLDER,
    FAIR_SHARE_FILE,
    IN_FLIGHT_LEVELS,
    ClusterSpec,
    GatewaySpec,
    url_host,
)
from router.disk.paths import RuntimePaths
from router.host.machine import MachineFacts, shed_dir
from router.render.templates import template
from router.upstream import VERSION_PLACEHOLDER, stamp_version


@dataclass(frozen=True)
class NginxPaths:
    pid: Path
    error_log: Path
    access_log: Path
    temp_dir: Path


@dataclass(frozen=True)
class LimitsView:
    """Rate and concurrency limits, keyed per API key or per client address."""

    key: str
    key_doc: str
    requests_per_s: int | None
    burst: int
    concurrent: int | None
    # The limit in words, for the 429 body; empty when there is none.
    summary: str


@dataclass(frozen=True)
class ApiRoute:
    """One path of vLLM's API the gateway passes to a replica."""

    path: str
    method: str
    # The short label of its metrics and access log lines.
    name: str
    # Whether conversation affinity keys it (gateway.affinity) and priority
    # classes apply: only requests whose prompts a replica's prefix cache can hold.
    keyed: bool
    # Whether its answers cost tokens that count against a key's budget.
    counted: bool = False
    # Whether a stream of it ends with a usage chunk only when the request asks
    # (stream_options.include_usage); the gateway asks when it counts tokens.
    usage_asked: bool = False


_MODELS = ApiRoute("/v1/models", "GET", "models", keyed=False)
_TOKENIZER = (ApiRoute("/tokenize", "POST", "tokenize", keyed=False),
              ApiRoute("/detokenize", "POST", "detokenize", keyed=False))
# The allowlist: these paths and no other reach a replica, by what the model
# runs (model.runner); vLLM serves only the one kind's endpoints.
API_ROUTES: dict[str, tuple[ApiRoute, ...]] = {
    "generate": (ApiRoute("/v1/chat/completions", "POST", "chat", keyed=True, counted=True,
                          usage_asked=True),
                 ApiRoute("/v1/completions", "POST", "completions", keyed=True, counted=True,
                          usage_asked=True),
                 # A Responses stream always ends with its usage.
                 ApiRoute("/v1/responses", "POST", "responses", keyed=True, counted=True),
                 *_TOKENIZER, _MODELS),
    "pooling": (ApiRoute("/v1/embeddings", "POST", "embeddings", keyed=False, counted=True),
                *_TOKENIZER, _MODELS),
}


@dataclass(frozen=True)
class PriorityView:
    """Priority classes (spec priority): how nginx.conf turns a request's key
    class and X-Fleet-Priority header into vLLM's priority level."""

    classes: tuple[str, ...]
    # "key class:header" -> level, for every key class ("" for a key with none,
    # or no key) and header ("" for none): the lower of the two classes.
    levels: tuple[tuple[str, int], ...]
    # The level of a key whose class the spec no longer names: the lowest.
    unknown_key_level: int
    # The 400's message: what the header may say.
    header_hint: str
    # (class, its level, requests in flight at most across the fleet).
    caps: tuple[tuple[str, int, int], ...] = ()
    # The folder of the controller's flags: one file per class shed for the
    # fleet's queue wait, and the fair share per key; None when neither is on.
    shed_dir: Path | None = None
    # Whether any class is shed for the queue wait (priority.shed_queue_wait_s).
    sheds: bool = False
    # Fair shares per key (priority.fair_share): the levels a
    # share may take, a counting zone each; empty when off.
    fair_levels: tuple[int, ...] = ()
    fair_file: str = FAIR_SHARE_FILE


def fair_levels(slots: int | None) -> tuple[int, ...]:
    """The shares a key may be given: at most half the fleet's slots (two keys
    in use at least); every level when the slots are unknown."""
    if slots is None:
        return IN_FLIGHT_LEVELS
    return tuple(level for level in IN_FLIGHT_LEVELS if level <= max(1, slots // 2))


def priority_view(spec: ClusterSpec, shed_dir: Path | None = None,
                  slots: int | None = None) -> PriorityView | None:
    priority = spec.priority
    if not priority.enabled:
        return None
    classes = priority.classes
    levels = tuple(
        (f"{key_class}:{header}",
         max(priority.level(key_class or None), classes.index(header) if header else 0))
        for key_class in ("", *classes) for header in ("", *classes))
    return PriorityView(
        classes=classes, levels=levels, unknown_key_level=len(classes) - 1,
        caps=tuple((name, classes.index(name), cap)
                   for name, cap in priority.max_in_flight.items()),
        shed_dir=(shed_dir if priority.shed_queue_wait_s
                  or priority.fair_share else None),
        sheds=bool(priority.shed_queue_wait_s),
        fair_levels=fair_levels(slots) if priority.fair_share else (),
        header_hint=(f"send one of {', '.join(classes)} (highest first); a request may lower "
                     "the class of its API key, never raise it"))


@dataclass(frozen=True)
class BudgetsView:
    """Token budgets (spec budgets): each answer's tokens are counted into the
    access log, and a key the controller flags as over its budget gets 429."""

    # One flag per key over its budget, named as the key's id.
    folder: Path
    # One per key whose minute has room for few answers: the requests it may
    # have in flight, one of cap_levels (a counting zone each).
    cap_folder: Path
    cap_levels: tuple[int, ...] = BUDGET_CAP_LEVELS


@dataclass(frozen=True)
class ConsoleView:
    root: Path


@dataclass(frozen=True)
class NginxView:
    """Everything nginx/nginx.conf.j2 reads."""

    run_user: str | None
    paths: NginxPaths
    gateway: GatewaySpec
    listen: str
    auth: bool
    limits: LimitsView
    console: ConsoleView | None
    controller_port: int | None
    upstream_conf: Path
    api_keys_conf: Path
    # gateway.affinity; when it keys requests, njs runs the mode's handler.
    affinity: AffinityMode
    js_module: str | None
    affinity_script: Path
    # The folder of body.js, flags.js and usage.js.
    njs_scripts: Path
    routes: tuple[ApiRoute, ...]
    # Priority classes (spec priority); None when off.
    priority: PriorityView | None
    # Token budgets (spec budgets); None when off.
    budgets: BudgetsView | None


def limits_view(spec: ClusterSpec) -> LimitsView:
    limits = spec.limits
    parts = []
    if limits.requests_per_s:
        parts.append(f"{limits.requests_per_s} requests/s with a burst of {limits.burst}")
    if limits.concurrent:
        parts.append(f"{limits.concurrent} requests in flight")
    per = " per key" if spec.auth.enabled else " per client address"
    texts = [", ".join(parts) + per] if parts else []
    if spec.priority.enabled:
        texts += [f"class {name}: {cap} in flight across the fleet"
                  for name, cap in spec.priority.max_in_flight.items()]
        if spec.priority.fair_share:
            texts.append("while the fleet is saturated, each key: its equal share of the "
                         "slots in flight")
    if spec.budgets.enabled:
        texts.append("a key near its token budget: as many requests in flight as the rest "
                     "of its minute has room for")
    return LimitsView(
        # Empty keys are not counted by nginx, so with auth on a request
        # without a valid key (already refused) never uses a slot.
        key="$fleet_api_key" if spec.auth.enabled else "$binary_remote_addr",
        key_doc="per API key" if spec.auth.enabled else "per client address",
        requests_per_s=limits.requests_per_s,
        burst=limits.burst,
        concurrent=limits.concurrent,
        summary=("limit: " + "; ".join(texts)) if texts else "",
    )


def listen_address(gw: GatewaySpec) -> str:
    return f"{url_host(gw.host)}:{gw.port}"


def nginx_view(plan: ClusterPlan, paths: RuntimePaths, machine: MachineFacts) -> NginxView:
    spec = plan.spec
    # The settings that need njs, each as the setting that turns it off.
    needs_js = tuple(setting for setting, on in (
        ("gateway.affinity: off", spec.gateway.affinity.keyed),
        ("priority.enabled: false", spec.priority.enabled),
        ("budgets.enabled: false", spec.budgets.enabled)) if on)
    flags = shed_dir(paths.root, machine.run_user, paths.shed_dir)
    return NginxView(
        run_user=machine.run_user,
        paths=NginxPaths(pid=paths.nginx_pid, error_log=paths.log("nginx-error"),
                         access_log=paths.access_log, temp_dir=paths.nginx_temp_dir),
        gateway=spec.gateway,
        listen=listen_address(spec.gateway),
        auth=spec.auth.enabled,
        limits=limits_view(spec),
        # The console is a chat page: a pooling model does not chat.
        console=(ConsoleView(machine.console_root)
                 if spec.console.enabled and spec.model.runner == "generate" else None),
        controller_port=spec.controller.port if spec.controller.enabled else None,
        upstream_conf=paths.upstream_conf,
        api_keys_conf=paths.api_keys_conf,
        affinity=spec.gateway.affinity,
        js_module=machine.nginx_module("ngx_http_js_module", needs_js) if needs_js else None,
        affinity_script=machine.affinity_script,
        njs_scripts=machine.njs_scripts,
        routes=API_ROUTES[spec.model.runner],
        priority=priority_view(spec, flags, slots=plan_slots(plan)),
        budgets=(BudgetsView(flags / BUDGET_FOLDER, flags / BUDGET_FOLDER / BUDGET_CAP_FOLDER)
                 if spec.budgets.enabled else None),
    )


def plan_slots(plan: ClusterPlan) -> int | None:
    """The fleet's sequences at once (max_num_seqs summed); None when a
    replica's is unknown."""
    counts = [r.max_num_seqs for r in plan.replicas]
    return None if any(c is None for c in counts) else sum(c for c in counts if c)


def render_nginx(plan: ClusterPlan, paths: RuntimePaths, machine: MachineFacts) -> str:
    """nginx.conf, stamped with the version its status port answers once live."""
    view = nginx_view(plan, paths, machine)
    text, _version = stamp_version(template("nginx/nginx.conf.j2").render(
        version=VERSION_PLACEHOLDER,
        **{name: getattr(view, name) for name in NginxView.__dataclass_fields__}))
    return text


def stamped_version(text: str) -> str | None:
    """The version a rendered nginx.conf declares, None for a file without one."""
    match = _VERSION_LINE.search(text)
    return match.group(1) if match else None


_VERSION_LINE = re.compile(r'map \$host \$fleet_gateway_version \{\s*default "([^"]+)";')
