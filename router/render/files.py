"""Every config file of one cluster, rendered together."""

from __future__ import annotations

from dataclasses import dataclass

from router.config.plan import ClusterPlan
from router.disk.keys import KeyStore
from router.disk.paths import RuntimePaths
from router.host.machine import MachineFacts
from router.render.keepalived import render_keepalived
from router.render.keys import render_keys_conf
from router.render.logrotate import render_logrotate
from router.render.nginx import render_nginx
from router.render.programs import render_supervisord
from router.render.prometheus import recording_rules, render_alert_rules, render_prometheus
from router.render.upstream import render_upstream


@dataclass(frozen=True)
class RenderedConfig:
    """The text of every config file of one cluster, keyed by file name."""

    files: dict[str, str]
    # Files holding secrets (API keys), written with mode 0600.
    private: frozenset[str] = frozenset()


def render_all(plan: ClusterPlan, paths: RuntimePaths, machine: MachineFacts,
               keys: KeyStore) -> RenderedConfig:
    files = {
        paths.nginx_conf.name: render_nginx(plan, paths, machine),
        paths.upstream_conf.name: render_upstream(plan.spec.gateway, plan.replicas).text,
        paths.api_keys_conf.name: render_keys_conf(keys).text,
        paths.supervisord_conf.name: render_supervisord(plan, paths, machine),
        paths.logrotate_conf.name: render_logrotate(plan, paths, machine),
        paths.spec_json.name: plan.spec.model_dump_json(indent=2) + "\n",
    }
    if plan.spec.ha.enabled:
        files[paths.keepalived_conf.name] = render_keepalived(plan.spec, machine.binary("curl"),
                                                            paths.gateway_down_flag)
    if plan.spec.prometheus.enabled:
        files[paths.prometheus_yml.name] = render_prometheus(plan)
        files[paths.recording_rules.name] = recording_rules()
        files[paths.alert_rules.name] = render_alert_rules(plan.spec)
    return RenderedConfig(files=files, private=frozenset({paths.api_keys_conf.name}))
