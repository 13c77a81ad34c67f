"""keepalived's config for one gateway host of a pair (the spec's `ha` section)."""

from __future__ import annotations

from pathlib import Path

from router.config.spec import ClusterSpec
from router.errors import SpecError
from router.render.templates import template


def render_keepalived(spec: ClusterSpec, curl: str, down_flag: Path) -> str:
    """The config keepalived runs with on this host; ``curl``: its path here;
    ``down_flag``: the file router.gateway_watch writes."""
    ha = spec.ha
    if not ha.enabled:
        raise SpecError("this spec has no gateway pair (ha.enabled is false)",
                        hint="set ha.enabled: true with ha.virtual_ip, ha.unicast_src and "
                             "ha.peers (docs/production.md)")
    assert ha.unicast_src is not None
    return template("deploy/keepalived/keepalived.conf.j2").render(
        ha=ha, curl=curl,
        # Unique per host in keepalived's logs.
        router_id="llm_fleet_" + ha.unicast_src.replace(".", "_").replace(":", "_"),
        health_url=f"http://127.0.0.1:{spec.gateway.port}/health",
        down_flag=down_flag,
    )
