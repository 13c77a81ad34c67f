"""The other gateways of a pair: admin actions sent to them, and what differs.

Each gateway of a pair runs its own controller, which listens on its
``ha.unicast_src`` as well as loopback, behind the token both share
(``ha.pair_token_file``). An admin action (`fleet drain`, `pin`, `keys ...`)
is applied here first, then sent to every peer; a peer that does not take it
is named in one error line, and `fleet status` shows what differs until the
action is repeated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests
from pydantic import ValidationError

from router.config.spec import ClusterSpec, ControllerSpec, url_host
from router.disk.paths import RuntimePaths, read_admin_token
from router.errors import ClusterError
from router.fleet_status import FleetStatus

log = logging.getLogger(__name__)

PEER_TIMEOUT_S = 5.0
KEYS_DIFFER = "API keys differ"


@dataclass(frozen=True)
class PeerAnswer:
    peer: str
    ok: bool
    detail: str
    body: dict[str, Any] | None = None


def peer_url(spec: ClusterSpec, peer: str) -> str:
    return f"http://{url_host(peer)}:{spec.controller.port}"


def call_peers(spec: ClusterSpec, paths: RuntimePaths, method: str, path: str,
               body: dict[str, Any] | None = None) -> list[PeerAnswer]:
    """The same admin call on every peer; never raises."""
    if not spec.ha.enabled:
        return []
    token = read_admin_token(paths)
    answers = []
    for peer in spec.ha.peers:
        try:
            response = requests.request(method, peer_url(spec, peer) + path, json=body,
                                        timeout=PEER_TIMEOUT_S,
                                        headers={"Authorization": f"Bearer {token}"})
        except requests.RequestException as exc:
            answers.append(PeerAnswer(peer, False, f"did not answer ({type(exc).__name__})"))
            continue
        if response.status_code != 200:
            try:
                detail = str(response.json().get("detail", response.text))
            except ValueError:
                detail = response.text.strip()
            answers.append(PeerAnswer(peer, False, f"answered {response.status_code}: {detail}"))
            continue
        answers.append(PeerAnswer(peer, True, "applied", response.json()))
    return answers


def fan_out(spec: ClusterSpec, paths: RuntimePaths, method: str, path: str,
            body: dict[str, Any] | None, progress: Any) -> None:
    """Send an admin action applied here to every peer; raise naming those that refused."""
    answers = call_peers(spec, paths, method, path, body)
    for answer in answers:
        if answer.ok:
            progress(f"peer gateway {answer.peer}: applied")
    failed = [a for a in answers if not a.ok]
    if failed:
        raise ClusterError(
            "applied on this gateway, not on " + "; ".join(f"peer {a.peer} {a.detail}"
                                                           for a in failed),
            hint="the pair now differs (`fleet status` shows how); run the same command "
                 "again once the peer answers" + (", or `fleet keys push` to send this "
                                                  "gateway's keys" if "/keys" in path else ""))


@dataclass(frozen=True)
class PeerView:
    peer: str
    status: FleetStatus | None
    keys_digest: str | None
    error: str | None = None


def peer_views(spec: ClusterSpec, paths: RuntimePaths) -> list[PeerView]:
    views = []
    statuses = {a.peer: a for a in call_peers(spec, paths, "GET", "/status")}
    digests = {a.peer: a for a in call_peers(spec, paths, "GET", "/keys/digest")}
    for peer in spec.ha.peers:
        status, digest = statuses[peer], digests[peer]
        if not status.ok or status.body is None:
            views.append(PeerView(peer, None, None, status.detail))
            continue
        try:
            parsed = FleetStatus.model_validate(status.body)
        except ValidationError:
            views.append(PeerView(peer, None, None, "answers a status this version cannot "
                                                    "read: run the same version on both"))
            continue
        views.append(PeerView(peer, parsed, digest.body.get("digest") if digest.body else None))
    return views


def differences(own: FleetStatus, own_keys: str, peer: PeerView,
                weight_gap: float = ControllerSpec().min_weight_change) -> list[str]:
    """What an operator must know differs between this gateway and ``peer``.

    Weights the two controllers set from the same signals differ a little at
    times; a gap of ``weight_gap`` (the controller's reload threshold,
    ``controller.min_weight_change``) is worth an operator's eye."""
    if peer.status is None:
        return [f"peer {peer.peer} {peer.error}"]
    found = []
    if peer.keys_digest != own_keys:
        found.append(f"{KEYS_DIFFER} (here {own_keys}, peer {peer.keys_digest}); "
                     "`fleet keys push` on the gateway whose keys are right")
    theirs = {r.name: r for r in peer.status.replicas}
    for replica in own.replicas:
        other = theirs.pop(replica.name, None)
        if other is None:
            found.append(f"{replica.name}: not on the peer (its replica hosts differ)")
            continue
        if other.url != replica.url:
            found.append(f"{replica.name}: here {replica.url}, on the peer {other.url}")
        if other.override.drained != replica.override.drained:
            where = "here" if replica.override.drained else "on the peer"
            found.append(f"{replica.name}: drained {where} only")
        if other.override.pinned_weight != replica.override.pinned_weight:
            found.append(f"{replica.name}: pinned at {replica.override.pinned_weight} here, "
                         f"{other.override.pinned_weight} on the peer")
        if other.in_rotation != replica.in_rotation:
            where = "here" if replica.in_rotation else "on the peer"
            found.append(f"{replica.name}: in rotation {where} only")
        elif (replica.weight and other.weight
              and abs(replica.weight - other.weight) > weight_gap * max(replica.weight,
                                                                        other.weight)):
            found.append(f"{replica.name}: weight {replica.weight} here, {other.weight} on "
                         "the peer")
    found += [f"{name}: on the peer only" for name in theirs]
    return found
