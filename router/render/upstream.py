"""The gateway's upstream file: server lines, weights and the live version."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router.affinity import RingEntry, RingState, ring_text
from router.config.spec import GatewaySpec
from router.render.templates import template
from router.upstream import VERSION_PLACEHOLDER, UpstreamMember, stamp_version, upstream_servers


@dataclass(frozen=True)
class RenderedUpstream:
    """The upstream file and the version nginx reports once it is live."""

    text: str
    version: str


def render_upstream(gw: GatewaySpec, members: Sequence[UpstreamMember],
                    weights: Mapping[str, int] | None = None,
                    down: frozenset[str] = frozenset(),
                    reasons: Mapping[str, str] | None = None,
                    provenance: str = "written by fleet up with equal weights",
                    shedding: Mapping[str, str] | None = None) -> RenderedUpstream:
    """The upstream file; ``shedding`` names replicas whose keyed requests spill to
    the balanced upstream (the affinity load bound), and why."""
    # An all-down group is still a valid config: nginx answers "no live
    # upstreams" and the gateway turns that into a JSON 503.
    servers = upstream_servers(members, max_fails=gw.max_fails,
                               fail_timeout_s=gw.fail_timeout_s, weights=weights, down=down,
                               reasons=reasons)
    shed = dict(shedding or {})
    ring = ring_text(RingEntry(server.name, server.weight,
                               RingState.DOWN if server.down
                               else RingState.SHED if server.name in shed else RingState.UP)
                     for server in servers)
    # The version is what the status port's /fleet/config-version answers
    # once nginx runs this file: the proof that a reload took effect.
    text, version = stamp_version(template("nginx/upstream.conf.j2").render(
        servers=servers, keepalive=gw.keepalive, balance=gw.balance, provenance=provenance,
        affinity=gw.affinity, ring=ring, shedding=shed, version=VERSION_PLACEHOLDER))
    return RenderedUpstream(text=text, version=version)
