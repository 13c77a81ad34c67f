"""The gateway's API key map, rendered from the key store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from router.disk.keys import KeyStore
from router.render.templates import template


@dataclass(frozen=True)
class RenderedKeys:
    text: str
    version: str


def render_keys_conf(store: KeyStore) -> RenderedKeys:
    """The nginx include with the key map and the version the status port answers."""
    active = store.active()
    # The version names the set of keys without revealing any of them.
    version = hashlib.sha256(
        "\n".join(sorted(f"{k.id}:{k.secret}:{k.priority_class or ''}" for k in active)
                  ).encode()).hexdigest()[:12]
    text = template("nginx/api-keys.conf.j2").render(keys=active, version=version)
    return RenderedKeys(text=text, version=version)
