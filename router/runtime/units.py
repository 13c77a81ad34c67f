"""`fleet render systemd`: the unit files written for this machine."""

from __future__ import annotations

from pathlib import Path

from router.config.spec import EXAMPLE_SPEC, ClusterSpec
from router.disk.paths import write_atomic
from router.host.machine import detect
from router.render.systemd import render_units
from router.runtime import cluster


def write_units(spec: ClusterSpec, spec_path: Path | None, out_dir: Path) -> list[Path]:
    plan = cluster.make_plan(spec, require_model=False)
    units = render_units(plan, (spec_path or EXAMPLE_SPEC).resolve(), detect())
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units.items():
        write_atomic(out_dir / name, text)
        written.append(out_dir / name)
    return written
