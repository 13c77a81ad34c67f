"""Applying a decision to nginx, safely.

Only the upstream file changes. The sequence:
1. render the new upstream.conf (jinja2, nginx/upstream.conf.j2);
2. write it atomically, keeping the previous text;
3. `nginx -t` the whole configuration; on failure restore the previous file;
4. SIGHUP the nginx master (a graceful reload: old workers finish their
   streams, bounded by worker_shutdown_timeout);
5. verify that nginx now runs the new file: the status port's
   /fleet/config-version must answer the new version within a few seconds;
   otherwise restore the previous file and reload again.
Every failure is counted by result and raised as NginxReloadFailed; the
gateway keeps serving the configuration it had.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from router.controller.policy import Decision
from router.errors import NginxReloadFailed
from router.render import RenderedUpstream, UpstreamMember, nginx_binary, render_upstream
from router.runtime import RuntimePaths, write_atomic
from router.spec import GatewaySpec

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 5.0

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
        self._status_url = f"http://127.0.0.1:{gateway.status_port}/fleet/config-version"

    def _render(self, decision: Decision, why: str) -> RenderedUpstream:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(decision.at))
        return render_upstream(self.gateway, self.members, decision.weights(), decision.down(),
                               decision.reasons(),
                               provenance=f"written by the controller at {stamp}: {why}")

    async def _nginx_test(self) -> str | None:
        proc = await asyncio.create_subprocess_exec(
            nginx_binary(), "-t", "-q", "-e", str(self.paths.log("nginx-check")),
            "-p", str(self.paths.root), "-c", str(self.paths.nginx_conf),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode == 0:
            return None
        lines = err.decode(errors="replace").strip().splitlines()
        return lines[0] if lines else f"nginx -t exited {proc.returncode}"

    def _reload(self) -> None:
        try:
            pid = int(self.paths.nginx_pid.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (FileNotFoundError, ValueError, ProcessLookupError) as exc:
            raise NginxReloadFailed(f"cannot signal the nginx master: {exc}",
                                    hint="is the gateway running? see `fleet status`") from exc

    async def live_version(self) -> str | None:
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                response = await client.get(self._status_url)
        except httpx.HTTPError:
            return None
        return response.text.strip() if response.status_code == 200 else None

    async def _wait_live(self, version: str) -> bool:
        deadline = time.monotonic() + VERIFY_TIMEOUT_S
        while time.monotonic() < deadline:
            if await self.live_version() == version:
                return True
            await asyncio.sleep(0.05)
        return False

    async def apply(self, decision: Decision, why: str) -> ApplyResult:
        """Make nginx run ``decision``; raise NginxReloadFailed after rolling back."""
        started = time.monotonic()
        rendered = self.render(decision, why)
        target = self.paths.upstream_conf
        previous = target.read_text(encoding="utf-8")
        write_atomic(target, rendered.text)
        problem = await self._nginx_test()
        if problem is not None:
            write_atomic(target, previous)
            raise NginxReloadFailed(f"nginx -t rejected the new upstream: {problem}",
                                    hint="the previous configuration is still serving")
        try:
            self._reload()
        except NginxReloadFailed:
            write_atomic(target, previous)
            raise
        if not await self._wait_live(rendered.version):
            write_atomic(target, previous)
            self._reload()
            raise NginxReloadFailed(
                f"nginx did not run version {rendered.version} within {VERIFY_TIMEOUT_S:g}s "
                "of the reload", hint=f"see {self.paths.log('nginx-error')}")
        return ApplyResult(rendered.version, time.monotonic() - started)
