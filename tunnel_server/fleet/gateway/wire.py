"""The bytes of the gateway's common exchange: the request head out, a plain answer's head in.

Pure functions, no I/O (``exchange.py`` calls them). They exist for speed: h11 spent about
0.15 ms of the gateway's CPU per request building, checking and parsing heads; these take a
few microseconds for the same work on the common case and hand everything else to h11.

Rules:

* ``request_head`` writes ``METHOD target HTTP/1.1``, then each field as ``Name: value``. It
  checks what h11 checked (RFC 9110 section 5): a field name is a token, a value is visible
  ASCII, spaces and tabs with none at either end; the target is printable ASCII. Anything else
  raises ``UnsendableError`` (the listener answers 400), so nothing a client or a route sends
  can split a line or forge a field.
* ``parse_plain_response`` parses a response head only when its answer is *plain*: a final
  status (200-599) from HTTP/1.1 or 1.0, valid fields (names are tokens, values without
  control characters), and a body framed by one valid ``Content-Length`` or by none at all
  (204, 304, an answer to HEAD). Anything else (an interim 1xx, a 101, ``Transfer-Encoding``,
  a body running until close, a malformed or over-long head) is None: the caller hands the
  bytes, untouched, to h11, which relays it as before or says why it is not HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PlainResponse", "UnsendableError", "parse_plain_response", "request_head"]

_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
"""RFC 9110 section 5.6.2: a field name."""
_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?")
"""A field value we send: visible ASCII with inner spaces and tabs (what h11 accepted for
``str`` fields, which it encoded as ASCII)."""
_TARGET = re.compile(r"[\x21-\x7e]+")
_BTOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_BVALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
"""A response field value we pass on: no control character but tab (obs-text allowed)."""
_STATUS = re.compile(rb"HTTP/1\.[01] ([2-5][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
"""A final status line; interim (1xx) answers are h11's."""
_DIGITS = re.compile(rb"[0-9]{1,18}")


class UnsendableError(ValueError):
    """The request cannot be written as HTTP/1.1; the message says which part."""


def request_head(method: str, target: str, fields: list[tuple[str, str]]) -> bytes:
    """The request head as bytes (with its blank line); UnsendableError if it cannot be sent."""
    if not _TOKEN.fullmatch(method):
        raise UnsendableError(f"the method {method[:40]!r} is not a token")
    if not _TARGET.fullmatch(target):
        raise UnsendableError("the request target is not printable ASCII")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in fields:
        if not _TOKEN.fullmatch(name):
            raise UnsendableError(f"the field name {name[:40]!r} is not a token")
        if not _VALUE.fullmatch(value):
            raise UnsendableError(f"the value of {name} is not visible ASCII")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("ascii")


def _fields(lines: list[bytes]) -> tuple[list[tuple[str, str]], set[bytes]] | None:
    """The fields and the ``Content-Length`` values; None if one is invalid or a coding.

    Repeated ``Content-Length`` fields (or a list of values) become one field, as h11 made
    them; different values are h11's to refuse.
    """
    fields: list[tuple[str, str]] = []
    lengths: set[bytes] = set()
    at = -1
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _BTOKEN.fullmatch(name):
            return None  # also an obsolete line folding (a leading space or tab)
        value = value.strip(b" \t")
        if not _BVALUE.fullmatch(value):
            return None
        lower = name.lower()
        if lower == b"transfer-encoding":
            return None
        if lower == b"content-length":
            lengths.update(part.strip(b" \t") for part in value.split(b","))
            if at >= 0:
                continue
            at = len(fields)
        fields.append((name.decode("latin-1"), value.decode("latin-1")))
    if len(lengths) > 1 or (lengths and not _DIGITS.fullmatch(next(iter(lengths)))):
        return None
    if lengths:
        fields[at] = (fields[at][0], next(iter(lengths)).decode("latin-1"))
    return fields, lengths


@dataclass(frozen=True, slots=True)
class PlainResponse:
    """A plain answer's head (see the module's rules)."""

    status: int
    reason: str
    fields: list[tuple[str, str]]
    """Every field as sent (names and values decoded as Latin-1, as h11's were)."""
    length: int
    """Body bytes that follow the head (0: none)."""
    size: int
    """Bytes of the head, blank line included."""


def parse_plain_response(buffer: bytes, *, method: str, limit: int) -> PlainResponse | None:
    """``buffer``'s response head if its answer is plain; None otherwise (h11 decides).

    Also None while the head has not all arrived: the caller reads more when ``buffer``
    holds no ``CRLF CRLF`` within ``limit`` bytes, else hands it to h11.
    """
    end = buffer.find(b"\r\n\r\n", 0, limit)
    if end < 0:
        return None
    lines = buffer[:end].split(b"\r\n")
    status_line = _STATUS.fullmatch(lines[0])
    if status_line is None:
        return None
    status = int(status_line.group(1))
    parsed = _fields(lines[1:])
    if parsed is None:
        return None
    fields, lengths = parsed
    length = 0
    if status not in (204, 304) and method != "HEAD":
        if len(lengths) != 1:
            return None  # no length (until close) or several different ones
        (value,) = lengths
        if not _DIGITS.fullmatch(value):
            return None
        length = int(value)
    reason = (status_line.group(2) or b"").decode("latin-1")
    return PlainResponse(status=status, reason=reason, fields=fields, length=length, size=end + 4)
