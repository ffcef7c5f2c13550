"""Endpoint URLs as they may be shown: credentials found by parsing the URL, never by a pattern.

    redact_url(url)        the URL with its userinfo shown as `***` (for messages and logs)
    strip_userinfo(url)    the URL without its userinfo (for keys and metric labels)
    url_secrets(url)       the userinfo's parts in every form an error text may quote them
    redact_url_keys(raw)   a JSON object keyed by URLs (a setting), each key redacted

A row's endpoint may carry credentials (`https://user:password@gateway/v1`). The parser
(`urllib.parse.urlsplit`) finds the userinfo up to the last `@` of the authority, so a password
holding `@`, `:` or percent-escapes is masked whole. A password holding `/`, `?` or `#` ends
the authority early for every parser, and part of it would then show in the path: whenever an
`@` is left after the authority, everything from the authority to the last `@` is masked too.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import unquote, urlsplit

import msgspec

__all__ = ["MASK", "redact_url", "redact_url_keys", "strip_userinfo", "url_secrets"]

MASK = "***"
UNPARSEABLE = "<unparseable URL>"


@lru_cache(maxsize=1024)
def _split(url: str) -> tuple[str, str, str] | None:
    """(before the userinfo, the userinfo, from the host on) when `url` has credentials;
    ("", "", "") when it has none; None when it does not parse."""
    if "@" not in url:
        return "", "", ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    start = url.find("//")
    if start < 0:  # no authority ("user:pw@host/v1" is scheme "user" to a parser): mask it all
        at = url.rfind("@")
        return "", url[:at], url[at + 1 :]
    start += 2
    rest = url[start + len(parts.netloc) :]
    if "@" in rest:  # a '/', '?' or '#' in the password cut the authority short
        at = url.rfind("@")
        return url[:start], url[start:at], url[at + 1 :]
    userinfo, sep, hostport = parts.netloc.rpartition("@")
    if not sep:
        return "", "", ""
    return url[:start], userinfo, hostport + rest


def redact_url(url: str) -> str:
    """`url` with any userinfo replaced by `***`; `<unparseable URL>` if it cannot be parsed
    (and holds an `@`). A URL without `@` comes back unchanged."""
    split = _split(url)
    if split is None:
        return UNPARSEABLE
    head, userinfo, tail = split
    if not userinfo and not head:
        return url
    return f"{head}{MASK}@{tail}"


def strip_userinfo(url: str) -> str:
    """`url` without its userinfo (`https://u:p@host/v1` -> `https://host/v1`)."""
    split = _split(url)
    if split is None:
        return UNPARSEABLE
    head, userinfo, tail = split
    if not userinfo and not head:
        return url
    return head + tail


@lru_cache(maxsize=1024)
def url_secrets(url: str) -> tuple[str, ...]:
    """The userinfo of `url` and its user and password, raw and percent-decoded, longest
    first: what a library's error text may quote. A user name shorter than 4 characters is
    left out (masking it would garble the message, and it hides nothing)."""
    split = _split(url)
    if split is None or not split[1]:
        return ()
    userinfo = split[1]
    user, _, password = userinfo.partition(":")
    found = {userinfo, unquote(userinfo), password, unquote(password)}
    if len(user) >= 4:
        found |= {user, unquote(user)}
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def redact_url_keys(raw: str) -> str:
    """A JSON object keyed by URLs (`LLM_WORKER_ENDPOINT_LIMITS`) as it may be logged: each key
    redacted, found by parsing the JSON and then each URL (text that is not a JSON object is
    not shown at all)."""
    if "@" not in raw:
        return raw
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return "<not JSON: not shown>"
    if not isinstance(data, dict):
        return "<not a JSON object: not shown>"
    return msgspec.json.encode({redact_url(k): v for k, v in data.items()}).decode()
