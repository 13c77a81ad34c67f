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


async def flip_or_timeout(timer: Timer, event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass: True when it was set."""
    if event.is_set():
        return True
    flipped = asyncio.ensure_future(event.wait())
    timeout = asyncio.ensure_future(timer.sleep(seconds))
    try:
        await asyncio.wait({flipped, timeout}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (flipped, timeout):
            task.cancel()
    return event.is_set()
