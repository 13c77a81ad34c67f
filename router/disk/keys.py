"""API keys for the gateway: the key store (the map nginx reads is router.render.keys).

Keys live in ``<runtime_dir>/api-keys.json`` (mode 0600). The gateway checks
them itself, from ``config/api-keys.conf`` (also 0600), a `map` from the
Authorization header to the key's id: a key check needs no other process, so
it keeps working while the controller is down (the data plane fails static).

A key is shown once, when it is created. Revoking removes its secret from
the store and the map; the entry stays, without its secret, so `fleet keys
list` still tells what was revoked and when.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

from router.disk.paths import write_atomic
from router.errors import SpecError

KEY_PREFIX = "sk-fleet-"
# A key's own budget (`fleet keys budget`): tokens per minute, this word for
# none even where the spec gives keys a default, or None for that default.
UNLIMITED: Final = "unlimited"
Budget = int | Literal["unlimited"] | None
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ID = re.compile(r"^key-[0-9a-f]{8}$")
_SECRET = re.compile(r"^sk-fleet-[A-Za-z0-9_-]{16,128}$")
_CLASS = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: float
    # None once revoked: a revoked key's secret is not kept.
    secret: str | None
    revoked_at: float | None = None
    # The spec's priority class of its requests; None: priority.default_class.
    priority_class: str | None = None
    # Tokens per minute (budgets); None: the spec's budgets.tokens_per_min.
    tokens_per_min: Budget = None

    def budget(self, default: int | None) -> int | None:
        """Its tokens per minute, at most; None for no budget."""
        if isinstance(self.tokens_per_min, int):
            return self.tokens_per_min
        return default if self.tokens_per_min is None else None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def shown(self) -> str:
        """What listings print in place of the secret."""
        return f"{self.secret[:len(KEY_PREFIX) + 4]}..." if self.secret else "(revoked)"


@dataclass(frozen=True)
class KeyStore:
    keys: tuple[ApiKey, ...] = ()

    def active(self) -> tuple[ApiKey, ...]:
        return tuple(k for k in self.keys if k.active)

    def find(self, id_or_name: str) -> ApiKey:
        for key in self.keys:
            if key.active and id_or_name in (key.id, key.name):
                return key
        known = ", ".join(f"{k.name} ({k.id})" for k in self.active()) or "none"
        raise SpecError(f"no active key with id or name {id_or_name!r}",
                        hint=f"active keys: {known}; see `fleet keys list`")

    def add(self, name: str, now: float | None = None,
            priority_class: str | None = None,
            tokens_per_min: Budget = None) -> tuple[KeyStore, ApiKey]:
        if not _NAME.match(name):
            raise SpecError(f"key name {name!r} is not allowed",
                            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a "
                                 "letter or digit, e.g. team-search")
        if any(k.name == name for k in self.active()):
            raise SpecError(f"an active key is already named {name!r}",
                            hint="pick another name, or revoke the old key first")
        taken = {k.id for k in self.keys}
        key_id = _new_id(taken)
        key = ApiKey(id=key_id, name=name, created_at=time.time() if now is None else now,
                     secret=KEY_PREFIX + secrets.token_urlsafe(32), priority_class=priority_class,
                     tokens_per_min=tokens_per_min)
        return KeyStore(self.keys + (key,)), key

    def with_class(self, id_or_name: str, priority_class: str | None) -> tuple[KeyStore, ApiKey]:
        """The store with key ``id_or_name`` in ``priority_class`` (None: the default)."""
        return self._changed(self.find(id_or_name), priority_class=priority_class)

    def with_budget(self, id_or_name: str, tokens_per_min: Budget) -> tuple[KeyStore, ApiKey]:
        """The store with key ``id_or_name`` on budget ``tokens_per_min``."""
        return self._changed(self.find(id_or_name), tokens_per_min=tokens_per_min)

    def _changed(self, target: ApiKey, **fields: object) -> tuple[KeyStore, ApiKey]:
        changed = replace(target, **fields)  # type: ignore[arg-type]
        return KeyStore(tuple(changed if k is target else k for k in self.keys)), changed

    def budgets(self, default: int | None) -> dict[str, int]:
        """Active key id -> its tokens per minute, for the keys that have one."""
        return {k.id: budget for k in self.active()
                if (budget := k.budget(default)) is not None}

    def revoke(self, id_or_name: str, now: float | None = None) -> tuple[KeyStore, ApiKey]:
        return self._changed(self.find(id_or_name), secret=None,
                             revoked_at=time.time() if now is None else now)


def _new_id(taken: set[str]) -> str:
    while True:
        key_id = "key-" + secrets.token_hex(4)
        if key_id not in taken:
            return key_id


def load_store(path: Path) -> KeyStore:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return KeyStore()
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read the key store {path}: {exc}",
                        hint="restore it from a backup, or move it away to start with no keys"
                        ) from exc
    try:
        return store_from_json(data)
    except (KeyError, TypeError) as exc:
        raise SpecError(f"the key store {path} is not in the expected format: {exc}",
                        hint="it is written by `fleet keys`; restore it from a backup") from exc


def store_from_json(data: dict[str, Any], checked: bool = False) -> KeyStore:
    """The store from its JSON form; KeyError or TypeError when it is not one.

    ``checked``: every field's type and form too, for a store that arrives
    over the network (from the other gateway of a pair) and is rendered into
    nginx's config."""
    keys = tuple(_checked(entry) if checked else ApiKey(**entry) for entry in data["keys"])
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise TypeError("a key id appears twice")
    return KeyStore(keys)


def _checked(entry: Any) -> ApiKey:
    if not isinstance(entry, dict):
        raise TypeError("each key is an object")
    key = ApiKey(**entry)
    problems = []
    if not (isinstance(key.id, str) and _ID.match(key.id)):
        problems.append("id is not key-<8 hex digits>")
    if not (isinstance(key.name, str) and _NAME.match(key.name)):
        problems.append("name is not 1-64 letters, digits, '.', '_' or '-'")
    if key.secret is not None and not (isinstance(key.secret, str) and _SECRET.match(key.secret)):
        problems.append(f"secret is not {KEY_PREFIX}<token>")
    for name in ("created_at", "revoked_at"):
        value = getattr(key, name)
        if not (value is None and name == "revoked_at") and (
                isinstance(value, bool) or not isinstance(value, int | float)):
            problems.append(f"{name} is not a time")
    if key.priority_class is not None and not (isinstance(key.priority_class, str)
                                               and _CLASS.match(key.priority_class)):
        problems.append("class is not a class name")
    budget = key.tokens_per_min
    if not (budget is None or budget == UNLIMITED
            or (isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1)):
        problems.append("tokens_per_min is not a count, 'unlimited' or null")
    if (key.secret is None) != (key.revoked_at is not None):
        problems.append("a key has its secret exactly while it is not revoked")
    if problems:
        raise TypeError(f"key {str(key.id)[:20]!r}: " + "; ".join(problems))
    return key


def store_to_json(store: KeyStore) -> dict[str, Any]:
    return {"keys": [asdict(k) for k in store.keys]}


def store_digest(store: KeyStore) -> str:
    """Equal on two gateways exactly when they hold the same keys, classes and budgets."""
    text = json.dumps(store_to_json(store), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_store(path: Path, store: KeyStore) -> None:
    text = json.dumps(store_to_json(store), indent=2) + "\n"
    write_atomic(path, text, mode=0o600)
