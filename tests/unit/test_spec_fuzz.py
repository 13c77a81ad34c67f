"""Spec fuzzing: thousands of specs drawn from the spec's JSON schema, and valid
ones broken in one to three places. Each is accepted, and then renders, or is
rejected with a one-line SpecError and a hint; never a traceback.

The seed is fixed (derandomize), so a failure here repeats on every machine.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from router.config.plan import build_plan, choose_engine
from router.config.spec import (
    EXAMPLE_SPEC,
    ClusterSpec,
    load_spec,
    parse_spec,
    resolve_engine_settings,
)
from router.disk.keys import KeyStore
from router.disk.paths import RuntimePaths
from router.errors import FleetError, SpecError
from router.render.files import render_all
from tests.support.fakes import cpu_inventory, gpu_inventory
from tests.support.specgen import mutated, specs
from tests.unit.test_render import MACHINE

SCHEMA = ClusterSpec.model_json_schema()
EXAMPLE = yaml.safe_load(EXAMPLE_SPEC.read_text(encoding="utf-8"))


def fuzz(examples: int) -> settings:
    # No explain phase: tracing every line of a failing example took longer
    # than the test's time limit, which then hid the failure itself.
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


def _accepted_or_one_clear_line(data: Any) -> ClusterSpec | None:
    try:
        spec = parse_spec(data, source="fuzz.yaml")
    except SpecError as exc:
        event("rejected")
        assert "\n" not in exc.message, exc.message
        assert exc.message.startswith("fuzz.yaml: ")
        assert exc.hint
        assert "Traceback" not in exc.message
        return None
    event("accepted")
    return spec


def _renders_or_refuses(spec: ClusterSpec) -> None:
    """An accepted spec plans and renders on a CPU box and a 4-GPU box, or says why not."""
    for inventory in (cpu_inventory(2), gpu_inventory(4)):
        try:
            settings_ = resolve_engine_settings(spec, choose_engine(spec, inventory))
            plan = build_plan(spec, settings_, inventory, "/models/m", MACHINE.python)
            render_all(plan, RuntimePaths(Path("/var/lib/llm-fleet")), MACHINE, KeyStore(()))
        except FleetError as exc:
            event(f"refused on {'a GPU box' if inventory.gpus else 'a CPU box'}")
            assert "\n" not in exc.message, exc.message
            assert exc.hint, exc.message


@fuzz(1000)
@given(specs(SCHEMA))
def test_specs_drawn_from_the_schema(data: dict[str, Any]) -> None:
    spec = _accepted_or_one_clear_line(data)
    if spec is not None:
        _renders_or_refuses(spec)


@fuzz(1000)
@given(mutated(st.one_of(st.just(EXAMPLE), specs(SCHEMA))))
def test_valid_specs_broken_in_a_few_places(data: Any) -> None:
    spec = _accepted_or_one_clear_line(data)
    if spec is not None:
        _renders_or_refuses(spec)


@fuzz(300)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(
    lambda raw: raw.decode("utf-8", errors="replace"))))
def test_any_file_text_is_a_spec_or_one_clear_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_spec(path)
        except SpecError as exc:
            assert "\n" not in exc.message, exc.message
            assert exc.hint or "cannot read" in exc.message
