"""Reading every replica host's listing, for a gateway host's `fleet up`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import requests
from pydantic import ValidationError

from router.config.spec import ClusterSpec
from router.config.topology import ReplicaListing, listing_url, with_listed_replicas
from router.errors import ClusterError

log = logging.getLogger(__name__)

Get = Callable[..., Any]


def read_listing(entry: str, spec: ClusterSpec, get: Get = requests.get) -> ReplicaListing:
    url = listing_url(entry, spec.topology.listing_port)
    hint = (f"on {entry}: `fleet up` with topology.role: replicas and topology.listen on an "
            "address this host reaches; `fleet status` there says what runs")
    try:
        response = get(url, timeout=spec.topology.discovery_timeout_s)
    except requests.RequestException as exc:
        raise ClusterError(f"replica host {entry} did not answer at {url}: "
                           f"{type(exc).__name__}", hint=hint) from exc
    if response.status_code != 200:
        raise ClusterError(f"replica host {entry} answered {response.status_code} at {url}: "
                           f"{response.text.strip()[:200]}", hint=hint)
    try:
        return ReplicaListing.model_validate_json(response.content)
    except ValidationError as exc:
        raise ClusterError(f"replica host {entry} answered {url} with something that is not "
                           f"a replica listing ({exc.error_count()} problems)",
                           hint="is another program on that port? run the same llm-fleet "
                                "version on every host") from exc


def discover(spec: ClusterSpec, get: Get = requests.get) -> ClusterSpec:
    """The spec with every replica host's replicas in it (role gateway), or as it is.

    A spec that already names its replicas is the one `fleet up` recorded
    (config/spec.json): it says what runs, so it is not read again from the
    hosts, whose listings may have moved on since."""
    if spec.topology.role != "gateway" or spec.external_replicas:
        return spec
    listings = [(entry, read_listing(entry, spec, get)) for entry in spec.topology.replica_hosts]
    for entry, listing in listings:
        log.info("replica host %s lists %d replica(s) of %s", entry, len(listing.replicas),
                 listing.served_model_name)
    return with_listed_replicas(spec, listings)
