"""vLLM's automatic prefix cache, as the simulator models it.

vLLM keeps the KV of a prompt in blocks of 16 tokens and names each full
block by a hash chained over every token before it, so two prompts share a
block exactly when they share everything up to its end. A new request reuses
the longest run of leading blocks already cached and prefills only the rest;
blocks stay cached after their request ends and are evicted least recently
used first when the KV cache needs room.

The simulator counts four characters a token (router.sim.server.count_tokens),
so a block is 64 characters of the rendered prompt. Simplification: cached
blocks share the replica's KV capacity as a whole (``capacity_blocks``),
blocks of running requests are not pinned but were used last, so LRU takes
them last.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

BLOCK_TOKENS = 16  # vLLM's default --block-size
CHARS_PER_TOKEN = 4
BLOCK_CHARS = BLOCK_TOKENS * CHARS_PER_TOKEN


def block_hashes(prompt: str, prompt_tokens: int) -> tuple[int, ...]:
    """The chained hashes of the prompt's full blocks."""
    count = min(len(prompt) // BLOCK_CHARS, prompt_tokens // BLOCK_TOKENS)
    hashes, previous = [], 0
    for index in range(count):
        previous = hash((previous, prompt[index * BLOCK_CHARS:(index + 1) * BLOCK_CHARS]))
        hashes.append(previous)
    return tuple(hashes)


class PrefixCache:
    """Block hashes in least-recently-used order, at most ``capacity_blocks``."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = max(0, capacity_blocks)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def hit_blocks(self, hashes: Sequence[int]) -> int:
        """How many leading blocks are cached; marks them used."""
        hits = 0
        for block in hashes:
            if block not in self._blocks:
                break
            self._blocks.move_to_end(block)
            hits += 1
        return hits

    def store(self, hashes: Sequence[int]) -> None:
        """Keep the request's blocks, evicting the least recently used beyond capacity."""
        for block in hashes:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
