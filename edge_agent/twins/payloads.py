"""Bounded decoding of MQTT payloads and the error codes answered on result topics.

Every payload is checked before it is parsed: its size against a cap, then its nesting depth by
a linear scan (so ``json.loads`` never recurses deeply on hostile input), then parsed with
NaN/Infinity refused. Anything wrong becomes a `RequestError` with a stable code, which the
caller turns into an answer on the result topic: bad input never crashes the agent.
"""

from __future__ import annotations

import json
from enum import StrEnum

from device_models import (
    MAX_DEPTH,
    DeviceModelsError,
    JsonObject,
    JsonValue,
    Problem,
    nesting_depth,
    reject_constant,
)
from edge_agent.twins.topics import RID

__all__ = [
    "ENVELOPE_DEPTH",
    "Code",
    "RequestError",
    "decode_object",
    "encode",
    "error_from_model",
    "optional_rid",
]

# A request envelope adds one level around a twin section, which may nest MAX_DEPTH levels.
ENVELOPE_DEPTH = MAX_DEPTH + 1


class Code(StrEnum):
    """Stable reason words; each has an HTTP-like status (`STATUS`).

    The same words as the REST API's problem documents for the same failure
    (docs/api.md, docs/mqtt.md §5): ``invalid_value``, ``version_conflict``, ``too_large``...
    """

    OK = "ok"
    BAD_REQUEST = "bad_request"
    UNKNOWN_FIELD = "unknown_field"
    BAD_CLAIM = "bad_claim"
    UNKNOWN_DEVICE = "device_not_found"
    UNKNOWN_MODEL = "model_unknown"
    DUPLICATE_ID = "duplicate_id"
    MOVE_REFUSED = "move_refused"
    VERSION_CONFLICT = "version_conflict"
    OUT_OF_ORDER = "out_of_order"
    TOO_LARGE = "too_large"
    INVALID_VALUE = "invalid_value"
    OUTBOX_FULL = "outbox_full"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.BAD_REQUEST: 400,
    Code.UNKNOWN_FIELD: 400,
    Code.BAD_CLAIM: 403,
    Code.UNKNOWN_DEVICE: 404,
    Code.UNKNOWN_MODEL: 404,
    Code.DUPLICATE_ID: 409,
    Code.MOVE_REFUSED: 409,
    Code.VERSION_CONFLICT: 409,
    Code.OUT_OF_ORDER: 409,
    Code.TOO_LARGE: 413,
    Code.INVALID_VALUE: 422,
    Code.OUTBOX_FULL: 503,
    Code.UNAVAILABLE: 503,
    Code.INTERNAL: 500,
}


class RequestError(Exception):
    """A request that gets an error answer; `problems` name the path and reason."""

    def __init__(self, code: Code, message: str, problems: tuple[Problem, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problems = problems

    def to_json(self) -> JsonObject:
        body: JsonObject = {
            "code": STATUS[self.code],
            "reason": str(self.code),
            "detail": self.message,
        }
        if self.problems:
            body["problems"] = [{"path": p.path, "reason": p.reason} for p in self.problems]
        return body


# Made once: json.loads and json.dumps with options build a decoder or encoder per call (the
# agent decodes and encodes a few per device report). Same options, same output.
_DECODER = json.JSONDecoder(parse_constant=reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def error_from_model(error: DeviceModelsError, code: Code) -> RequestError:
    return RequestError(code, error.summary, error.problems)


def decode_object(payload: bytes, *, max_bytes: int, max_depth: int = ENVELOPE_DEPTH) -> JsonObject:
    """Decode a JSON object payload under the size and depth caps, or raise RequestError."""
    if len(payload) > max_bytes:
        raise RequestError(Code.TOO_LARGE, f"payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(Code.BAD_REQUEST, f"payload is not UTF-8: {exc.reason}") from None
    if nesting_depth(text, max_depth) > max_depth:
        raise RequestError(Code.TOO_LARGE, f"payload nests deeper than {max_depth} levels")
    try:
        data: JsonValue = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise RequestError(Code.BAD_REQUEST, f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(Code.BAD_REQUEST, "payload must be a JSON object")
    return data


def optional_rid(data: JsonObject) -> str | None:
    """The request id of a request, validated; None when the request has none."""
    rid = data.get("rid")
    if rid is None:
        return None
    if not isinstance(rid, str) or not RID.fullmatch(rid):
        raise RequestError(Code.BAD_REQUEST, "rid must be 1 to 64 of letters, digits and ._-")
    return rid


def only_fields(data: JsonObject, allowed: frozenset[str]) -> None:
    unknown = sorted(key[:64] for key in data if key not in allowed)
    if unknown:
        expected = ", ".join(sorted(allowed))
        raise RequestError(
            Code.UNKNOWN_FIELD,
            f"unknown field(s) {', '.join(unknown)} (expected {expected})",
            tuple(Problem(path=name, reason="unknown field") for name in unknown),
        )


def encode(body: JsonObject) -> bytes:
    return _ENCODER.encode(body).encode("utf-8")
