"""The lock and progress file of `fleet apply`, read by `fleet status` too."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager

from router.disk.paths import RuntimePaths
from router.errors import ClusterError


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


def apply_lock_held(paths: RuntimePaths) -> bool:
    """Whether a `fleet apply` is running on this cluster now."""
    if not paths.apply_lock.exists():
        return False
    with open(paths.apply_lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def read_rollout(paths: RuntimePaths) -> dict[str, object] | None:
    """The progress of the apply under way, or None when none runs."""
    if not apply_lock_held(paths):
        return None
    try:
        data: dict[str, object] = json.loads(paths.rollout_json.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return data
