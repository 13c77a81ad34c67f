"""The controller's own active health probes: the fast path to "out of rotation".

Prometheus scrapes every few seconds and its latency windows span a minute;
a dead or hung replica must leave rotation within about two seconds. So every
replica's /health is probed every ``probe_interval_s`` with a
``probe_timeout_s`` timeout; ``fail_threshold`` failures in a row take it
out, ``recover_threshold`` successes bring it back (with a slow start, see
the policy). A hung replica fails by timeout, a dead one by refusal, a dead
engine by its 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import httpx

from router.config.spec import ControllerSpec
from router.controller.policy import Health, Snapshot


@dataclass(frozen=True)
class ProbeState:
    """A replica's probe history, folded into what the policy needs."""

    health: Health = Health()
    consecutive_successes: int = 0
    last_error: str | None = None
    last_probe_at: float | None = None
    # Whether the current outage began after the replica had answered at least
    # once; only then does it rejoin with a slow start.
    down_after_serving: bool = False


def observe(state: ProbeState, ok: bool, error: str | None, now: float,
            settings: ControllerSpec) -> tuple[ProbeState, bool]:
    """Fold one probe result in; return the new state and whether health flipped."""
    health = state.health
    if ok:
        successes = state.consecutive_successes + 1
        flipped = not health.healthy and successes >= settings.recover_threshold
        # Slow start is for a replica rejoining a serving fleet. One that has
        # never answered yet (still loading at `fleet up`) joins at full weight,
        # like every other replica starting beside it.
        rejoined = flipped and state.down_after_serving
        health = replace(health, consecutive_failures=0, last_success=now,
                         healthy=health.healthy or flipped,
                         recovered_at=now if rejoined else health.recovered_at)
        return ProbeState(health, successes, None, now, state.down_after_serving), flipped
    failures = health.consecutive_failures + 1
    flipped = health.healthy and failures >= settings.fail_threshold
    health = replace(health, consecutive_failures=failures,
                     healthy=health.healthy and not flipped)
    down_after_serving = (health.last_success is not None) if flipped \
        else state.down_after_serving
    return ProbeState(health, 0, error, now, down_after_serving), flipped


class Prober:
    """The controller's own /health probes of every replica, concurrently: the
    first input, since nothing is decided about a replica that does not answer.
    A flip (``fail_threshold`` failures, ``recover_threshold`` successes)
    calls for a decision at once."""

    name = "health probes"

    def __init__(self, urls: Mapping[str, str], settings: ControllerSpec,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.urls = dict(urls)
        self.settings = settings
        self.states = {name: ProbeState() for name in urls}
        self._clock = clock
        # A new connection per probe: on a kept-alive one a host whose link
        # is gone shows only as a read timeout, never as a failed connect.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.probe_timeout_s,
                                  connect=min(settings.probe_connect_timeout_s,
                                              settings.probe_timeout_s)),
            limits=httpx.Limits(max_keepalive_connections=0), transport=transport)

    @property
    def interval_s(self) -> float:
        return self.settings.probe_interval_s

    async def close(self) -> None:
        await self._client.aclose()

    async def _probe(self, name: str) -> bool:
        error: str | None = None
        try:
            response = await self._client.get(self.urls[name] + "/health")
            ok = response.status_code == 200
            if not ok:
                error = f"/health answered {response.status_code}"
        except httpx.ConnectTimeout:
            ok, error = False, (f"no connection within "
                                f"{self.settings.probe_connect_timeout_s:g}s")
        except httpx.TimeoutException:
            ok, error = False, f"no answer within {self.settings.probe_timeout_s:g}s"
        except httpx.HTTPError as exc:
            ok, error = False, type(exc).__name__
        self.states[name], flipped = observe(self.states[name], ok, error, self._clock(),
                                             self.settings)
        return flipped

    async def probe_all(self) -> bool:
        """Probe every replica once; True when one's health flipped."""
        return any(await asyncio.gather(*(self._probe(name) for name in self.urls)))

    async def poll(self, in_rotation: Sequence[str]) -> bool:
        return await self.probe_all()

    def observe(self, snapshot: Snapshot) -> Snapshot:
        return replace(snapshot, health={name: s.health for name, s in self.states.items()})
