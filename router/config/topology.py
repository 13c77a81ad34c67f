"""How a gateway host learns the replicas of its replica hosts.

A host of role ``replicas`` serves one JSON document, :class:`ReplicaListing`,
at ``REPLICA_LISTING_PATH``; a gateway host reads it from every host in
``topology.replica_hosts`` and routes to what they list as if the spec had
named each replica under ``engine: external``. Pure: the reading itself is
router.runtime.discovery.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from router.config.spec import (
    REPLICA_LISTING_PATH,
    ClusterSpec,
    ExternalReplicaSpec,
    Port,
    TopologySpec,
    split_host_entry,
    url_host,
)
from router.errors import SpecError


class ListedReplica(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    port: Port
    # "GPU-<uuid>", "cpu:<core>" or "sim:…", as the replica host names it.
    device: str
    max_num_seqs: int | None = Field(default=None, ge=1)


class ReplicaListing(BaseModel):
    """What a replica host serves: its replicas and the model they serve."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    engine: str
    served_model_name: str
    runner: str = "generate"
    # The spec generation the host's replicas run (ClusterSpec.generation).
    generation: str
    replicas: tuple[ListedReplica, ...]


def listing_address(entry: str, default_port: int) -> tuple[str, int]:
    """``topology.replica_hosts`` entry -> (host, port of its listing)."""
    host, port = split_host_entry(entry)
    return host, int(port) if port else default_port


def listing_url(entry: str, default_port: int) -> str:
    host, port = listing_address(entry, default_port)
    return f"http://{url_host(host)}:{port}{REPLICA_LISTING_PATH}"


def own_listing_url(topology: TopologySpec) -> str:
    """Where a replica host's own listing answers, asked from that host."""
    return (f"http://{url_host(topology.advertised_host)}:{topology.listing_port}"
            f"{REPLICA_LISTING_PATH}")


def with_listed_replicas(spec: ClusterSpec,
                         listings: list[tuple[str, ReplicaListing]]) -> ClusterSpec:
    """A gateway's spec with the replicas its hosts list, as external replicas.

    ``listings`` pairs each replica host entry with what it listed, in the
    order of ``topology.replica_hosts``: replica-0 is the first host's first
    replica, so every gateway of a pair names each replica the same.
    """
    served = {listing.served_model_name for _, listing in listings}
    if len(served) > 1:
        seen = ", ".join(f"{entry} serves {listing.served_model_name!r}"
                         for entry, listing in listings)
        raise SpecError(f"the replica hosts serve different models: {seen}",
                        hint="give every replica host the same model (model.name and "
                             "model.served_name in their specs)")
    name = served.pop() if served else None
    wanted = spec.model.served_name
    if wanted is not None and name is not None and wanted != name:
        raise SpecError(f"model.served_name is {wanted!r}, but the replica hosts serve "
                        f"{name!r}", hint=f"set model.served_name: {name} or leave it unset")
    empty = [entry for entry, listing in listings if not listing.replicas]
    if empty:
        raise SpecError(f"replica host(s) {', '.join(empty)} list no replicas",
                        hint="`fleet status` on that host says why its replicas are not up")
    replicas = []
    for entry, listing in listings:
        host, _ = listing_address(entry, spec.topology.listing_port)
        replicas += [ExternalReplicaSpec(address=f"{url_host(host)}:{replica.port}",
                                         max_num_seqs=replica.max_num_seqs)
                     for replica in listing.replicas]
    runners = {listing.runner for _, listing in listings}
    model = spec.model.model_copy(update={"served_name": name or wanted,
                                          "runner": runners.pop() if len(runners) == 1
                                          else spec.model.runner})
    return spec.model_copy(update={"engine": "external", "external_replicas": tuple(replicas),
                                   "model": model})
