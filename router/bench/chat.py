"""Multi-turn conversations as load: what prefix caching and affinity are for.

Each conversation belongs to a tenant, whose long system prompt every one of
its conversations shares; each turn re-sends the whole history plus a new user
message, streamed, then the client "reads" for an exponential think time. A
conversation sends ``X-Session-Id`` (the console does too, and vLLM's router
keys its consistent hash on it): its own id, or its tenant's, as a client
does that keys on the prompt it shares (OpenAI's prompt_cache_key advice).
One tenant can be hot: ``hot_share`` of the conversations are its. Texts are
pseudo-words from a seeded random generator, so two runs with the same seed
send the same bytes.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

from router.bench.client import Connection, Target, run_request
from router.bench.load import Range, RunResult
from router.bench.stats import RequestRecord

# The simulator counts four characters a token (router.sim.server.count_tokens).
CHARS_PER_TOKEN = 4


# What a conversation's X-Session-Id names: itself, its tenant, or nothing
# (no header: a gateway with `affinity: session` balances its turns freely).
KeyBy = Literal["conversation", "tenant", "none"]


@dataclass(frozen=True)
class ChatWorkload:
    tenants: int = 20
    system_tokens: int = 2000
    conversations: int = 400
    turns: Range = (6, 10)
    user_tokens: Range = (20, 60)
    output_tokens: Range = (32, 64)
    think_s: float = 2.0
    # Conversations in flight at once; a finished one starts the next.
    concurrent: int = 96
    seed: int = 0
    # The share of conversations that are tenant 0's; 0: tenants equally likely.
    hot_share: float = 0.0
    key_by: KeyBy = "conversation"
    model: str = "sim-model"


def _text(rng: random.Random, tokens: int) -> str:
    words: list[str] = []
    length = 0
    while length < tokens * CHARS_PER_TOKEN:
        word = f"w{rng.randrange(100_000)}"
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


@dataclass
class ChatRun:
    result: RunResult
    # (conversation, turn) of each record, in the order of result.records
    turns: list[tuple[int, int]]


def session_headers(workload: ChatWorkload, number: int, tenant: int) -> list[tuple[str, str]]:
    """The affinity key a conversation sends, as ``workload.key_by`` says."""
    if workload.key_by == "tenant":
        return [("X-Session-Id", f"tenant-{tenant}")]
    if workload.key_by == "conversation":
        return [("X-Session-Id", f"conversation-{workload.seed}-{number}")]
    return []


async def _conversation(url: str, workload: ChatWorkload, number: int, systems: list[str],
                        key: str | None, run_start: float,
                        into: list[tuple[RequestRecord, int, int]]) -> None:
    rng = random.Random(f"{workload.seed}:{number}")
    tenant = rng.randrange(len(systems))
    if workload.hot_share and random.Random(f"{workload.seed}:hot:{number}").random() \
            < workload.hot_share:
        tenant = 0
    headers = session_headers(workload, number, tenant)
    if key:
        headers.append(("Authorization", f"Bearer {key}"))
    base = Target.from_url(url, "/v1/chat/completions")
    conn = Connection(Target(base.host, base.port, base.path, tuple(headers)))
    messages: list[dict[str, Any]] = [{"role": "system", "content": systems[tenant]}]
    try:
        for turn in range(rng.randint(*workload.turns)):
            if turn:
                await asyncio.sleep(rng.expovariate(1 / workload.think_s))
            messages.append({"role": "user",
                             "content": _text(rng, rng.randint(*workload.user_tokens))})
            answer_tokens = rng.randint(*workload.output_tokens)
            body = json.dumps({"model": workload.model, "messages": messages, "stream": True,
                               "stream_options": {"include_usage": True},
                               "max_tokens": answer_tokens, "ignore_eos": True,
                               "temperature": 0}).encode()
            record = await run_request(conn, body, True, run_start)
            into.append((record, number, turn))
            if not record.ok:
                return
            # What the client shows and sends back; the length is what matters.
            messages.append({"role": "assistant", "content": _text(rng, answer_tokens)})
    finally:
        conn.close()


async def run_conversations(url: str, workload: ChatWorkload, key: str | None = None
                            ) -> ChatRun:
    """Every conversation of ``workload``, ``concurrent`` at a time."""
    tenants = random.Random(f"{workload.seed}:tenants")
    systems = [f"Tenant {i}. " + _text(tenants, workload.system_tokens)
               for i in range(workload.tenants)]
    run_start = time.perf_counter()
    cpu_start = time.process_time()
    done: list[tuple[RequestRecord, int, int]] = []
    queue = iter(range(workload.conversations))

    async def worker() -> None:
        for number in queue:
            await _conversation(url, workload, number, systems, key, run_start, done)

    await asyncio.gather(*(worker() for _ in range(workload.concurrent)))
    wall = time.perf_counter() - run_start
    done.sort(key=lambda item: item[0].start)
    result = RunResult(records=[r for r, _, _ in done], duration_s=wall, send_lag_p99_s=None,
                       dropped=0, client_cpu_share=(time.process_time() - cpu_start) / wall)
    return ChatRun(result, [(c, t) for _, c, t in done])
