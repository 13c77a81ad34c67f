"""Conversation affinity: its modes, its keys and its ring, owned here.

The gateway routes keyed requests itself: nginx/affinity.js (nginx's njs
module) finds a request's key and ranks the replicas for it, so no Python
runs on the request path. What both sides must agree on lives in this
module: the modes the spec accepts, the order keys are looked for in, and
the ring, the one line of text the renderer writes into upstream.conf and
affinity.js reads (``ring_text`` writes it; the format is documented there).

``find_key``, ``rank`` and ``route`` are the reference model of affinity.js:
tests/unit/test_affinity.py runs one table of cases through both (the
JavaScript under Debian's ``njs`` interpreter), so the two cannot drift.
They are also how a test or a report predicts where a key lands.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class AffinityMode(StrEnum):
    """gateway.affinity: which requests carry a key."""

    # Nothing is keyed: every request is balanced by the upstream.
    OFF = "off"
    # Keys the client sends: the X-Session-Id header, the body's
    # prompt_cache_key, then its user.
    SESSION = "session"
    # session's keys, then a digest of the conversation's opening.
    AUTO = "auto"

    @property
    def keyed(self) -> bool:
        return self is not AffinityMode.OFF


class KeySource(StrEnum):
    """Where a request's key came from, first found wins (the access log's
    ``affinity`` field and the X-Fleet-Affinity header name it)."""

    SESSION = "session"
    PROMPT_CACHE_KEY = "prompt_cache_key"
    USER = "user"
    OPENING = "opening"
    NONE = "none"


class RingState(StrEnum):
    UP = "up"
    # The affinity load bound: the replica keeps its keys, their requests
    # spill to the balanced upstream until it is back within bounds.
    SHED = "shed"
    DOWN = "down"


SESSION_HEADER = "X-Session-Id"
# Longer client keys are cut: a key is an identity, not a payload.
MAX_KEY_CHARS = 256
# A completion prompt's "first block": enough to cover a long shared
# instruction, the way a chat's system prompt is covered.
PROMPT_BLOCK_CHARS = 4096


@dataclass(frozen=True)
class RingEntry:
    name: str
    weight: int
    state: RingState


def ring_text(entries: Iterable[RingEntry]) -> str:
    """The ring as affinity.js reads it from ``$fleet_affinity_ring``.

    One entry per replica, ``name weight state``, entries joined by ``;``:
    ``replica-0 100 up;replica-1 50 shed;replica-2 100 down``. Names are
    replica names (no spaces or semicolons, the spec's name rule), weights
    nginx weights; a replica with weight 0 or ``down`` is never ranked.
    """
    return ";".join(f"{entry.name} {entry.weight} {entry.state}" for entry in entries)


def parse_ring(text: str) -> list[RingEntry]:
    """The inverse of ``ring_text``, as affinity.js splits it."""
    entries = []
    for item in text.split(";") if text else []:
        name, weight, state = item.split(" ")
        entries.append(RingEntry(name, int(weight), RingState(state)))
    return entries


def _clip(value: str) -> str:
    return value[:MAX_KEY_CHARS]


def _digest(text: str) -> str:
    raw = hashlib.sha1(text.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n".join(part["text"] for part in content
                     if isinstance(part, dict) and isinstance(part.get("text"), str))


def _until_first_user(messages: list[Any], parts: list[str]) -> str:
    for message in messages:
        # JavaScript reads fields of any object, arrays included, and stops
        # at anything else.
        if not isinstance(message, dict | list):
            return ""
        fields = message if isinstance(message, dict) else {}
        role = fields.get("role", _UNDEFINED)
        parts.append(_js_string(role) + "\u0000" + _content_text(fields.get("content")))
        if role == "user":
            return "\u0001".join(parts)
    return ""


_UNDEFINED = object()


def _js_string(value: Any) -> str:
    """String(value) as JavaScript writes it, for what JSON can hold."""
    if value is _UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return ",".join("" if item is None else _js_string(item) for item in value)
    return "[object Object]"


def _opening(body: Mapping[str, Any]) -> str:
    if isinstance(body.get("messages"), list):
        return _until_first_user(body["messages"], [])
    if "input" in body:
        instructions = body.get("instructions")
        parts = ["system\u0000" + instructions] if isinstance(instructions, str) and instructions \
            else []
        given = body["input"]
        if isinstance(given, str):
            return _until_first_user([{"role": "user", "content": given}], parts) if given else ""
        return _until_first_user(given, parts) if isinstance(given, list) else ""
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt[:PROMPT_BLOCK_CHARS]
    return ""


def find_key(mode: AffinityMode, headers: Mapping[str, str], body: str) -> tuple[KeySource, str]:
    """A request's key source and key ('' when it has none)."""
    session = headers.get(SESSION_HEADER)
    if mode.keyed and session:
        return KeySource.SESSION, "s:" + _clip(session)
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return KeySource.NONE, ""
    if not mode.keyed or not isinstance(parsed, dict):
        return KeySource.NONE, ""
    cache_key = parsed.get("prompt_cache_key")
    if isinstance(cache_key, str) and cache_key:
        return KeySource.PROMPT_CACHE_KEY, "k:" + _clip(cache_key)
    user = parsed.get("user")
    if isinstance(user, str) and user:
        return KeySource.USER, "u:" + _clip(user)
    if mode is not AffinityMode.AUTO:
        return KeySource.NONE, ""
    start = _opening(parsed)
    return (KeySource.OPENING, "o:" + _digest(start)) if start else (KeySource.NONE, "")


def key_hash(key: str, name: str) -> int:
    """FNV-1a over UTF-16 code units (what JavaScript's charCodeAt reads),
    then murmur3's finaliser: an even spread for keys one character apart."""
    mask = 0xFFFFFFFF
    h = 2166136261
    text = (key + "\u0000" + name).encode("utf-16-le")
    for index in range(0, len(text), 2):
        h = ((h ^ (text[index] | text[index + 1] << 8)) * 16777619) & mask
    h = ((h ^ (h >> 16)) * 2246822507) & mask
    h = ((h ^ (h >> 13)) * 3266489909) & mask
    return (h ^ (h >> 16)) & mask


def rank(entries: Iterable[RingEntry], key: str) -> RingEntry | None:
    """The replica ranked first for ``key``, by weighted rendezvous hashing:
    the highest weight / -ln(u) wins, u the key's hash with the name in
    (0, 1). A replica taken out moves only its own keys."""
    best: RingEntry | None = None
    best_score = -1.0
    for entry in entries:
        if entry.state is RingState.DOWN or entry.weight <= 0:
            continue
        unit = (key_hash(key, entry.name) + 0.5) / 4294967296
        score = entry.weight / -math.log(unit)
        if score > best_score:
            best, best_score = entry, score
    return best


@dataclass(frozen=True)
class Route:
    """Where a request goes: a replica's own upstream, or the balanced one."""

    source: KeySource
    # The replica whose upstream serves it; None: the balanced upstream.
    replica: str | None
    # Its key's replica is shedding, so it went to the balanced upstream.
    spilled: bool

    @property
    def label(self) -> str:
        """$fleet_affinity: the access log's and the response header's value."""
        return self.source + (" spilled" if self.spilled else "")


def route(mode: AffinityMode, entries: Iterable[RingEntry], headers: Mapping[str, str],
          body: str) -> Route:
    source, key = find_key(mode, headers, body)
    first = rank(entries, key) if key else None
    spilled = first is not None and first.state is RingState.SHED
    if first is None or spilled:
        return Route(source, None, spilled)
    return Route(source, first.name, False)
