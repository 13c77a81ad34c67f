"""The lock and progress file of `fleet apply`; `fleet status` and the console read
the progress."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from router.disk.paths import RuntimePaths, write_atomic
from router.errors import ClusterError
from router.runtime.procs import process_alive


@contextmanager
def apply_lock(paths: RuntimePaths) -> Iterator[None]:
    """Held by one apply for its whole run; a second one is refused at once."""
    paths.apply_lock.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.apply_lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ClusterError("another `fleet apply` is changing this cluster",
                               hint="wait for it to finish; `fleet status` shows its "
                                    "progress") from exc
        try:
            yield
        finally:
            paths.rollout_json.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class RolloutProgress:
    """What a `fleet apply` under way is doing, as `rollout.json` holds it."""

    step: str
    generation: str | None = None
    done: tuple[str, ...] = ()
    pid: int = 0

    def save(self, paths: RuntimePaths) -> None:
        write_atomic(paths.rollout_json, json.dumps(asdict(self), indent=2) + "\n")


def read_rollout(paths: RuntimePaths) -> RolloutProgress | None:
    """The progress of the apply under way; None when none runs (also when
    the one that wrote the file was killed before it could remove it)."""
    try:
        data = json.loads(paths.rollout_json.read_text(encoding="utf-8"))
        progress = RolloutProgress(step=str(data["step"]), generation=data.get("generation"),
                                   done=tuple(data.get("done") or ()), pid=int(data["pid"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    # Its pid, not the lock: probing the lock could refuse an apply starting then.
    return progress if process_alive(progress.pid) else None
