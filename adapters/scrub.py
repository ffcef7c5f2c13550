"""Take a secret (an API key) out of text a provider sent back, in whatever form it came.

    scrub(text, secret)          for messages: every form, and every piece of >= 8 characters
    scrub_bytes(payload, secret) for whole bodies, before anything is cut from them: every form
                                 of the whole secret, at C speed

Providers and gateways echo the key they were sent in error bodies, and not always verbatim:
JSON escapes `/` as `\\/` or any character as `\\u00XX`, a URL carries it percent-encoded, an
HTML page as `&#NN;` entities. And a message cut at a length limit ends in a piece of it. So
`scrub` decodes those forms (keeping where each decoded character came from), finds every run
of decoded characters that is a piece of the secret at least `MIN_PIECE` long, and replaces
the text it came from with `***`. A cut made after `scrub` cannot bring a piece back; one made
before it leaves at most `MIN_PIECE - 1` characters of the secret at the cut.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["MASK", "MIN_PIECE", "scrub", "scrub_bytes"]

MASK = "***"
MIN_PIECE = 8
"""A piece of the secret this long or longer is taken out (the whole secret when shorter)."""

_UNIT = re.compile(
    r"\\u[0-9a-fA-F]{4}"  # JSON \u00XX
    r"|\\[\\/\"'bfnrt]"  # JSON short escapes (\/ above all)
    r"|%[0-9a-fA-F]{2}"  # URL encoding
    r"|&#[0-9]{1,7};|&#[xX][0-9a-fA-F]{1,6};"  # HTML numeric entities
    r"|&(?:amp|lt|gt|quot|apos);"  # HTML named entities
    r"|[\s\S]",
)
_SHORT = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_NAMED = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'"}
_ENCODED = ("\\", "%", "&")


def _decode(unit: str) -> str:
    """The one character an encoded unit stands for (a lone unit stands for itself)."""
    if len(unit) == 1:
        return unit
    if unit.startswith("\\u"):
        return chr(int(unit[2:], 16))
    if unit.startswith("\\"):
        return _SHORT.get(unit[1], unit[1])
    if unit.startswith("%"):
        return chr(int(unit[1:], 16))
    if unit.startswith("&#"):
        digits = unit[2:-1]
        code = int(digits[1:], 16) if digits[:1] in ("x", "X") else int(digits)
        return chr(code) if code <= 0x10FFFF else unit
    return _NAMED.get(unit, unit)


def _pieces(secret: str) -> tuple[int, frozenset[str]]:
    width = min(MIN_PIECE, len(secret))
    return width, frozenset(secret[i : i + width] for i in range(len(secret) - width + 1))


def scrub(text: str, secret: str | None) -> str:
    """`text` with `secret` replaced by `***` wherever it, or a piece of it at least
    `MIN_PIECE` characters long, appears: verbatim, JSON-escaped, URL-encoded or as HTML
    entities, in any mix. Adjacent pieces become one `***`."""
    if not secret or not text:
        return text
    width, pieces = _pieces(secret)
    if any(c in text for c in _ENCODED):
        units = _UNIT.findall(text)
        decoded = "".join(_decode(u) for u in units)
    else:
        units, decoded = list(text), text
    hidden = bytearray(len(units))
    for start in range(len(decoded) - width + 1):
        if decoded[start : start + width] in pieces:
            hidden[start : start + width] = b"\x01" * width
    if not any(hidden):
        return text
    out: list[str] = []
    for i, unit in enumerate(units):
        if not hidden[i]:
            out.append(unit)
        elif i == 0 or not hidden[i - 1]:
            out.append(MASK)
    return "".join(out)


def _char_forms(char: str) -> list[str]:
    """Regex alternatives for one character in every encoding `scrub` knows."""
    code = ord(char)
    forms = [re.escape(char)]
    if code < 0x10000:
        forms.append(rf"\\u{code:04x}")
    forms.append("".join(f"%{b:02x}" for b in char.encode("utf-8")))
    forms.append(rf"&#0*{code};")
    forms.append(rf"&#x0*{code:x};")
    if char in '/\\"':
        forms.append(re.escape("\\" + char))
    named = {v: k for k, v in _NAMED.items()}.get(char)
    if named:
        forms.append(re.escape(named))
    return forms


@lru_cache(maxsize=64)
def _whole(secret: str) -> re.Pattern[bytes]:
    pattern = "".join(f"(?:{'|'.join(_char_forms(c))})" for c in secret)
    return re.compile(pattern.encode("utf-8"), re.IGNORECASE)


def scrub_bytes(payload: bytes, secret: str | None) -> bytes:
    """`payload` with every occurrence of the whole `secret`, in any encoding `scrub` knows
    (case-insensitive hex and entity digits), replaced by `***`. Linear in the payload: for
    whole bodies before an excerpt is cut from them; `scrub` the excerpt afterwards."""
    if not secret or not payload:
        return payload
    return _whole(secret).sub(MASK.encode(), payload)
