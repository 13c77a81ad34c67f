"""The scenarios of `fleet bench scenario`, by name, and how one is run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from router.bench.fleets import Progress
from router.bench.scenario import (
    FULL,
    TINY,
    Context,
    ScenarioResult,
    chat,
    overhead,
    policies,
    reloads,
    scaling,
)
from router.bench.stability import stability
from router.errors import ClusterError, SpecError

RUNNERS: dict[str, Callable[[Context], ScenarioResult]] = {
    "overhead": overhead,
    "heterogeneous": lambda ctx: policies(ctx, heterogeneous=True),
    "homogeneous": lambda ctx: policies(ctx, heterogeneous=False),
    "scaling": scaling,
    "reloads": reloads,
    "chat": chat,
    "chat-hot": lambda ctx: chat(ctx, hot=True),
    "stability": stability,
}
SCENARIOS = tuple(RUNNERS)


def run_scenario(name: str, work_dir: Path, tiny: bool, progress: Progress,
                 seed: int = 0, warmup_s: float | None = None, measure_s: float | None = None,
                 contenders: tuple[str, ...] = ()) -> ScenarioResult:
    if name not in RUNNERS:
        raise SpecError(f"no scenario named {name!r}",
                        hint="scenarios are: " + ", ".join(SCENARIOS))
    size = TINY if tiny else FULL
    if warmup_s is not None:
        size = replace(size, warmup_s=warmup_s)
    if measure_s is not None:
        size = replace(size, measure_s=measure_s)
    ctx = Context(work_dir=work_dir, size=size, progress=progress, seed=seed,
                  contenders=contenders)
    try:
        return RUNNERS[name](ctx)
    except ClusterError as exc:
        raise ClusterError(f"scenario {name}: {exc.message}", hint=exc.hint) from exc
