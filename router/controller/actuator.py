"""Applying a decision to nginx, safely.

Only the upstream file changes, through router.runtime.gateway: render the
new upstream.conf (jinja2, nginx/upstream.conf.j2), write it, `nginx -t`,
SIGHUP, and verify that the status port's /fleet/config-version answers the
new version; any failure restores the previous file. Failures are raised as
NginxReloadFailed and the gateway keeps serving the configuration it had.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.config.spec import GatewaySpec
from router.controller.policy import Decision
from router.disk.paths import RuntimePaths
from router.render.upstream import RenderedUpstream, render_upstream
from router.runtime.gateway import apply_gateway_file, live_version, status_url
from router.upstream import CONTROLLER_PROVENANCE, UpstreamMember

Renderer = Callable[[Decision, str], RenderedUpstream]


@dataclass(frozen=True)
class ApplyResult:
    version: str
    seconds: float


class Actuator:
    """Writes, checks, reloads and verifies the gateway's upstream block."""

    def __init__(self, gateway: GatewaySpec, members: Sequence[UpstreamMember],
                 paths: RuntimePaths, renderer: Renderer | None = None) -> None:
        self.gateway = gateway
        self.members = list(members)
        self.paths = paths
        self.render = renderer or self._render
        self._status_url = status_url(gateway.status_port, "config")

    def _render(self, decision: Decision, why: str) -> RenderedUpstream:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(decision.at))
        return render_upstream(self.gateway, self.members, decision.weights(), decision.down(),
                               decision.reasons(),
                               provenance=f"{CONTROLLER_PROVENANCE} at {stamp}: {why}",
                               shedding=decision.shedding())

    async def live_version(self) -> str | None:
        return await asyncio.to_thread(live_version, self._status_url)

    async def apply(self, decision: Decision, why: str) -> ApplyResult:
        """Make nginx run ``decision``; raise NginxReloadFailed after rolling back."""
        rendered = self.render(decision, why)
        # nginx -t and the verification block; the event loop keeps probing meanwhile.
        seconds = await asyncio.to_thread(
            apply_gateway_file, self.paths, self.paths.upstream_conf, rendered.text,
            version=rendered.version, version_url=self._status_url)
        return ApplyResult(rendered.version, seconds)
