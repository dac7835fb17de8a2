"""The request head the gateway sends to a backend: hop-by-hop fields out, ours in.

Pure functions on ``(name, value)`` lists, no I/O: the listener (``server.py``) calls them.

Rules (RFC 9110 section 7.6.1, and what nginx and Envoy do):

* Hop-by-hop fields never cross the gateway: the fixed set (``Connection``, ``Keep-Alive``,
  ``TE``, ``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``, ``Trailer``; shared with the
  kube proxy, ``http_over_stream.HOP_BY_HOP``) and every field the client's ``Connection``
  names. Three names are never dropped that way, whatever ``Connection`` says: ``Host``,
  ``Content-Length`` and ``Content-Type`` describe the message end to end, and dropping
  ``Content-Length`` would change how the backend frames the body. An upgrade keeps its own
  ``Connection: Upgrade`` and ``Upgrade`` (the caller adds them back).
* ``X-Forwarded-For``: the client's chain, if it sent one, then the address we saw (the last
  entry is the only one this gateway vouches for; nginx ``$proxy_add_x_forwarded_for``).
  ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are ours alone: ``http`` or ``https`` as
  the client reached us, and the ``Host`` it sent; a client's own values are dropped.
* ``X-Request-Id``: the client's if it is safe to log and echo (1-128 characters of
  ``A-Z a-z 0-9 . _ : -``), else a new one; exactly one reaches the backend.
* A route's header modifier (Gateway API ``RequestHeaderModifier``: set, add, remove) applies
  before ours, so no route can forge the forwarded fields either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tunnel_server.tunnel.http_over_stream import HOP_BY_HOP

__all__ = [
    "FORWARDED",
    "HeaderModifier",
    "Headers",
    "connection_tokens",
    "forwarded_for",
    "modify",
    "safe_request_id",
    "with_forwarded",
]

Headers = list[tuple[str, str]]
FORWARDED = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"})
"""Fields the gateway writes itself; a client's or a route's are replaced."""
_END_TO_END = frozenset({"host", "content-length", "content-type"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An RFC 9110 token: what a ``Connection`` option must be."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_CHAIN = 2048
"""Characters of a client's ``X-Forwarded-For`` chain we pass on; a longer one is cut from
the left (the oldest, least trustworthy entries) so the head stays bounded."""


@dataclass(frozen=True, kw_only=True)
class HeaderModifier:
    """A route's ``RequestHeaderModifier``: names compare case-insensitively."""

    set: tuple[tuple[str, str], ...] = ()
    """Replace every field of that name (or add it)."""
    add: tuple[tuple[str, str], ...] = ()
    """Append a field, keeping those already there."""
    remove: tuple[str, ...] = ()
    """Drop every field of that name."""


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """The lower-case field names the ``Connection`` values list (options, not fields, too).

    Anything that is not a token is ignored (it names no field we could drop).
    """
    names: set[str] = set()
    for value in values:
        for part in value.split(","):
            token = part.strip().lower()
            if _TOKEN.fullmatch(token):
                names.add(token)
    return frozenset(names)


def hop_by_hop(headers: Sequence[tuple[str, str]]) -> frozenset[str]:
    """Every lower-case name that must not be forwarded from ``headers``."""
    named = connection_tokens(v for n, v in headers if n.lower() == "connection")
    return (HOP_BY_HOP | named) - _END_TO_END


def safe_request_id(value: str | None) -> str | None:
    """The client's request id if it is safe to pass on and log, else None."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return None


def forwarded_for(chain: Sequence[str], client: str) -> str:
    """``X-Forwarded-For``: the client's chain (bounded, cut from the left), then ``client``."""
    previous = ", ".join(p.strip() for part in chain for p in part.split(",") if p.strip())
    if len(previous) > MAX_CHAIN:
        previous = previous[-MAX_CHAIN:].partition(",")[2].strip()
    return f"{previous}, {client}" if previous else client


def modify(headers: Headers, modifier: HeaderModifier) -> Headers:
    """``headers`` with a route's modifier applied (remove, then set, then add).

    A route cannot touch what frames the message (``Host``, ``Content-Length``, the
    hop-by-hop fields the exchange needs) nor the forwarded fields, which are ours.
    """
    guarded = _END_TO_END | HOP_BY_HOP | FORWARDED
    gone = {name.lower() for name in modifier.remove} | {n.lower() for n, _ in modifier.set}
    out = [(n, v) for n, v in headers if n.lower() not in gone - guarded]
    out += [(n, v) for n, v in (*modifier.set, *modifier.add) if n.lower() not in guarded]
    return out


def with_forwarded(
    headers: Headers,
    *,
    incoming: Sequence[tuple[str, str]],
    client: str,
    proto: str,
    host: str | None,
    request_id: str,
) -> Headers:
    """``headers`` without any forwarded field, then ours (computed from ``incoming``)."""
    chain = [v for n, v in incoming if n.lower() == "x-forwarded-for"]
    out = [(n, v) for n, v in headers if n.lower() not in FORWARDED]
    out.append(("X-Forwarded-For", forwarded_for(chain, client)))
    out.append(("X-Forwarded-Proto", proto))
    if host:
        out.append(("X-Forwarded-Host", host))
    out.append(("X-Request-Id", request_id))
    return out
