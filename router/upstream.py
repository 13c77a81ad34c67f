"""The upstream contract: what the gateway's `upstream` block may hold. Pure.

The weight policy, the actuator and the renderer all speak through this
module, so the weight range, the starting weight and how a file's version is
derived are written once. It imports no template engine and runs nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from router.errors import RenderError

# nginx rejects weight=0 (a replica leaves rotation with `down` instead) and
# the controller's steps are relative, so the range is kept small.
MIN_WEIGHT, MAX_WEIGHT = 1, 100
# Every replica starts with the same weight, in the middle of the range so
# the controller can move it both ways.
BASE_WEIGHT = 50
# Written into the file as `map ... { default "<version>"; }`; the version is
# computed with this in its place, so the value cannot feed its own hash.
VERSION_PLACEHOLDER = "@version@"
VERSION_LENGTH = 12
# The provenance line of an upstream file the controller wrote.
CONTROLLER_PROVENANCE = "written by the controller"


class UpstreamMember(Protocol):
    """What the upstream block needs to know of a replica."""

    @property
    def name(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def address(self) -> str: ...


@dataclass(frozen=True)
class UpstreamServer:
    """One `server` line of the upstream block, with why it has its weight."""

    name: str
    device: str
    address: str
    weight: int
    max_fails: int
    fail_timeout_s: int
    down: bool
    backup: bool
    reason: str

    @property
    def address_regex(self) -> str:
        return re.escape(self.address)


def clamp_weight(target: float) -> int:
    """The nginx weight for a target: an integer in [MIN_WEIGHT, MAX_WEIGHT]."""
    return int(min(MAX_WEIGHT, max(MIN_WEIGHT, round(target))))


def upstream_servers(members: Sequence[UpstreamMember], *, max_fails: int,
                     fail_timeout_s: int, weights: Mapping[str, int] | None = None,
                     down: frozenset[str] = frozenset(),
                     reasons: Mapping[str, str] | None = None) -> list[UpstreamServer]:
    """The server lines for ``members``; a weight outside the range is refused."""
    weights = weights or {}
    reasons = reasons or {}
    servers = []
    for replica in members:
        weight = weights.get(replica.name, BASE_WEIGHT)
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
            raise RenderError(
                f"weight {weight} for {replica.name} is outside [{MIN_WEIGHT}, {MAX_WEIGHT}]",
                hint="nginx rejects weight=0; drain a replica with `down`")
        servers.append(UpstreamServer(
            name=replica.name, device=replica.device, address=replica.address, weight=weight,
            max_fails=max_fails, fail_timeout_s=fail_timeout_s, down=replica.name in down,
            backup=False, reason=reasons.get(replica.name, "initial weight")))
    return servers


def content_version(unstamped: str) -> str:
    """The version of a rendered upstream file: a hash of what nginx reads in it.

    Comments are left out, so a new reason or provenance line alone is not a
    new version, while any directive that changes (a weight, a server, a map
    entry, a new upstream-level key) is.
    """
    directives = "\n".join(
        stripped for line in unstamped.splitlines()
        if (stripped := line.strip()) and not stripped.startswith("#"))
    return hashlib.sha256(directives.encode()).hexdigest()[:VERSION_LENGTH]


def stamp_version(unstamped: str) -> tuple[str, str]:
    """The file with its version filled in, and that version."""
    version = content_version(unstamped)
    return unstamped.replace(VERSION_PLACEHOLDER, version), version


_UPSTREAM_BLOCK = re.compile(r"^upstream replicas \{(.*?)^\}", re.MULTILINE | re.DOTALL)
_SERVER_LINE = re.compile(r"^\s*server\s+(\S+)([^;]*);", re.MULTILINE)


def serving_addresses(upstream_text: str) -> frozenset[str]:
    """The addresses a controller left the balanced upstream routing to (its
    server lines without ``down``); none in a file `fleet up` wrote, whose
    replicas no controller has warmed yet."""
    block = _UPSTREAM_BLOCK.search(upstream_text)
    if block is None or CONTROLLER_PROVENANCE not in upstream_text:
        return frozenset()
    return frozenset(address for address, flags in _SERVER_LINE.findall(block.group(1))
                     if "down" not in flags.split())
