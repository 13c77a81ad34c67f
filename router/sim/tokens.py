"""The simulator's tokenizer: /tokenize and /detokenize in vLLM's shapes.

Not a real vocabulary: a token is up to TOKEN_BYTES bytes of UTF-8 packed
into one integer, so detokenize(tokenize(text)) gives the text back, as a
real tokenizer does, and the count agrees with the simulator's prompt
lengths (about four characters a token).
"""

from __future__ import annotations

from typing import Any

TOKEN_BYTES = 4


def encode(text: str) -> list[int]:
    raw = text.encode("utf-8")
    # A leading 1 byte keeps a chunk's leading zero bytes: ids stay unique.
    return [int.from_bytes(b"\x01" + raw[i:i + TOKEN_BYTES], "big")
            for i in range(0, len(raw), TOKEN_BYTES)]


def decode(tokens: list[int]) -> str:
    """Unknown ids decode to nothing, as vLLM's tokenizer skips ids past its vocabulary."""
    raw = bytearray()
    for token in tokens:
        if token < 1 << 8 or token >= 1 << (8 * (TOKEN_BYTES + 1)):
            continue
        chunk = token.to_bytes((token.bit_length() + 7) // 8, "big")
        raw += chunk[1:]
    return raw.decode("utf-8", errors="replace")


def tokenize_answer(text: str, max_model_len: int, token_strs: bool) -> dict[str, Any]:
    tokens = encode(text)
    return {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens,
            "token_strs": [decode([t]) for t in tokens] if token_strs else None}
