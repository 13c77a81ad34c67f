"""supervisord event listener of a gateway pair: tells keepalived at once when
this host's nginx stops or starts.

Usage: python -m router.gateway_watch --flag FILE [--program gateway]

supervisord sends every process state change of its programs; this writes
0 to FILE while the gateway program is RUNNING and 1 otherwise. keepalived
tracks FILE (a `track_file` with weight 0, read on every change), so a
gateway whose nginx died gives the address up within milliseconds instead
of after its health check has failed `fall` times. The health check still
covers everything else (a gateway that runs but cannot reach a replica).
The protocol is supervisord's event listener protocol: READY, a header line,
a payload, RESULT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

STATE_EVENT = "PROCESS_STATE_"


def parse_fields(text: str) -> dict[str, str]:
    return dict(part.split(":", 1) for part in text.split() if ":" in part)


def flag_for(header: dict[str, str], payload: dict[str, str], program: str) -> str | None:
    """What the flag file says after this event: "0", "1", or None to leave it."""
    event = header.get("eventname", "")
    if not event.startswith(STATE_EVENT) or payload.get("processname") != program:
        return None
    return "0" if event == STATE_EVENT + "RUNNING" else "1"


def write_flag(flag: Path, value: str) -> None:
    # In place: keepalived reads the file when it is closed after a write.
    with flag.open("w", encoding="ascii") as handle:
        handle.write(value + "\n")


def serve(flag: Path, program: str, stdin: TextIO, stdout: TextIO, log: TextIO) -> None:
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return
        header = parse_fields(line)
        payload = parse_fields(stdin.read(int(header.get("len", "0"))))
        value = flag_for(header, payload, program)
        if value is not None:
            write_flag(flag, value)
            print(f"gateway_watch: {program} {header['eventname'].removeprefix(STATE_EVENT)} "
                  f"decision=flag-{value} reason="
                  + ("serving" if value == "0" else "not serving: keepalived gives the "
                                                    "address up"), file=log, flush=True)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.gateway_watch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flag", type=Path, required=True)
    parser.add_argument("--program", default="gateway")
    args = parser.parse_args(argv)
    serve(args.flag, args.program, sys.stdin, sys.stdout, sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
