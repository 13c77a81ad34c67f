"""A two-sided CUSUM with a stated false-alarm rate. Pure: no I/O, no clock.

Each round brings one observation ``x`` per replica: how far (in log seconds
per token) the replica reads from the fleet at equal load, minus the level
its weight already reflects. On an equal fleet ``x`` is noise around 0 with
scale ``sigma``; a replica that turned slower shifts it. Page's CUSUM sums
the evidence for a shift of at least ``delta`` either way::

    S+ = max(0, S+ + min(x - k, cap))      k = delta / 2
    S- = max(0, S- + min(-x - k, cap))     cap = h / min_rounds

and alarms when either sum reaches ``h``. ``k`` is half the smallest shift
worth acting on (the optimal reference value for that shift); ``cap`` bounds
what one round may add, so no alarm ever rests on fewer than ``min_rounds``
rounds, however extreme one of them is.

``h`` is chosen for a false-alarm budget: Siegmund's approximation of the
average run length of a one-sided CUSUM of unit-variance normal increments
with drift ``mu`` (Siegmund 1985, as used in Montgomery's *Introduction to
Statistical Quality Control*)::

    ARL(mu) = (exp(-2 D b) + 2 D b - 1) / (2 D^2),   D = mu - k,  b = h + 1.166

With ``mu = 0`` it is the mean number of rounds between false alarms of one
side. The cap only ever lowers an increment, so it can only lengthen that
run: the budget is an upper bound on the false-alarm rate, not an estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Siegmund's correction for the overshoot of a normal random walk at the boundary.
_OVERSHOOT = 1.166
# Threshold search bounds, in units of sigma: the budget is met long before.
_H_MAX = 200.0


def run_length(drift: float, k: float, h: float) -> float:
    """Mean rounds to an alarm of one side (unit-variance increments, drift in sigma)."""
    d = drift - k
    b = h + _OVERSHOOT
    if abs(d) < 1e-9:
        return b * b
    exponent = -2 * d * b
    if exponent > 700:  # beyond float range: an alarm that never comes
        return math.inf
    return (math.exp(exponent) + 2 * d * b - 1) / (2 * d * d)


def threshold(k: float, false_alarm_rounds: float) -> float:
    """The smallest ``h`` (in sigma) whose two-sided CUSUM alarms falsely at
    most once in ``false_alarm_rounds`` rounds on pure noise."""
    # Two sides alarm independently: each must last twice as long.
    wanted = 2 * false_alarm_rounds
    low, high = 0.0, _H_MAX
    if run_length(0.0, k, low) >= wanted:
        return low
    for _ in range(60):
        mid = (low + high) / 2
        if run_length(0.0, k, mid) >= wanted:
            high = mid
        else:
            low = mid
    return high


def detection_rounds(shift: float, k: float, h: float, min_rounds: int) -> float:
    """Mean rounds to detect a shift of ``shift`` sigma (never fewer than ``min_rounds``)."""
    return max(float(min_rounds), run_length(shift, k, h))


@dataclass
class Cusum:
    """The two sums of one replica, and how many rounds each has been building."""

    high: float = 0.0
    low: float = 0.0
    high_rounds: int = 0
    low_rounds: int = 0

    def add(self, x: float, k: float, cap: float) -> None:
        self.high = max(0.0, self.high + min(x - k, cap))
        self.low = max(0.0, self.low + min(-x - k, cap))
        self.high_rounds = self.high_rounds + 1 if self.high > 0 else 0
        self.low_rounds = self.low_rounds + 1 if self.low > 0 else 0

    @property
    def statistic(self) -> float:
        return max(self.high, self.low)

    @property
    def rounds(self) -> int:
        """The rounds behind the larger sum: the evidence an alarm would rest on."""
        return self.high_rounds if self.high >= self.low else self.low_rounds

    def reset(self) -> None:
        self.high = self.low = 0.0
        self.high_rounds = self.low_rounds = 0
