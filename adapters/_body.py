"""A provider's answer read within bounds: at most a byte cap, JSON at most `MAX_JSON_DEPTH` deep.

    read_body(resp, cap)   the body, or its first bytes and False when it is over the cap
    too_deep(body)         True when the JSON nests deeper than `MAX_JSON_DEPTH`

One answer must not exhaust the worker's memory: the body is read in chunks and reading stops
past the cap (the connection is then closed, not reused); a `Content-Length` over it is refused
before a byte is read. A compressed body is capped as it is decompressed.

msgspec refuses deep JSON only at the interpreter's recursion limit (with a RecursionError that
depends on how deep the caller's stack already is); `too_deep` is the fixed bound checked first,
in C-speed passes over the bytes: strings are cut out, brackets kept, and the deepest running
count of open brackets compared with the bound. Almost every answer has fewer brackets than the
bound and skips even that.
"""

from __future__ import annotations

import itertools
import operator
import re

import aiohttp

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "HEAD_BYTES", "MAX_JSON_DEPTH", "read_body", "too_deep"]

DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""The default cap on one answer's bytes (after decompression): `LLM_WORKER_MAX_RESPONSE_BYTES`."""

MAX_JSON_DEPTH = 128
"""The deepest nesting of JSON arrays and objects accepted in a provider's body (answers nest
4-6 levels)."""

HEAD_BYTES = 64 * 1024
"""What is kept of a body over the cap: an error page's excerpt comes from its start."""

_CHUNK = 64 * 1024
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # opening 2, closing 0: sum - n = depth


async def read_body(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """The whole body and True; or, when it is longer than `cap` bytes, its first bytes (at
    most `HEAD_BYTES`, enough for an excerpt) and False: nothing more is read and the
    connection is closed. A declared `Content-Length` over the cap gives (b"", False) at once."""
    length = resp.content_length
    if length is not None and length > cap:
        resp.close()
        return b"", False
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        buf += chunk
        if len(buf) > cap:
            resp.close()
            return bytes(buf[:HEAD_BYTES]), False
    return bytes(buf), True


def too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `body`, read as JSON, opens more than `limit` arrays/objects inside each other.
    Brackets inside strings do not count; a body that is not JSON may be judged either way (it
    fails to decode anyway)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    steps = _STRING.sub(b"", body).translate(_STEPS, _NOT_BRACKETS)
    if len(steps) <= limit:
        return False
    if b"\x02" * (limit + 1) in steps:  # the usual attack, found without the running count
        return True
    deepest: int = max(map(operator.sub, itertools.accumulate(steps), itertools.count(1)))
    return deepest > limit
