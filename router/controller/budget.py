"""Token budgets per API key (spec budgets): the controller's ledger.

The gateway counts each answer's tokens (nginx/usage.js: the replica's
`usage`, or the events a cut stream got) into its access log; mtail sums
them per key (``fleet_gateway_key_tokens_total``). Every ``POLL_S`` the
ledger reads those counters straight from mtail, not through Prometheus,
whose scrape would let a key run a scrape interval past its budget; the
increments since the last reading go into a sliding window per key. A key
whose window holds its budget or more is flagged: one file per key, named
as its id, in a folder nginx tests before any limit counts a request
(nginx/flags.js answers 429 from it). The flag says when the window falls
below the budget again, which is the Retry-After; it is lifted then.

Tokens are counted when an answer ends, so the answers a key has in flight
count only once they end: left alone, a key with many in flight passes its
budget by all of them. So each answer is charged before it starts, at the
key's tokens per answer over the window. A key whose minute has room for N
more answers may have N / 2 in flight (snapped down to a level nginx keeps
a `limit_conn` zone for, BUDGET_CAP_LEVELS), a file per key in a second
folder: each of them may end between two readings while its client's next
request already started, and both must fit. With room for fewer than two
answers the key is over. So a key ends its minute between its budget less
two of its answers and its budget, as long as its answers take longer than
a reading (POLL_S) and it had at most the largest cap in flight when its
minute came within twice that many answers of its budget; a key far from
its budget has no cap.

``TokenWindow`` and ``assess`` are pure; ``BudgetBoard`` writes files;
``BudgetInput`` joins them to mtail and the key store on the controller's
schedule.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from router.config.spec import BUDGET_CAP_FOLDER, BUDGET_CAP_LEVELS, BUDGET_WINDOW_S
from router.controller.metrics import ControllerMetrics
from router.controller.policy import Snapshot
from router.disk.keys import load_store
from router.disk.paths import write_atomic
from router.errors import MetricsUnavailable
from router.fleet_status import BudgetsView, KeyBudgetView

log = logging.getLogger(__name__)

# How often the ledger reads mtail: a key at 1,000 tokens/s goes about this
# share of a second past its budget before the flag is up.
POLL_S = 0.25
# How long a cap is remembered as bounding what a key may still have running:
# answers that take longer than this can outlive the cap that let them in.
RUNNING_MEMORY_S = 30.0
TOKENS_METRIC = "fleet_gateway_key_tokens_total"
ANSWERS_METRIC = "fleet_gateway_key_requests_total"
# At a start, the last minute's tokens from Prometheus (the ledger's own
# window went with the process that held it).
SEED_QUERY = (f'sum by (key) (increase({TOKENS_METRIC}{{job="gateway_log"}}'
              f'[{int(BUDGET_WINDOW_S)}s]))')


class TokenWindow:
    """Each key's tokens, and the answers they came in, over the last
    ``window_s`` seconds."""

    def __init__(self, window_s: float = BUDGET_WINDOW_S) -> None:
        self.window_s = window_s
        # (when, tokens, answers) per reading that saw any.
        self._spent: dict[str, deque[tuple[float, float, float]]] = {}

    def add(self, key: str, tokens: float, at: float, answers: float = 0.0) -> None:
        if tokens > 0 or answers > 0:
            self._spent.setdefault(key, deque()).append((at, tokens, answers))

    def _expire(self, key: str, now: float) -> deque[tuple[float, float, float]]:
        spent = self._spent.get(key, deque())
        while spent and spent[0][0] <= now - self.window_s:
            spent.popleft()
        return spent

    def used(self, key: str, now: float) -> float:
        return sum(tokens for _at, tokens, _answers in self._expire(key, now))

    def answer_size(self, key: str, now: float) -> float:
        """The key's tokens per answer in the window; 0 without answers."""
        spent = self._expire(key, now)
        answers = sum(n for _at, _tokens, n in spent)
        return sum(tokens for _at, tokens, _n in spent) / answers if answers else 0.0

    def below_at(self, key: str, limit: float, now: float) -> float:
        """When the window will hold less than ``limit`` with no new tokens:
        ``now`` if it already does."""
        spent = self._expire(key, now)
        used = sum(tokens for _at, tokens, _n in spent)
        for at, tokens, _n in spent:
            if used < limit:
                break
            used -= tokens
            now = at + self.window_s
        return now

    def keys(self) -> list[str]:
        return list(self._spent)


@dataclass(frozen=True)
class KeyBudget:
    key: str
    used: int
    budget: int
    # When the window has room for another answer (epoch seconds); None: it has.
    over_until: float | None
    # Requests it may have in flight (a level of BUDGET_CAP_LEVELS); None: no cap.
    cap: int | None = None
    # The key's tokens per answer in the window: what each is charged.
    answer_size: int = 0

    @property
    def over(self) -> bool:
        return self.over_until is not None


def assess(window: TokenWindow, budgets: Mapping[str, int], now: float,
           running: Mapping[str, int] | None = None,
           levels: tuple[int, ...] = BUDGET_CAP_LEVELS) -> dict[str, KeyBudget]:
    """Each budgeted key's use. Answers are charged before they start, at the
    key's tokens per answer in the window: a key whose minute has room for N
    more may have N / 2 in flight (each may end unseen and be followed by
    another before the next reading; snapped down to ``levels``, no cap past
    the largest), and no more than the room left by what may still run
    (``running``: the largest cap the key had lately, when it had one). With
    room for fewer than two it is over until enough of the window's tokens
    age out."""
    running = running or {}
    out = {}
    for key, budget in budgets.items():
        used = window.used(key, now)
        size = window.answer_size(key, now)
        fits: float
        if used >= budget:
            fits = 0
        elif size > 0:
            room = math.floor((budget - used) / size)
            fits = room // 2
            if key in running:
                fits = min(fits, room - running[key])
        else:
            fits = math.inf  # nothing answered in the window: no size to charge
        if fits >= 1:
            cap = max((level for level in levels if level <= fits), default=None)
            out[key] = KeyBudget(key, int(used), budget, None,
                                 cap=None if fits > max(levels) else cap,
                                 answer_size=round(size))
            continue
        # Over until the window has room for two answers.
        limit = budget - 2 * size
        out[key] = KeyBudget(key, int(used), budget, window.below_at(key, limit, now),
                             answer_size=round(size))
    return out


@dataclass(frozen=True)
class KeyCounters:
    """mtail's counters per key id: tokens, and answers (status 200)."""

    tokens: dict[str, float]
    answers: dict[str, float]


class CounterDeltas:
    """What a labelled counter gained between readings. The first reading only
    sets the baseline (when those tokens were spent is unknown); a counter
    lower than before was reset (mtail restarted), so all of it is new."""

    def __init__(self) -> None:
        self._last: dict[str, float] | None = None

    def update(self, values: Mapping[str, float]) -> dict[str, float]:
        last, self._last = self._last, dict(values)
        if last is None:
            return {}
        return {key: value - last.get(key, 0.0) if value >= last.get(key, 0.0) else value
                for key, value in values.items()}


def parse_key_counters(text: str) -> KeyCounters:
    """Each key's tokens and answers so far, from mtail's /metrics."""
    counters = KeyCounters({}, {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.labels.get("key")
            if key is None:
                continue
            if sample.name == TOKENS_METRIC:
                counters.tokens[key] = sample.value
            elif sample.name == ANSWERS_METRIC and sample.labels.get("status") == "200":
                counters.answers[key] = sample.value
    return counters


class CounterSource(Protocol):
    async def key_counters(self) -> KeyCounters:
        """Raises MetricsUnavailable."""
        ...

    async def close(self) -> None: ...


class MtailCounters:
    """The gateway log exporter's counters, read over HTTP."""

    def __init__(self, url: str, timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport)

    async def key_counters(self) -> KeyCounters:
        try:
            response = await self._client.get(self.url)
            response.raise_for_status()
            return parse_key_counters(response.text)
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricsUnavailable(f"the gateway's log exporter did not answer at "
                                     f"{self.url}: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()


class BudgetBoard:
    """The folders nginx tests for keys over their budget (a file per key,
    named as its id, saying until when and why) and capped near it (a file
    per key holding the requests it may have in flight)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.caps = folder / BUDGET_CAP_FOLDER
        self._written: dict[Path, str] = {}

    def clear(self) -> None:
        """No key flagged: at a start, so flags a stopped controller left never hold."""
        for folder in (self.folder, self.caps):
            folder.mkdir(parents=True, exist_ok=True)
            for flag in folder.iterdir():
                if flag.is_file() and not flag.name.startswith("."):
                    flag.unlink(missing_ok=True)
        self._written.clear()

    def publish(self, states: Mapping[str, KeyBudget]) -> None:
        """Flags for the keys over their budget and the caps of those near it;
        every other flag lifted. A flag is written only when its text changes
        (a key over budget spends nothing, so its flag stays as it was)."""
        wanted: dict[Path, str] = {}
        for key, state in states.items():
            if state.over_until is not None:
                wanted[self.folder / key] = json.dumps(
                    {"until": round(state.over_until, 3), "used": state.used,
                     "budget": state.budget, "answer": state.answer_size}) + "\n"
            elif state.cap is not None:
                wanted[self.caps / key] = f"{state.cap}\n"
        # New flags first: a key going from over to capped is never unflagged
        # for a moment in between.
        for flag, text in wanted.items():
            if self._written.get(flag) != text:
                write_atomic(flag, text)
                self._written[flag] = text
        for flag in [f for f in self._written if f not in wanted]:
            flag.unlink(missing_ok=True)
            del self._written[flag]


class RecentCaps:
    """The caps each key had over the last ``memory_s``: what a cap let in may
    still be running when the cap goes down, so the largest of them bounds a
    key's requests in flight. What a key let in while it had no cap is taken
    to be within half the room it had when its first cap came (that cap's
    own rule); a key with no cap in that time has no bound."""

    def __init__(self, memory_s: float = RUNNING_MEMORY_S) -> None:
        self.memory_s = memory_s
        self._caps: dict[str, deque[tuple[float, int | None]]] = {}

    def record(self, states: Mapping[str, KeyBudget], now: float) -> None:
        for key, state in states.items():
            self._caps.setdefault(key, deque()).append(
                (now, 0 if state.over else state.cap))
        for key in [k for k in self._caps if k not in states]:
            del self._caps[key]

    def running(self, now: float) -> dict[str, int]:
        out = {}
        for key, caps in self._caps.items():
            while caps and caps[0][0] <= now - self.memory_s:
                caps.popleft()
            bounded = [cap for _at, cap in caps if cap is not None]
            if bounded:
                out[key] = max(bounded)
        return out


class KeyBudgets:
    """Each active key's tokens per minute, from the key store, read again
    when `fleet keys` changed it."""

    def __init__(self, store: Path, default: int | None) -> None:
        self.store = store
        self.default = default
        self._stamp: tuple[int, int] | None = None
        self._budgets: dict[str, int] = {}
        self.names: dict[str, str] = {}

    def __call__(self) -> dict[str, int]:
        try:
            stat = self.store.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            keys = load_store(self.store)
            self._budgets = keys.budgets(self.default)
            self.names = {k.id: k.name for k in keys.active()}
            self._stamp = stamp
        return self._budgets


class BudgetInput:
    """Flags API keys over their token budgets; asks for no weight decision."""

    name = "budgets"

    def __init__(self, counters: CounterSource, budgets: Callable[[], dict[str, int]],
                 board: BudgetBoard, clock: Callable[[], float],
                 metrics: ControllerMetrics | None = None,
                 names: Callable[[], Mapping[str, str]] = dict,
                 seeder: Callable[[], Awaitable[Mapping[str, float]]] | None = None,
                 window_s: float = BUDGET_WINDOW_S) -> None:
        """``seeder``: the last window's tokens per key from before this
        process (Prometheus), asked once at the first poll."""
        self.counters = counters
        self.budgets = budgets
        self.board = board
        self.clock = clock
        self.metrics = metrics
        self.names = names
        self.seeder = seeder
        self.window = TokenWindow(window_s)
        self.caps = RecentCaps()
        self.token_deltas = CounterDeltas()
        self.answer_deltas = CounterDeltas()
        self.states: dict[str, KeyBudget] = {}
        self.error: str | None = None
        try:
            self.board.clear()
        except OSError as exc:
            log.error("budgets decision=hold reason=cannot clear the budget flags in %s: %s",
                      board.folder, exc.strerror or exc)

    @property
    def interval_s(self) -> float:
        return POLL_S

    async def _seed(self, now: float) -> None:
        """The last window's tokens per key, from before this process started,
        taken as spent half a window ago: they age out in half a window."""
        seeder, self.seeder = self.seeder, None
        if seeder is None:
            return
        try:
            spent = await seeder()
        except MetricsUnavailable as exc:
            log.warning("budgets decision=start reason=no tokens from before this start: %s",
                        exc.message)
            return
        for key, tokens in spent.items():
            if math.isfinite(tokens):
                self.window.add(key, tokens, now - self.window.window_s / 2)

    async def poll(self, in_rotation: Sequence[str] = ()) -> bool:
        now = self.clock()
        await self._seed(now)
        try:
            counters = await self.counters.key_counters()
            gained = self.token_deltas.update(counters.tokens)
            answered = self.answer_deltas.update(counters.answers)
            self.error = None
        except MetricsUnavailable as exc:
            # No new tokens seen: flags stay as the window says, aging out.
            gained, answered = {}, {}
            self.error = exc.message
        for key in gained.keys() | answered.keys():
            self.window.add(key, gained.get(key, 0.0), now, answered.get(key, 0.0))
        try:
            budgets = self.budgets()
        except Exception as exc:  # a key store mid-edit or unreadable: keep the last
            log.error("budgets decision=hold reason=cannot read the key store: %s", exc)
            budgets = {key: state.budget for key, state in self.states.items()}
        states = assess(self.window, budgets, now, self.caps.running(now))
        for key, state in states.items():
            before = self.states.get(key)
            if before is None or (state.over, state.cap) != (before.over, before.cap):
                log.info("budgets key=%s decision=%s reason=%d of %d tokens in the last %gs%s",
                         key, _verdict(state), state.used, state.budget,
                         self.window.window_s,
                         f" retry_after={state.over_until - now:.1f}s"
                         if state.over_until is not None else "")
        try:
            self.board.publish(states)
        except OSError as exc:
            log.error("budgets decision=hold reason=cannot write the budget flags in %s: %s",
                      self.board.folder, exc.strerror or exc)
            return False
        self.states = states
        self.caps.record(states, now)
        self._export(now)
        return False

    def _export(self, now: float) -> None:
        if self.metrics is None:
            return
        for key in set(self.states) | set(self.window.keys()):
            self.metrics.key_tokens.labels(key=key).set(self.window.used(key, now))
        for key, state in self.states.items():
            self.metrics.key_over_budget.labels(key=key).set(int(state.over))

    def view(self) -> BudgetsView:
        now = self.clock()
        names = self.names()
        return BudgetsView(window_s=self.window.window_s, error=self.error, keys=[
            KeyBudgetView(key=s.key, name=names.get(s.key), used=s.used, budget=s.budget,
                          over=s.over, in_flight_cap=s.cap,
                          retry_after_s=None if s.over_until is None
                          else max(1, math.ceil(s.over_until - now)))
            for s in sorted(self.states.values(), key=lambda s: s.key)])

    def observe(self, snapshot: Snapshot) -> Snapshot:
        return snapshot

    async def close(self) -> None:
        await self.counters.close()


def _verdict(state: KeyBudget) -> str:
    if state.over:
        return "over"
    return "within" if state.cap is None else f"{state.cap} in flight at most"
