"""A replica host's listing: GET /fleet/replicas answers which replicas this
host runs, for the gateway hosts that route to them (topology.role: replicas).

Usage: python -m router.replica_listing --state FILE --host ADDR --port N

The document (router.config.topology.ReplicaListing) is read from
state.json at every request, so it follows `fleet apply` without a restart.
The standard library's threaded HTTP server is enough for one small,
read-only JSON document asked for at a gateway's `fleet up`; it keeps this
process at a few MiB on a host whose memory belongs to the replicas.
"""

from __future__ import annotations

import argparse
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from router.config.spec import REPLICA_LISTING_PATH
from router.config.topology import ListedReplica, ReplicaListing
from router.errors import ClusterError
from router.runtime.state import ClusterState

log = logging.getLogger("replica_listing")


def listing(state: ClusterState) -> ReplicaListing:
    replicas = []
    for record in state.replicas:
        port = int(record.address.rpartition(":")[2])
        replicas.append(ListedReplica(name=record.name, port=port, device=record.device,
                                      max_num_seqs=record.max_num_seqs))
    generations = {r.generation for r in state.replicas if r.generation}
    return ReplicaListing(engine=state.engine, served_model_name=state.served_model_name,
                          runner=state.warmup.runner if state.warmup else "generate",
                          generation=",".join(sorted(generations)) or "unknown",
                          replicas=tuple(replicas))


def _handler(state_path: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            if self.path.split("?", 1)[0] != REPLICA_LISTING_PATH:
                self._answer(404, {"error": f"this host serves {REPLICA_LISTING_PATH} only"})
                return
            try:
                state = ClusterState.read(state_path)
            except ClusterError as exc:
                self._answer(503, {"error": exc.message})
                return
            if state is None:
                self._answer(503, {"error": f"no cluster state at {state_path}; run fleet up"})
                return
            self._answer(200, listing(state).model_dump(mode="json"))

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.info("listing asked client=%s %s", self.client_address[0], format % args)

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.replica_listing",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, required=True, help="the host's state.json")
    parser.add_argument("--host", required=True, help="address to listen on")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = ThreadingHTTPServer((args.host, args.port), _handler(args.state))
    log.info("listing replicas on http://%s:%d%s", args.host, args.port, REPLICA_LISTING_PATH)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
