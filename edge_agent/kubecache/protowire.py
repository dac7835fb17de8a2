# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
r"""Pure: just enough of the Kubernetes protobuf encoding to apply a Lease renewal offline.

kubelet renews its node Lease with ``PUT`` and a protobuf body. The body is the Kubernetes
envelope: the 4-byte magic ``k8s\x00`` and a ``runtime.Unknown`` message (k8s.io/apimachinery
``pkg/runtime/generated.proto``: typeMeta=1 {apiVersion=1, kind=2}, raw=2, contentEncoding=3,
contentType=4) whose ``raw`` is a ``coordination.k8s.io/v1`` Lease (k8s.io/api
``coordination/v1/generated.proto``, checked against v0.36.3):

* Lease: metadata=1 (ObjectMeta), spec=2 (LeaseSpec).
* ObjectMeta (apimachinery ``pkg/apis/meta/v1/generated.proto``): name=1, namespace=3,
  resourceVersion=6, labels=11 and annotations=12 (maps: entries with key=1, value=2); the
  other fields are skipped, as the offline answer keeps the cached metadata.
* LeaseSpec: holderIdentity=1, leaseDurationSeconds=2 (int32), acquireTime=3 and renewTime=4
  (MicroTime), leaseTransitions=5 (int32), strategy=6, preferredHolder=7. A field we do not
  know is an error: dropping it would be a silent change.
* MicroTime: seconds=1 (int64), nanos=2 (int32); JSON shows it as RFC 3339 with microseconds.

The reader is hand-written and bounded: varints of at most 10 bytes, lengths checked against
what is left, a fixed nesting depth (the schema's), groups refused. Every malformed input
raises :class:`ProtoError` and nothing else. Repeated occurrences follow protobuf's rules: the
last scalar wins and embedded messages merge (their bytes are parsed as one).

The small encoder below builds the same bytes (tests, and a body edited while offline).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"k8s\x00"
LEASE_API_VERSION = "coordination.k8s.io/v1"

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT64 = 2**64
_NANOS = 1_000_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# RFC 3339 years 0001..9999, as Go's time.MarshalJSON accepts.
_MIN_SECONDS = int((dt.datetime(1, 1, 1, tzinfo=dt.UTC) - _EPOCH).total_seconds())
_MAX_SECONDS = int((dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC) - _EPOCH).total_seconds())


class ProtoError(ValueError):
    """The bytes are not a protobuf message this module understands."""


# ---------------------------------------------------------------- wire reader


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the position after it."""
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if pos + index >= len(data):
            raise ProtoError("truncated varint")
        byte = data[pos + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            if value >= _UINT64:
                raise ProtoError("varint over 64 bits")
            return value, pos + index + 1
    raise ProtoError("varint longer than 10 bytes")


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` for each field: an int, or bytes if delimited."""
    pos = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number < 1 or number > 2**29 - 1:
            raise ProtoError(f"invalid field number {number}")
        if wire == _VARINT:
            value, pos = read_varint(data, pos)
            yield number, wire, value
        elif wire == _BYTES:
            length, pos = read_varint(data, pos)
            if length > len(data) - pos:
                raise ProtoError(f"field {number}: length {length} past the end")
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire in {_FIXED64, _FIXED32}:
            size = 8 if wire == _FIXED64 else 4
            if size > len(data) - pos:
                raise ProtoError(f"field {number}: truncated fixed{size * 8}")
            yield number, wire, int.from_bytes(data[pos : pos + size], "little")
            pos += size
        else:
            raise ProtoError(f"field {number}: unsupported wire type {wire}")


@dataclass(slots=True)
class _Fields:
    """The fields of one message, grouped by number, with protobuf's merge rules."""

    by_number: dict[int, list[tuple[int, int | bytes]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> _Fields:
        parsed = cls()
        for number, wire, value in iter_fields(data):
            parsed.by_number.setdefault(number, []).append((wire, value))
        return parsed

    def numbers(self) -> set[int]:
        return set(self.by_number)

    def _last(self, number: int, wire: int) -> int | bytes | None:
        found = self.by_number.get(number)
        if not found:
            return None
        for got, _ in found:
            if got != wire:
                raise ProtoError(f"field {number}: wire type {got}, expected {wire}")
        return found[-1][1]

    def string(self, number: int) -> str | None:
        value = self._last(number, _BYTES)
        if value is None:
            return None
        assert isinstance(value, bytes)  # noqa: S101 - wire type 2 always yields bytes
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtoError(f"field {number}: not UTF-8") from None

    def blob(self, number: int) -> bytes | None:
        value = self._last(number, _BYTES)
        assert value is None or isinstance(value, bytes)  # noqa: S101 - as above
        return value

    def message(self, number: int) -> _Fields | None:
        """An embedded message; several occurrences merge (parsed as one)."""
        if self.blob(number) is None:  # also checks the wire type of every occurrence
            return None
        parts = self.by_number[number]
        return _Fields.parse(b"".join(v for _, v in parts if isinstance(v, bytes)))

    def messages(self, number: int) -> list[_Fields]:
        """A repeated message field (map entries), each occurrence on its own."""
        self.blob(number)
        return [_Fields.parse(v) for _, v in self.by_number.get(number, []) if isinstance(v, bytes)]

    def strings(self, number: int) -> list[str]:
        """A repeated string field, in order."""
        self.blob(number)
        out: list[str] = []
        for _, value in self.by_number.get(number, []):
            assert isinstance(value, bytes)  # noqa: S101 - wire type checked just above
            try:
                out.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtoError(f"field {number}: not UTF-8") from None
        return out

    def int64(self, number: int) -> int | None:
        value = self._last(number, _VARINT)
        if value is None:
            return None
        assert isinstance(value, int)  # noqa: S101 - wire type 0 always yields an int
        return value - _UINT64 if value > _INT64_MAX else value

    def int32(self, number: int) -> int | None:
        value = self.int64(number)
        if value is not None and not _INT32_MIN <= value <= _INT32_MAX:
            raise ProtoError(f"field {number}: {value} is not an int32")
        return value


# ---------------------------------------------------------------- Kubernetes messages


@dataclass(frozen=True, kw_only=True, slots=True)
class Envelope:
    """A decoded ``runtime.Unknown``: the type and the raw bytes of the object."""

    api_version: str
    kind: str
    raw: bytes
    content_encoding: str = ""
    content_type: str = ""


def decode_envelope(data: bytes) -> Envelope:
    if not data.startswith(MAGIC):
        raise ProtoError("no k8s protobuf magic")
    unknown = _Fields.parse(data[len(MAGIC) :])
    type_meta = unknown.message(1) or _Fields()
    return Envelope(
        api_version=type_meta.string(1) or "",
        kind=type_meta.string(2) or "",
        raw=unknown.blob(2) or b"",
        content_encoding=unknown.string(3) or "",
        content_type=unknown.string(4) or "",
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseBody:
    """What an offline Lease update needs from the protobuf body, in JSON terms."""

    name: str
    namespace: str
    resource_version: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]
    """The LeaseSpec as the API server shows it in JSON (unset fields left out)."""


def _string_map(entries: list[_Fields]) -> dict[str, str]:
    return {(e.string(1) or ""): (e.string(2) or "") for e in entries}


def micro_time_json(seconds: int, nanos: int) -> str:
    """A MicroTime as JSON shows it: UTC, RFC 3339, six fractional digits."""
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise ProtoError(f"time {seconds} s is outside years 1..9999")
    if not 0 <= nanos < _NANOS:
        raise ProtoError(f"nanos {nanos} out of range")
    when = _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _micro_time(message: _Fields) -> str:
    return micro_time_json(message.int64(1) or 0, message.int32(2) or 0)


_SPEC_STRINGS = {1: "holderIdentity", 6: "strategy", 7: "preferredHolder"}
_SPEC_INT32 = {2: "leaseDurationSeconds", 5: "leaseTransitions"}
_SPEC_TIMES = {3: "acquireTime", 4: "renewTime"}


def _lease_spec(spec: _Fields) -> dict[str, Any]:
    unknown = spec.numbers() - set(_SPEC_STRINGS) - set(_SPEC_INT32) - set(_SPEC_TIMES)
    if unknown:
        raise ProtoError(f"LeaseSpec fields {sorted(unknown)} are not known here")
    out: dict[str, Any] = {}
    for number in sorted(spec.numbers()):
        if number in _SPEC_STRINGS:
            out[_SPEC_STRINGS[number]] = spec.string(number)
        elif number in _SPEC_INT32:
            out[_SPEC_INT32[number]] = spec.int32(number)
        else:
            time = spec.message(number)
            assert time is not None  # noqa: S101 - the number is present
            out[_SPEC_TIMES[number]] = _micro_time(time)
    return out


def decode_lease(data: bytes) -> LeaseBody:
    """The Lease in a protobuf request body (envelope included)."""
    envelope = decode_envelope(data)
    if (envelope.api_version, envelope.kind) != (LEASE_API_VERSION, "Lease"):
        raise ProtoError(f"a {envelope.api_version} {envelope.kind}, not a Lease")
    if envelope.content_encoding or envelope.content_type not in {"", "application/protobuf"}:
        raise ProtoError(f"raw bytes in {envelope.content_type} {envelope.content_encoding}")
    lease = _Fields.parse(envelope.raw)
    if lease.numbers() - {1, 2}:
        raise ProtoError(f"Lease fields {sorted(lease.numbers() - {1, 2})} are not known here")
    meta = lease.message(1) or _Fields()
    return LeaseBody(
        name=meta.string(1) or "",
        namespace=meta.string(3) or "",
        resource_version=meta.string(6) or "",
        labels=_string_map(meta.messages(11)),
        annotations=_string_map(meta.messages(12)),
        spec=_lease_spec(lease.message(2) or _Fields()),
    )


def decode_token_request_spec(data: bytes) -> dict[str, Any]:
    """The spec of an ``authentication.k8s.io/v1`` TokenRequest body, in JSON terms.

    TokenRequest: metadata=1, spec=2; TokenRequestSpec: audiences=1 (repeated),
    boundObjectRef=3 {kind=1, apiVersion=2, name=3, uid=4}, expirationSeconds=4 (int64).
    """
    envelope = decode_envelope(data)
    if (envelope.api_version, envelope.kind) != ("authentication.k8s.io/v1", "TokenRequest"):
        raise ProtoError(f"a {envelope.api_version} {envelope.kind}, not a TokenRequest")
    spec = _Fields.parse(envelope.raw).message(2) or _Fields()
    out: dict[str, Any] = {"audiences": spec.strings(1)}
    bound = spec.message(3)
    if bound is not None:
        out["boundObjectRef"] = {
            key: bound.string(number) or ""
            for number, key in ((1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid"))
        }
    seconds = spec.int64(4)
    if seconds is not None:
        out["expirationSeconds"] = seconds
    return out


# ---------------------------------------------------------------- encoder


def _varint(value: int) -> bytes:
    value %= _UINT64  # negative ints: ten bytes of two's complement, as protobuf does
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | _VARINT) + _varint(value)


def encode_bytes_field(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | _BYTES) + _varint(len(data)) + data


def encode_micro_time(text: str) -> bytes:
    """A MicroTime message from its JSON text (seconds and nanos always written, as Go does)."""
    when = dt.datetime.fromisoformat(text)
    delta = when - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return encode_varint_field(1, seconds) + encode_varint_field(2, delta.microseconds * 1000)


def encode_lease_spec(spec: Mapping[str, Any]) -> bytes:
    """A LeaseSpec in field order, from its JSON form (unset fields left out)."""
    out = bytearray()
    for number in range(1, 8):
        if number in _SPEC_STRINGS and spec.get(_SPEC_STRINGS[number]) is not None:
            out += encode_bytes_field(number, str(spec[_SPEC_STRINGS[number]]))
        elif number in _SPEC_INT32 and spec.get(_SPEC_INT32[number]) is not None:
            out += encode_varint_field(number, int(spec[_SPEC_INT32[number]]))
        elif number in _SPEC_TIMES and spec.get(_SPEC_TIMES[number]) is not None:
            out += encode_bytes_field(number, encode_micro_time(str(spec[_SPEC_TIMES[number]])))
    return bytes(out)


def encode_envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = encode_bytes_field(1, api_version) + encode_bytes_field(2, kind)
    unknown = (
        encode_bytes_field(1, type_meta)
        + encode_bytes_field(2, raw)
        + encode_bytes_field(3, "")
        + encode_bytes_field(4, "")
    )
    return MAGIC + unknown


def lease_with_spec(data: bytes, spec: Mapping[str, Any]) -> bytes:
    """A protobuf Lease body with its spec replaced and everything else kept byte for byte."""
    envelope = decode_envelope(data)
    kept = b"".join(
        encode_bytes_field(number, value)
        for number, wire, value in iter_fields(envelope.raw)
        if number != 2 and wire == _BYTES and isinstance(value, bytes)
    )
    raw = kept + encode_bytes_field(2, encode_lease_spec(spec))
    return encode_envelope(envelope.api_version, envelope.kind, raw)
