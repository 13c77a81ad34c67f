"""What a benchmark run measured, as numbers: pure functions over request records.

Definitions follow vLLM's `bench serve` so figures compare with the field's:
- TTFT: request sent -> first content token (streamed) or -> whole answer
  (non-streamed, where TTFT equals E2E).
- ITL: the gaps between consecutive content chunks of a stream, pooled over
  all requests for the percentiles.
- TPOT: per request, (E2E - TTFT) / (output tokens - 1); the ITL SLO of
  goodput is checked against it, as vLLM's goodput does.
- Goodput: requests per second that succeeded and met every SLO given.
Percentiles interpolate linearly between closest ranks (numpy's default).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from router.errors import SpecError

# Where a failed request failed.
CONNECT = "connect"                   # no connection to the gateway
BEFORE_FIRST_BYTE = "before_first_byte"  # connected, no answer started
HTTP_STATUS = "http_status"           # answered with a non-200 status
MID_STREAM = "mid_stream"             # 200 started, then broke off
PHASES = (CONNECT, BEFORE_FIRST_BYTE, HTTP_STATUS, MID_STREAM)
# The failures a client sees before any answer starts: what a drill, a soak or
# an outage must keep at zero (a stream broken mid-way is counted apart).
NOT_STARTED = (CONNECT, BEFORE_FIRST_BYTE, HTTP_STATUS)


def failed_before_first_byte(records: Iterable[RequestRecord]) -> int:
    return sum(1 for r in records if r.error_phase in NOT_STARTED)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it; times in seconds from the run's start."""

    start: float
    status: int | None
    replica: str | None = None
    ttft: float | None = None
    e2e: float | None = None
    itl: tuple[float, ...] = ()
    output_tokens: int = 0
    # Prompt + completion, as the answer's usage says; None without a usage.
    total_tokens: int | None = None
    error_phase: str | None = None
    error: str | None = None
    # A non-200's seconds from sending to its whole answer (a 429's speed).
    refused_in: float | None = None
    # Its Retry-After header, in seconds.
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.error_phase is None and self.status == 200

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Slo:
    """Service level objectives for goodput; None means not checked."""

    ttft_s: float | None = None
    itl_s: float | None = None
    e2e_s: float | None = None

    def met_by(self, record: RequestRecord) -> bool:
        if not record.ok:
            return False
        checks = ((self.ttft_s, record.ttft), (self.itl_s, record.tpot), (self.e2e_s, record.e2e))
        return all(limit is None or value is None or value <= limit
                   for limit, value in checks)

    def describe(self) -> str:
        parts = [f"{name}<={_duration(value)}" for name, value in
                 (("ttft", self.ttft_s), ("itl", self.itl_s), ("e2e", self.e2e_s))
                 if value is not None]
        return ", ".join(parts) or "none"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


_SLO_ITEM = re.compile(r"^(ttft|itl|e2e)=([0-9]*\.?[0-9]+)(ms|s)$")


def parse_slo(text: str) -> Slo:
    """'ttft=2s,itl=50ms,e2e=30s' -> Slo; any subset, in any order."""
    values: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _SLO_ITEM.match(item)
        if not match:
            raise SpecError(f"--slo: {item!r} is not NAME=DURATION",
                            hint="write e.g. --slo ttft=2s,itl=50ms,e2e=30s "
                                 "(names: ttft, itl, e2e; units: ms, s)")
        name, number, unit = match.groups()
        if name in values:
            raise SpecError(f"--slo: {name} is given twice", hint="give each SLO once")
        values[name] = float(number) / (1000 if unit == "ms" else 1)
    return Slo(values.get("ttft"), values.get("itl"), values.get("e2e"))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    def clean(x: float) -> float | None:
        return None if math.isnan(x) else x

    return {"p50": clean(percentile(values, 50)), "p90": clean(percentile(values, 90)),
            "p99": clean(percentile(values, 99)),
            "mean": (sum(values) / len(values)) if values else None}


def _failure_examples(failed: Iterable[RequestRecord], kinds: int = 5) -> dict[str, int]:
    """The commonest ways requests failed, each with its count: what a report
    shows beside a failure count, so a failure says why without the logs."""
    def kind(record: RequestRecord) -> str:
        phase = record.error_phase or HTTP_STATUS
        status = f" {record.status}" if phase == HTTP_STATUS and record.status is not None else ""
        error = f": {' '.join(record.error.split())[:160]}" if record.error else ""
        return phase + status + error

    return dict(Counter(kind(r) for r in failed).most_common(kinds))


def summarize(records: Sequence[RequestRecord], duration_s: float, slo: Slo) -> dict[str, Any]:
    """Latency percentiles, throughput, goodput and errors of one run."""
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    ok = [r for r in records if r.ok]
    errors = Counter(r.error_phase or HTTP_STATUS for r in records if not r.ok)
    statuses = Counter(str(r.status) for r in records if r.status is not None and not r.ok)
    good = [r for r in ok if slo.met_by(r)]
    tokens = sum(r.output_tokens for r in ok)
    return {
        "requests": len(records),
        "succeeded": len(ok),
        "failed": len(records) - len(ok),
        "errors_by_phase": {phase: errors.get(phase, 0) for phase in PHASES},
        "failed_statuses": dict(sorted(statuses.items())),
        "failure_examples": _failure_examples(r for r in records if not r.ok),
        "duration_s": duration_s,
        "request_throughput": len(ok) / duration_s,
        "output_token_throughput": tokens / duration_s,
        "goodput": len(good) / duration_s,
        "slo": slo.describe(),
        "ttft_s": _spread([r.ttft for r in ok if r.ttft is not None]),
        "itl_s": _spread([gap for r in ok for gap in r.itl]),
        "tpot_s": _spread([t for r in ok if (t := r.tpot) is not None]),
        "e2e_s": _spread([r.e2e for r in ok if r.e2e is not None]),
        "by_replica": dict(sorted(Counter(r.replica or "?" for r in ok).items())),
    }
