"""The scenarios of `fleet bench scenario`: one module each, in this folder.

A module declares ``SCENARIOS``, a tuple of ``scenario_kit.Scenario``: the
name, how it runs on a ``Context``, which contenders ``--contenders`` may
name, and what its report adds (tables, plots). The registry finds every
module here, so adding a scenario is one new file and no dispatch.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import replace
from pathlib import Path

from router.bench.fleets import Progress
from router.bench.scenario_kit import FULL, TINY, Context, Scenario, ScenarioResult
from router.errors import ClusterError, SpecError


@functools.cache
def registry() -> dict[str, Scenario]:
    """Every scenario by name, in the order of their modules and declarations."""
    found: dict[str, Scenario] = {}
    for module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
        for scenario in importlib.import_module(f"{__name__}.{module}").SCENARIOS:
            if scenario.name in found:
                raise ValueError(f"scenario {scenario.name!r} is declared twice "
                                 f"(router/bench/scenarios/{module}.py)")
            found[scenario.name] = scenario
    return found


def lookup(name: str) -> Scenario:
    scenarios = registry()
    if name not in scenarios:
        raise SpecError(f"no scenario named {name!r}",
                        hint="scenarios are: " + ", ".join(sorted(scenarios)))
    return scenarios[name]


def check_contenders(scenario: Scenario, contenders: tuple[str, ...]) -> None:
    unknown = sorted(set(contenders) - set(scenario.contenders))
    if not unknown:
        return
    if not scenario.contenders:
        raise SpecError(f"--contenders: scenario {scenario.name} has no contenders to choose",
                        hint="leave --contenders out")
    raise SpecError(f"--contenders: no contender named {', '.join(unknown)}",
                    hint=f"contenders of {scenario.name} are: " + ", ".join(scenario.contenders))


def run_scenario(scenario: Scenario, work_dir: Path, tiny: bool, progress: Progress,
                 seed: int = 0, warmup_s: float | None = None, measure_s: float | None = None,
                 contenders: tuple[str, ...] = ()) -> ScenarioResult:
    size = TINY if tiny else FULL
    if warmup_s is not None:
        size = replace(size, warmup_s=warmup_s)
    if measure_s is not None:
        size = replace(size, measure_s=measure_s)
    ctx = Context(work_dir=work_dir, size=size, progress=progress, seed=seed,
                  contenders=contenders, tiny=tiny)
    try:
        return scenario.run(ctx)
    except ClusterError as exc:
        raise ClusterError(f"scenario {scenario.name}: {exc.message}", hint=exc.hint) from exc
