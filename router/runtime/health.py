"""Small HTTP probes of replicas and the gateway, with hard timeouts."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Probe:
    """The result of one GET: a status code, or why there was none."""

    url: str
    status: int | None
    latency_s: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def probe(url: str, timeout_s: float = 1.0, session: requests.Session | None = None) -> Probe:
    getter = session.get if session is not None else requests.get
    start = time.monotonic()
    try:
        response = getter(url, timeout=timeout_s)
    except requests.ConnectionError:
        return Probe(url, None, time.monotonic() - start, "connection refused")
    except requests.Timeout:
        return Probe(url, None, time.monotonic() - start, f"no answer within {timeout_s:g}s")
    except requests.RequestException as exc:
        return Probe(url, None, time.monotonic() - start, str(exc))
    return Probe(url, response.status_code, time.monotonic() - start)


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port (we cannot bind it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def holds_address(address: str) -> bool:
    """Whether ``address`` is on one of this host's interfaces (a pair's virtual IP)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True
