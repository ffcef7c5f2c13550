"""PostgreSQL connection strings without their secrets: for logs, errors and `repr`.

    redact_dsn(dsn)         the DSN to show: every password replaced by `***`
    redact_error(exc, dsn)  an error's text with every form of the DSN's secrets taken out
    dsn_secrets(dsn)        the secret values of a DSN, in every form they can appear in

A DSN is redacted by PARSING it the way libpq does (`psycopg.conninfo.conninfo_to_dict`, which
is libpq's own parser): URLs (`postgresql://user:pw@host/db?sslpassword=...`, where libpq
takes `?`, `#` and `:` inside the userinfo as part of it) and `key=value` strings with quoted
values alike. The shown form is built from the parsed parts with `password` and `sslpassword`
set to `***`, never by a pattern over the text.

A DSN libpq cannot parse (an unescaped `%`, an unterminated quote), or whose parts only make
sense if a password was misread as a host, port or database (a `/` or `@` inside an unescaped
password), shows as `<unparseable DSN>` with at most its host, and errors about it lose every
quoted token: libpq quotes the piece of the DSN it choked on, which may be the password.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["UNPARSEABLE", "chainable", "dsn_secrets", "redact_dsn", "redact_error"]

UNPARSEABLE = "<unparseable DSN>"
HIDDEN = "***"

_SECRET_KEYS = frozenset({"password", "sslpassword"})
_URL_SCHEMES = ("postgresql://", "postgres://")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PORTS = re.compile(r"^[0-9,]*$")
_QUOTED = re.compile(r'"[^"]*"|\'[^\']*\'')
_HOST_CHARS = re.compile(r"^[A-Za-z0-9.,:\[\]_-]+$")


def _is_url(dsn: str) -> bool:
    return dsn.lstrip().lower().startswith(_URL_SCHEMES)


def _is_secret(key: str) -> bool:
    return key in _SECRET_KEYS or "password" in key


def _parse(dsn: str) -> dict[str, str] | None:
    """libpq's reading of `dsn`, or None when it fails or looks like a misread password."""
    try:
        parts = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except (psycopg.Error, ValueError, TypeError):
        return None
    if _is_url(dsn):
        # `postgresql://u:pa/ss@h/db` parses as host `u`, port `pa`, database `ss@h/db`: the
        # password leaks into parts that are shown. No sane DSN has such parts.
        if not _PORTS.match(parts.get("port", "")):
            return None
        if any("@" in v for k, v in parts.items() if not _is_secret(k)):
            return None
    return parts


def _parse_lenient(dsn: str) -> tuple[dict[str, str] | None, bool]:
    """(parts, exact): libpq's parse, or one after escaping stray `%` and spaces, which libpq
    refuses in a URL (then not exact: only the host of it is shown)."""
    parts = _parse(dsn)
    if parts is not None:
        return parts, True
    if _is_url(dsn) and ("%" in dsn or " " in dsn.strip()):
        return _parse(_BAD_PERCENT.sub("%25", dsn.strip()).replace(" ", "%20")), False
    return None, False


def _url(parts: dict[str, str], scheme: str) -> str:
    rest = dict(parts)
    user = rest.pop("user", None)
    password = rest.pop("password", None)
    dbname = rest.pop("dbname", None)
    host, port = rest.get("host", ""), rest.get("port", "")
    netloc = ""
    if host and _HOST_CHARS.match(host) and "," not in host + port:
        del rest["host"]
        rest.pop("port", None)
        netloc = f"[{host}]" if ":" in host else host
        if port:
            netloc += f":{port}"
    if user is not None or password is not None:
        userinfo = quote(user or "", safe="")
        if password is not None:
            userinfo += ":" + HIDDEN
        netloc = f"{userinfo}@{netloc}"
    out = f"{scheme}://{netloc}/"
    if dbname is not None:
        out += quote(dbname, safe="")
    if rest:
        query = "&".join(
            f"{k}={HIDDEN if _is_secret(k) else quote(v, safe='/,:')}" for k, v in rest.items()
        )
        out += "?" + query
    return out


def _host_of(parts: dict[str, str] | None) -> str | None:
    host = (parts or {}).get("host")
    return host if host and _HOST_CHARS.match(host.replace("/", "")) else None


def redact_dsn(dsn: str) -> str:
    """`dsn` as it may be shown: unchanged when it holds no secret; otherwise rebuilt from its
    parsed parts with each password as `***`; `<unparseable DSN>` (plus the host, when known)
    when libpq cannot read it."""
    parts, exact = _parse_lenient(dsn)
    if parts is None or not exact:
        host = _host_of(parts)
        return f"{UNPARSEABLE} (host {host})" if host else UNPARSEABLE
    if not any(_is_secret(k) for k in parts):
        return dsn
    if _is_url(dsn):
        return _url(parts, dsn.lstrip().split(":", 1)[0].lower())
    return make_conninfo("", **{k: HIDDEN if _is_secret(k) else v for k, v in parts.items()})


def _raw_url_secrets(dsn: str) -> set[str]:
    """Password candidates read off the text itself: the userinfo after its first `:` (up to
    the last `@`, as a password may hold `@`, `/`, `?` or `#`) and every `...password=` query
    value, each as written."""
    found: set[str] = set()
    body = dsn.strip().split("://", 1)[-1]
    if "@" in body:
        userinfo = body.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    for piece in re.split(r"[?&]", body)[1:]:
        key, _, value = piece.partition("=")
        if "password" in key.lower():
            found.add(value)
            found.add(value.split("#", 1)[0])
    return found


def _raw_kv_secrets(dsn: str) -> set[str]:
    """Password candidates of a `key=value` DSN that libpq could not parse: what follows
    `password =` up to the next space, quoted or not."""
    found: set[str] = set()
    for match in re.finditer(r"password\s*=\s*(\S+)", dsn, flags=re.IGNORECASE):
        value = match.group(1)
        found.add(value)
        found.add(value.strip("'"))
        found.add(dsn[match.start(1) :])  # an unterminated quote runs to the end
    return found


def dsn_secrets(dsn: str) -> list[str]:
    """Every secret of `dsn` in every form an error may quote it in: as parsed (decoded), as
    written, percent-encoded and percent-decoded; longest first, never empty strings."""
    values: set[str] = set()
    parts, _ = _parse_lenient(dsn)
    for key, value in (parts or {}).items():
        if _is_secret(key):
            values.add(value)
            values.add(value.replace("\\", "\\\\").replace("'", "\\'"))  # as quoted
    if _is_url(dsn):
        values |= _raw_url_secrets(dsn)
    elif parts is None:
        values |= _raw_kv_secrets(dsn)
    forms: set[str] = set()
    for value in values:
        for form in (value, value.strip("'\"")):
            forms |= {form, quote(form, safe=""), quote(form), unquote(form)}
    return sorted((f for f in forms if f), key=len, reverse=True)


def redact_error(error: BaseException | str, dsn: str) -> str:
    """The text of `error` (a libpq / psycopg error, or any text) with every form of the
    secrets of `dsn` replaced by `***`, on one line. When `dsn` does not parse cleanly, every
    quoted token goes too: libpq quotes the part of the DSN it could not read."""
    secrets = dsn_secrets(dsn)
    text = str(error)
    for _ in range(2):  # as raised, then on one line (a secret may hold spaces)
        for secret in secrets:
            text = text.replace(secret, HIDDEN)
        text = " ".join(text.split())
    text = text or type(error).__name__
    if _parse(dsn) is None:
        text = _QUOTED.sub(f'"{HIDDEN}"', text)
    return text


def chainable(exc: BaseException) -> BaseException | None:
    """What an error about the database may chain (`raise ... from chainable(exc)`): `exc`,
    but not a psycopg error, whose own text may quote the password (put its `redact_error`
    text in the message instead)."""
    return None if isinstance(exc, psycopg.Error) else exc
