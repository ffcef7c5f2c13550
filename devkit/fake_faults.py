"""Faults the fake provider can inject beyond an HTTP error status, each on a real HTTP wire.

A profile's `reset_rate`, `hang_rate`, `malformed_rate` and `truncated_rate` are probabilities
(their sum at most 1), drawn once per request after its latency:

- `reset`: a 200 whose headers promise the whole answer, half of the body, then the
  connection is aborted (the client sees a payload error mid-response);
- `hang`: nothing is ever sent; the request waits until the client gives up and closes the
  connection (its timeout), so the server holds no task past its caller;
- `malformed`: a 200 `application/json` whose body is not JSON at all;
- `truncated`: a 200 with a correct `Content-Length` whose JSON is cut in the middle.

A provider that accepts connections and never answers is `hang_rate=1`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

from aiohttp import web

__all__ = [
    "FAULT_SETTINGS",
    "MALFORMED_BODY",
    "fault_response_or_none",
    "hang",
    "malformed",
    "pick_fault",
    "reset",
    "truncated",
]

FAULT_SETTINGS = ("reset_rate", "hang_rate", "malformed_rate", "truncated_rate")
"""Profile settings (probabilities) that choose a fault; the fault's name is the prefix."""

MALFORMED_BODY = b'{"id": chatcmpl-broken, "choices": [<html>502 Bad Gateway</html>'
"""What a broken proxy in front of a provider may send with a 200."""

HANG_POLL_S = 0.1
"""How often a hung request looks whether its client has gone."""


def pick_fault(rates: Mapping[str, float], rng: random.Random) -> str | None:
    """The fault for one request (`reset`, `hang`, `malformed`, `truncated`) or None."""
    draw = rng.random()
    for name in FAULT_SETTINGS:
        rate = rates.get(name, 0.0)
        if draw < rate:
            return name.removesuffix("_rate")
        draw -= rate
    return None


async def hang(request: web.Request) -> None:
    """Send nothing until the client closes the connection."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(HANG_POLL_S)


async def reset(request: web.Request, body: bytes) -> web.StreamResponse:
    """Headers for the whole `body`, half of it, then an aborted connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response


def truncated(body: bytes) -> web.Response:
    """A well-formed HTTP 200 whose JSON body stops in the middle."""
    return web.Response(body=body[: len(body) // 2], content_type="application/json")


def malformed() -> web.Response:
    return web.Response(body=MALFORMED_BODY, content_type="application/json")


def fault_response_or_none(fault: str | None, body: bytes) -> web.Response | None:
    """The plain (non-streaming) fault responses; None for the others."""
    if fault == "malformed":
        return malformed()
    if fault == "truncated":
        return truncated(body)
    return None
