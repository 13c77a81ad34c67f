"""Interval time for the controller's loops, injected so tests run them on
virtual time (tests/unit/test_controller_loop.py) instead of sleeping.

Loops measure intervals on a monotonic clock: the wall clock (the
controller's ``Clock``, for timestamps and signal ages) may step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Timer(Protocol):
    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealTimer:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def every(timer: Timer, interval_s: float, started: float) -> None:
    """Sleep out what is left of an interval that began at ``started``."""
    await timer.sleep(max(0.0, interval_s - (timer.monotonic() - started)))
