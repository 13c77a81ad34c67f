"""The official openai client through the gateway: chat, stream and completion,
which replica answered each (X-Fleet-Replica), then a first burst right after
`fleet up` with the model's default sampling, whose slowest time to first
token shows whether any client paid the GPU kernels' first-batch compile.

usage: python3 client_checks.py GATEWAY_URL MODEL
"""

from __future__ import annotations

import asyncio
import collections
import json
import statistics
import sys
import time

from openai import AsyncOpenAI, OpenAI


def checks(url: str, model: str) -> dict[str, object]:
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    replicas: collections.Counter[str] = collections.Counter()
    chat = client.chat.completions.with_raw_response.create(
        model=model, max_tokens=16, messages=[{"role": "user", "content": "Say hello."}])
    replicas[chat.headers.get("x-fleet-replica", "?")] += 1
    parsed = chat.parse()
    chunks = 0
    with client.chat.completions.create(model=model, max_tokens=16, stream=True,
                                        messages=[{"role": "user", "content": "Count."}]) as s:
        for _chunk in s:
            chunks += 1
    completion = client.completions.with_raw_response.create(
        model=model, prompt="The capital of France is", max_tokens=8)
    replicas[completion.headers.get("x-fleet-replica", "?")] += 1
    for _ in range(20):
        answer = client.chat.completions.with_raw_response.create(
            model=model, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
        replicas[answer.headers.get("x-fleet-replica", "?")] += 1
    return {"chat_finish_reason": parsed.choices[0].finish_reason,
            "chat_completion_tokens": parsed.usage.completion_tokens if parsed.usage else None,
            "stream_chunks": chunks,
            "completion_text_chars": len(completion.parse().choices[0].text),
            "answered_by": dict(replicas)}


async def first_burst(url: str, model: str, streams: int = 64) -> dict[str, object]:
    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

    async def one(i: int) -> float:
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model=model, max_tokens=32, stream=True,
            messages=[{"role": "user", "content": f"Burst request {i}: tell a story."}])
        first = None
        async for _ in stream:
            first = first or time.monotonic() - started
        return first or float("nan")

    ttfts = sorted(await asyncio.gather(*(one(i) for i in range(streams))))
    await client.close()
    return {"streams": streams, "ttft_p50_s": round(statistics.median(ttfts), 3),
            "ttft_max_s": round(ttfts[-1], 3)}


def main() -> None:
    url, model = sys.argv[1], sys.argv[2]
    result = {"checks": checks(url, model), "first_burst": asyncio.run(first_burst(url, model))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
