"""The twin sync stream's framing, sans-IO: length-prefixed JSON messages under a size cap.

A message is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON, an object
with a string ``type``. The length is checked against the cap before any byte of the body is
buffered, the nesting depth is checked by a linear scan before ``json.loads`` runs, and NaN or
Infinity are refused: hostile input costs bounded memory and time and ends in `WireError`.

Both ends use this one module: the edge agent (edge_agent/twin_link.py) and the tunnel server
(tunnel_server/twins/), which never import each other. docs/twins.md is the protocol's
reference.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from device_models._json import nesting_depth, reject_constant

__all__ = [
    "HEADER",
    "PROTOCOL_VERSION",
    "Decoder",
    "WireError",
    "decode_object",
    "encode",
    "encode_frame",
]

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")


class WireError(ValueError):
    """The peer broke the framing or sent a message that is not a bounded JSON object."""


def encode_frame(body: bytes, *, max_bytes: int) -> bytes:
    """Frame an already serialised body; WireError if it exceeds `max_bytes`."""
    if len(body) > max_bytes:
        raise WireError(f"message of {len(body)} bytes exceeds the cap of {max_bytes}")
    return HEADER.pack(len(body)) + body


def encode(message: dict[str, Any], *, max_bytes: int) -> bytes:
    """One framed message; WireError if its body would exceed `max_bytes`."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return encode_frame(body.encode("utf-8"), max_bytes=max_bytes)


def decode_object(data: bytes, *, max_depth: int) -> dict[str, Any]:
    """A JSON object from `data` with its depth checked first; WireError otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise WireError(f"not UTF-8: {error.reason}") from None
    if nesting_depth(text, max_depth) > max_depth:
        raise WireError(f"JSON nests deeper than {max_depth} levels")
    try:
        value = json.loads(text, parse_constant=reject_constant)
    except (ValueError, RecursionError) as error:
        raise WireError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise WireError("not a JSON object")
    return value


def decode_body(data: bytes, *, max_depth: int) -> dict[str, Any]:
    message = decode_object(data, max_depth=max_depth)
    if not isinstance(message.get("type"), str):
        raise WireError('a message is a JSON object with a string "type"')
    return message


class Decoder:
    """Feed bytes as they come; take whole messages out."""

    def __init__(self, *, max_bytes: int, max_depth: int) -> None:
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._buffer = bytearray()
        self._need: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The messages completed by `data` (maybe none); WireError on a broken message."""
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER.size:
                    return messages
                (length,) = HEADER.unpack_from(self._buffer)
                if length == 0 or length > self._max_bytes:
                    self._buffer.clear()  # a broken stream: keep nothing of it
                    raise WireError(f"message length {length} is not within 1..{self._max_bytes}")
                del self._buffer[: HEADER.size]
                self._need = length
            if len(self._buffer) < self._need:
                return messages
            body = bytes(self._buffer[: self._need])
            del self._buffer[: self._need]
            self._need = None
            messages.append(decode_body(body, max_depth=self._max_depth))
