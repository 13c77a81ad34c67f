"""The controller's admin API (FastAPI), on loopback, behind a bearer token.

    GET  /status                      every replica: weight, health, signals and their age,
                                      overrides, the last decision and its reason
    GET  /decisions?limit=N           recent decisions, newest last
    POST /replicas/{name}/drain       out of rotation until undrained
    POST /replicas/{name}/undrain
    POST /replicas/{name}/weight      {"weight": 1-100, "ttl_s": seconds} pins a weight;
                                      {"weight": null} removes the pin
    GET  /keys/digest                 a digest of the gateway's API keys (a pair compares them)
    PUT  /keys                        {"keys": [...], "expect": digest|null} makes them the
                                      gateway's keys (the other gateway of a pair sends them)
    GET  /metrics                     the controller's Prometheus metrics (no token)
    GET  /fleet/status                read-only summary for the web console (no token;
                                      the gateway serves it at /fleet/status)
"""

# No `from __future__ import annotations` here: FastAPI reads the dependency
# annotations at run time, and some name objects local to create_app.
import asyncio
import hmac
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from router.controller.policy import DEFAULT_PIN_TTL_S
from router.controller.public import ClusterRecords, public_status
from router.controller.service import Controller
from router.disk.keys import KeyStore, store_digest, store_from_json
from router.errors import FleetError
from router.fleet_status import FleetStatus, PublicFleetStatus
from router.upstream import MAX_WEIGHT, MIN_WEIGHT

log = logging.getLogger(__name__)



class PinRequest(BaseModel):
    """Pin a replica's weight for a while; null removes the pin."""

    model_config = ConfigDict(extra="forbid")

    weight: int | None = Field(ge=MIN_WEIGHT, le=MAX_WEIGHT,
                              description=f"nginx weight, {MIN_WEIGHT}-{MAX_WEIGHT}; null unpins")
    ttl_s: float = Field(default=DEFAULT_PIN_TTL_S, gt=0, le=7 * 86400,
                         description="seconds until the pin expires")


class KeysBody(BaseModel):
    """A whole key store, as the other gateway of a pair holds it after a change."""

    model_config = ConfigDict(extra="forbid")

    keys: list[dict[str, Any]]
    # The digest the sender's store had before its change: the store is
    # replaced only while this gateway still has it, so a change made here
    # meanwhile is never lost. Null replaces whatever is here (`fleet keys push`).
    expect: str | None = None


@dataclass(frozen=True)
class KeysAccess:
    """The gateway's key store, for a pair: read it, and make one the gateway's."""

    read: Callable[[], KeyStore]
    apply: Callable[[KeyStore], str]


def _exit_if_loop_died(task: "asyncio.Task[None]") -> None:
    """A control loop that raised leaves an API that answers while nothing
    acts on health: end the process instead, so its supervisor restarts it
    (nginx keeps serving the last good config meanwhile)."""
    if task.cancelled() or task.exception() is None:
        return
    log.critical("control loop died decision=exit so the supervisor restarts the controller",
                 exc_info=task.exception())
    os.kill(os.getpid(), signal.SIGTERM)


def create_app(controller: Controller, token: str, run_loop: bool = True,
               grafana_url: str | None = None,
               records: Callable[[], ClusterRecords] | None = None,
               keys: KeysAccess | None = None) -> FastAPI:
    bearer = HTTPBearer(auto_error=False)

    def authorised(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(),
                                                          token.encode()):
            raise HTTPException(
                status_code=401, headers={"WWW-Authenticate": "Bearer"},
                detail="a valid admin token is required: send 'Authorization: Bearer <token>' "
                       "with the token from <runtime_dir>/admin-token")

    def replica(name: str) -> str:
        if name not in controller.names:
            raise HTTPException(status_code=404, detail=f"no replica named {name!r}; "
                                f"replicas are: {', '.join(controller.names)}")
        return name

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(controller.run()) if run_loop else None
        if task is not None:
            task.add_done_callback(_exit_if_loop_died)
        yield
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    app = FastAPI(title="llm-fleet controller", version="1", lifespan=lifespan,
                  description=__doc__)
    guarded = [Depends(authorised)]

    @app.get("/status", dependencies=guarded)
    async def status() -> FleetStatus:
        return controller.status()

    @app.get("/decisions", dependencies=guarded)
    async def decisions(limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> dict[str, Any]:
        records = list(controller.history)[-limit:]
        return {"decisions": [r.model_dump() for r in records]}

    @app.post("/replicas/{name}/drain", dependencies=guarded)
    async def drain(name: str) -> dict[str, Any]:
        record = await controller.set_override(replica(name), drained=True)
        return {"replica": name, "drained": True, "decision": record.model_dump()}

    @app.post("/replicas/{name}/undrain", dependencies=guarded)
    async def undrain(name: str) -> dict[str, Any]:
        record = await controller.set_override(replica(name), drained=False)
        return {"replica": name, "drained": False, "decision": record.model_dump()}

    @app.post("/replicas/{name}/weight", dependencies=guarded)
    async def pin(name: str, body: PinRequest) -> dict[str, Any]:
        expires = None if body.weight is None else controller.clock() + body.ttl_s
        record = await controller.set_override(replica(name), pinned_weight=body.weight,
                                               pin_expires_at=expires)
        return {"replica": name, "pinned_weight": body.weight, "pin_expires_at": expires,
                "decision": record.model_dump()}

    def key_access() -> KeysAccess:
        if keys is None:
            raise HTTPException(status_code=404, detail="this controller does not manage keys")
        return keys

    @app.get("/keys/digest", dependencies=guarded)
    async def keys_digest() -> dict[str, str]:
        return {"digest": store_digest(key_access().read())}

    @app.put("/keys", dependencies=guarded)
    async def put_keys(body: KeysBody) -> dict[str, str]:
        access = key_access()
        try:
            store = store_from_json({"keys": body.keys}, checked=True)
        except (KeyError, TypeError) as exc:
            raise HTTPException(status_code=400, detail=f"not a key store: {exc}") from exc
        held = store_digest(access.read())
        if body.expect is not None and held != body.expect:
            raise HTTPException(status_code=409, detail=(
                f"this gateway's keys (digest {held}) are not the ones the sender had before "
                f"its change ({body.expect}): they were changed here too"))
        try:
            outcome = await asyncio.to_thread(access.apply, store)
        except FleetError as exc:
            raise HTTPException(status_code=422, detail=exc.message) from exc
        log.info("keys replaced decision=apply reason=%s digest=%s", "sent by a peer gateway",
                 store_digest(store))
        return {"applied": outcome, "digest": store_digest(store)}

    @app.get("/fleet/status")
    async def fleet_status() -> PublicFleetStatus:
        return public_status(controller.status(), grafana_url,
                             None if records is None else records())

    @app.get("/metrics", include_in_schema=False)
    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(controller.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app
