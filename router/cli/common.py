"""What every command group of the CLI shares: progress lines, --spec, tables,
and how a report names the command that produced it."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from router.config.spec import EXAMPLE_SPEC


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def spec_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, default=None, metavar="FILE",
                        help=f"cluster spec YAML (default: {EXAMPLE_SPEC})")


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def command_line(args: argparse.Namespace) -> str:
    """The command line a report names, so its figures can be repeated."""
    return "fleet " + shlex.join(args.argv_for_report)


def announce(written: list[Path], targets: list[tuple[str, str, bool | None]]) -> None:
    for path in written:
        print(path)
    for text, figure, met in targets:
        verdict = "not measured" if met is None else ("met" if met else "MISSED")
        progress(f"target: {text}: {figure} ({verdict})")
