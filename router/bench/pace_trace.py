"""Pace traces: the controller's inputs recorded from a running fleet, and replayed.

`fleet bench trace` sends the controller's own pace probe to every replica
once a round, as the controller does, and writes each round as one JSON line
(``{"t": seconds, "readings": {replica: {"seconds_per_token", "batch",
"waiting"}}}``). A trace from a real fleet (an equal pair on a GPU, a
simulated fleet with a replica slowed) is a test fixture: :func:`replay`
folds it through the same tracker and policy the controller runs, on the
trace's own clock, and says when the weights would have moved.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from router.config.spec import ControllerSpec, PaceSpec
from router.controller.pace import PaceReading, PaceTracker, measure
from router.controller.policy import Decision, Snapshot, decide, should_apply, weights_differ
from router.errors import SpecError

Round = tuple[float, dict[str, PaceReading]]


def round_line(t: float, readings: Mapping[str, PaceReading | None]) -> str:
    return json.dumps({"t": round(t, 3), "readings": {
        name: None if r is None else {"seconds_per_token": r.seconds_per_token,
                                      "batch": r.batch, "waiting": r.waiting,
                                      "kv_usage": r.kv_usage, "kv_tokens": r.kv_tokens}
        for name, r in readings.items()}}) + "\n"


async def record(urls: Mapping[str, str], model: str, settings: PaceSpec, seconds: float,
                 out: Path, transport: httpx.AsyncBaseTransport | None = None) -> int:
    """Probe every replica each ``settings.interval_s`` for ``seconds``; return the rounds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(urls)
    rounds = 0
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=settings.timeout_s, transport=transport) as client:
        with out.open("w", encoding="utf-8") as trace:
            while (elapsed := time.monotonic() - start) < seconds:
                results = await asyncio.gather(*(
                    measure(client, urls[name], model, settings.tokens) for name in names))
                trace.write(round_line(elapsed, dict(zip(names, results, strict=True))))
                trace.flush()
                rounds += 1
                await asyncio.sleep(max(0.0, settings.interval_s
                                        - (time.monotonic() - start - elapsed)))
    return rounds


def load_trace(path: Path) -> list[Round]:
    """The rounds of a trace file; a replica whose probe failed is left out of its round."""
    rounds: list[Round] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SpecError(f"cannot read the trace {path}: {exc.strerror}",
                        hint="record one with `fleet bench trace`") from exc
    for number, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
            readings = {name: PaceReading(float(r["seconds_per_token"]), r["batch"],
                                          r.get("waiting"), r.get("kv_usage"),
                                          r.get("kv_tokens"))
                        for name, r in data["readings"].items() if r is not None}
            rounds.append((float(data["t"]), readings))
        except (ValueError, KeyError, TypeError) as exc:
            raise SpecError(f"{path}:{number} is not a trace round ({exc})",
                            hint="each line is {\"t\": s, \"readings\": {replica: {...}}}") from exc
    return rounds


@dataclass(frozen=True)
class Replay:
    """What the controller would have run over a trace."""

    # (t, weights) of every reload, the first configuration included.
    reloads: list[tuple[float, dict[str, int]]]
    # (t, replica, the pace verdict it moved to) of every move of the test.
    moves: list[tuple[float, str, float]]

    @property
    def weight_changes(self) -> int:
        return len(self.reloads) - 1


def replay(rounds: Sequence[Round], settings: ControllerSpec | None = None) -> Replay:
    """Fold the rounds through the pace tracker, the policy and its hysteresis."""
    settings = settings or ControllerSpec()
    names = tuple(sorted({name for _, readings in rounds for name in readings}))
    tracker = PaceTracker(settings.pace)
    desired: Decision | None = None
    applied: Decision | None = None
    last_reload: float | None = None
    differing_since: float | None = None
    reloads: list[tuple[float, dict[str, int]]] = []
    moves: list[tuple[float, str, float]] = []
    for now, readings in rounds:
        signals = tracker.fold(readings, now)
        moves += [(now, name, s.ratio) for name, s in signals.items() if s.just_moved]
        desired = decide(Snapshot(now=now, replicas=names, pace=signals, pacing=True,
                                  capacity=dict(tracker.capacity.signals)), desired, settings)
        differing_since = (None if not weights_differ(applied, desired)
                           else differing_since if differing_since is not None else now)
        apply, _ = should_apply(applied, desired, last_reload, settings, differing_since)
        if apply:
            applied, last_reload, differing_since = desired, now, None
            reloads.append((now, desired.weights()))
    return Replay(reloads, moves)
