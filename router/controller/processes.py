"""supervisord's word on each replica's process: how a crash loop is seen.

Health probes only say that a replica does not answer. Whether it dies at
every start (BACKOFF) or was given up on (FATAL) only the supervisor knows,
and that is what an operator needs to read: a replica that will not come
back by itself. The controller reads it every probe interval when the
cluster runs under supervisord (`fleet up`); under systemd, `systemctl
status` says the same and this watch is off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from router.controller.metrics import ControllerMetrics
from router.controller.policy import Snapshot
from router.errors import ClusterError
from router.runtime.supervise import ProcessInfo

log = logging.getLogger(__name__)

# supervisord states that keep a replica out whatever its probes say, and
# what each means for an operator.
CRASH_LOOP_STATES = {
    "BACKOFF": "crash-looping: it exits as it starts and supervisord keeps retrying",
    "FATAL": "crash-looping: supervisord gave up after repeated failed starts",
}
RESTART_HINT = "read `fleet logs {name}`, fix the cause, then `fleet restart {name}`"


@dataclass
class ProcessWatch:
    """Polls supervisord for the replicas' process states and counts their starts."""

    name = "process states"

    read: Callable[[], list[ProcessInfo]]
    names: Sequence[str]
    metrics: ControllerMetrics
    # As often as the health probes: a crash loop is news as urgent as a dead replica.
    interval_s: float
    states: dict[str, str] = field(default_factory=dict)
    _started_at: dict[str, int] = field(default_factory=dict)
    _unreachable: bool = False

    def __post_init__(self) -> None:
        # Series from zero, so the first start after a good one is an increase.
        for name in self.names:
            self.metrics.process_starts.labels(replica=name)
            self.metrics.gave_up.labels(replica=name).set(0)

    async def poll(self, in_rotation: Sequence[str]) -> bool:
        # The XML-RPC client blocks: off the event loop.
        return await asyncio.to_thread(self.read_once)

    def observe(self, snapshot: Snapshot) -> Snapshot:
        return replace(snapshot, crash_looping=self.crash_looping())

    async def close(self) -> None:
        return None

    def read_once(self) -> bool:
        """Read supervisord once; True when a replica's state changed."""
        try:
            infos = self.read()
        except ClusterError as exc:
            if not self._unreachable:
                log.warning("supervisord unreachable, process states held: %s", exc.message)
            self._unreachable = True
            return False
        self._unreachable = False
        changed = False
        for info in infos:
            if info.name not in self.names:
                continue
            before = self._started_at.get(info.name)
            if before is not None and info.started_at != before and info.started_at:
                self.metrics.process_starts.labels(replica=info.name).inc()
            self._started_at[info.name] = info.started_at
            if self.states.get(info.name) != info.state:
                if info.state in CRASH_LOOP_STATES:
                    log.warning("replica=%s process=%s decision=kept out reason=%s; %s",
                                info.name, info.state, CRASH_LOOP_STATES[info.state],
                                RESTART_HINT.format(name=info.name))
                changed = True
            self.states[info.name] = info.state
            self.metrics.gave_up.labels(replica=info.name).set(int(info.state == "FATAL"))
        return changed

    def crash_looping(self) -> dict[str, str]:
        """Replica -> why it is crash-looping, for those that are."""
        return {name: f"{CRASH_LOOP_STATES[state]} ({state}); "
                      + RESTART_HINT.format(name=name)
                for name, state in self.states.items() if state in CRASH_LOOP_STATES}
