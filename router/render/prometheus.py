"""Prometheus' scrape config and the rule files it loads."""

from __future__ import annotations

from router import REPO_ROOT
from router.config.plan import ClusterPlan
from router.config.spec import ClusterSpec
from router.disk.paths import ALERT_RULES, RECORDING_RULES
from router.render.templates import template


def render_prometheus(plan: ClusterPlan) -> str:
    prom = plan.spec.prometheus
    metrics = plan.spec.gateway_metrics
    return template("prometheus/prometheus.yml.j2").render(
        scrape_interval_s=prom.scrape_interval_s,
        scrape_timeout_s=max(1, min(10, prom.scrape_interval_s)),
        rule_files=[RECORDING_RULES, ALERT_RULES],
        replicas=plan.replicas,
        prometheus_port=prom.port,
        controller_port=plan.spec.controller.port if plan.spec.controller.enabled else None,
        gpu_exporter_port=plan.spec.gpu_exporter.port if plan.gpu_exporter else None,
        nginx_exporter_port=metrics.nginx_exporter_port if metrics.enabled else None,
        log_exporter_port=metrics.log_exporter_port if metrics.enabled else None,
    )


def recording_rules() -> str:
    """The recording rules: the same for every cluster, so a plain file."""
    return (REPO_ROOT / "prometheus" / RECORDING_RULES).read_text(encoding="utf-8")


def render_alert_rules(spec: ClusterSpec) -> str:
    # Prometheus's own alert templates use {{ }}; jinja2 fills [[ ]] here.
    return template("prometheus/alerts.rules.yml.j2", ("[[", "]]")).render(
        alerts=spec.alerts,
        # Longer than two evaluations plus the minimum reload spacing: a
        # weight change that is merely held for its turn never fires.
        reload_stuck_s=int(max(60.0, 3 * spec.controller.min_reload_interval_s
                               + 2 * spec.controller.evaluate_interval_s)),
    )
