"""The `fleet` command line: one module per command group, composed here.

Errors reach the user as one `error:` line and one `hint:` line, with an exit
status per error class (see router.errors); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from router import __version__
from router.cli import admin, bench, cluster, host, keys, render, sim
from router.errors import FleetError

# In the order `fleet --help` lists them: running, configuring, measuring, hosts.
GROUPS = (cluster, render, keys, admin, bench, host, sim)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet", description="Serve one LLM as several vLLM replicas behind one gateway URL.")
    parser.add_argument("--version", action="version", version=f"llm-fleet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # What a report names as its command when fleet runs in-process.
    args.argv_for_report = list(argv) if argv is not None else sys.argv[1:]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # One line per HTTP call is noise at the command line; -v shows them.
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
        return code
    except FleetError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours.
        sys.stderr.close()
        return 0
