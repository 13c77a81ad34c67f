"""Test clients that behave like the official openai client on a reset."""

from __future__ import annotations

from collections.abc import Callable

import requests


def resend_on_reset(session: requests.Session,
                    send: Callable[[requests.Session], requests.Response]) -> tuple[
                        requests.Response, bool]:
    """Send; if the connection was closed before any answer, send once more.

    On a reload nginx's old workers close idle keep-alive connections, and a
    request written onto one at that instant never reached nginx (HTTP/1.1's
    keep-alive race; nothing in the access log). The openai client resends
    such a request on a new connection; so does this. Returns the response
    and whether it was resent; a second failure raises.
    """
    try:
        return send(session), False
    except requests.ConnectionError:
        session.close()
        return send(session), True
