# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The protobuf reader for offline Lease renewals: field numbers, round trips, fuzzing."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.kubecache.protowire import (
    MAGIC,
    ProtoError,
    decode_envelope,
    decode_lease,
    encode_bytes_field,
    encode_envelope,
    encode_lease_spec,
    encode_varint_field,
    iter_fields,
    lease_with_spec,
    micro_time_json,
    read_varint,
)


def metadata(**fields: str) -> bytes:
    numbers = {"name": 1, "namespace": 3, "uid": 5, "resourceVersion": 6}
    return b"".join(encode_bytes_field(numbers[k], v) for k, v in fields.items())


def lease(meta: bytes, spec: dict[str, Any]) -> bytes:
    raw = encode_bytes_field(1, meta) + encode_bytes_field(2, encode_lease_spec(spec))
    return encode_envelope("coordination.k8s.io/v1", "Lease", raw)


SPEC = {
    "holderIdentity": "node-a",
    "leaseDurationSeconds": 40,
    "acquireTime": "2026-01-01T00:00:00.000001Z",
    "renewTime": "2026-01-01T00:00:10.123456Z",
    "leaseTransitions": 2,
}


def test_a_lease_body_decodes_to_its_json_form() -> None:
    body = decode_lease(lease(metadata(name="n", namespace="kube-node-lease", uid="u"), SPEC))
    assert (body.name, body.namespace, body.resource_version) == ("n", "kube-node-lease", "")
    assert body.spec == SPEC
    assert body.labels == body.annotations == {}


def test_a_known_byte_layout() -> None:
    """Hand-assembled from generated.proto: spec=2 {holderIdentity=1, renewTime=4 {1, 2}}."""
    renew = b"\x08\x80\x81\xe4\x92\x06\x10\xe8\x07"  # seconds 1650000000, nanos 1000
    spec = b"\x0a\x01a" + b"\x22" + bytes([len(renew)]) + renew
    raw = b"\x0a\x06\x0a\x01x\x32\x017" + b"\x12" + bytes([len(spec)]) + spec
    type_meta = b"\x0a\x16coordination.k8s.io/v1\x12\x05Lease"
    data = MAGIC + b"\x0a" + bytes([len(type_meta)]) + type_meta + b"\x12" + bytes([len(raw)])
    body = decode_lease(data + raw)
    assert (body.name, body.resource_version) == ("x", "7")
    assert body.spec == {"holderIdentity": "a", "renewTime": "2022-04-15T05:20:00.000001Z"}


def test_labels_and_annotations_are_read_as_maps() -> None:
    entry = encode_bytes_field(1, "k") + encode_bytes_field(2, "v")
    meta = metadata(name="n") + encode_bytes_field(11, entry) + encode_bytes_field(12, entry)
    body = decode_lease(lease(meta, SPEC))
    assert body.labels == body.annotations == {"k": "v"}


def test_embedded_messages_merge_and_last_scalar_wins() -> None:
    spec = encode_lease_spec({"holderIdentity": "a"}) + encode_lease_spec({"holderIdentity": "b"})
    raw = (
        encode_bytes_field(1, metadata(name="n"))
        + encode_bytes_field(2, spec[:3])
        + encode_bytes_field(2, encode_varint_field(2, 7))
    )
    body = decode_lease(encode_envelope("coordination.k8s.io/v1", "Lease", raw))
    assert body.spec == {"holderIdentity": "a", "leaseDurationSeconds": 7}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{}", "magic"),
        (encode_envelope("v1", "ConfigMap", b""), "not a Lease"),
        (lease(b"", {}) + b"\x80", "truncated varint"),
        (MAGIC + b"\x12\x05ab", "past the end"),
        (MAGIC + b"\x0b", "wire type 3"),
        (MAGIC + b"\x12" + b"\xff" * 11, "longer than 10"),
        (
            encode_envelope(
                "coordination.k8s.io/v1", "Lease", encode_bytes_field(2, encode_bytes_field(9, "x"))
            ),
            "not known here",
        ),
        (
            encode_envelope(
                "coordination.k8s.io/v1", "Lease", encode_bytes_field(2, encode_varint_field(1, 5))
            ),
            "wire type 0",
        ),
        (
            encode_envelope(
                "coordination.k8s.io/v1",
                "Lease",
                encode_bytes_field(2, encode_varint_field(2, 2**40)),
            ),
            "not an int32",
        ),
        (
            encode_envelope(
                "coordination.k8s.io/v1", "Lease", encode_bytes_field(1, b"\x0a\x01\xff")
            ),
            "UTF-8",
        ),
    ],
)
def test_malformed_bodies_raise_proto_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtoError, match=message):
        decode_lease(data)


def test_micro_time_bounds() -> None:
    assert micro_time_json(0, 999_999_999) == "1970-01-01T00:00:00.999999Z"
    assert micro_time_json(-62135596800, 0) == "0001-01-01T00:00:00.000000Z"
    with pytest.raises(ProtoError):
        micro_time_json(-62135596801, 0)
    with pytest.raises(ProtoError):
        micro_time_json(0, -1)


@given(st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    data = encode_varint_field(1, value)
    (number, wire, decoded), *_ = iter_fields(data)
    assert (number, wire, decoded) == (1, 0, value % 2**64)
    assert read_varint(data, 1) == (value % 2**64, len(data))


# Naive bounds: hypothesis wants them so; the texts are UTC ("Z").
EARLIEST = dt.datetime(1, 1, 1)  # noqa: DTZ001
LATEST = dt.datetime(9999, 12, 31)  # noqa: DTZ001
times = st.datetimes(min_value=EARLIEST, max_value=LATEST).map(
    lambda d: d.isoformat(timespec="microseconds") + "Z"
)
specs = st.fixed_dictionaries(
    {},
    optional={
        "holderIdentity": st.text(),
        "leaseDurationSeconds": st.integers(min_value=-(2**31), max_value=2**31 - 1),
        "acquireTime": times,
        "renewTime": times,
        "leaseTransitions": st.integers(min_value=-(2**31), max_value=2**31 - 1),
        "strategy": st.text(),
        "preferredHolder": st.text(),
    },
)


@given(specs, st.text(), st.text())
def test_lease_round_trip(spec: dict[str, Any], name: str, rv: str) -> None:
    body = decode_lease(lease(metadata(name=name, resourceVersion=rv), spec))
    assert (body.name, body.resource_version, body.spec) == (name, rv, spec)
    renewed = lease_with_spec(lease(metadata(name=name), SPEC), spec)
    assert decode_lease(renewed).spec == spec


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_proto_error(data: bytes) -> None:
    for candidate in (data, MAGIC + data):
        with contextlib.suppress(ProtoError):
            decode_lease(candidate)


@settings(max_examples=500)
@given(st.binary(max_size=256), st.binary(max_size=256))
def test_arbitrary_lease_contents_raise_only_proto_error(meta: bytes, spec: bytes) -> None:
    raw = encode_bytes_field(1, meta) + encode_bytes_field(2, spec)
    for candidate in (
        encode_envelope("coordination.k8s.io/v1", "Lease", raw),
        encode_envelope("coordination.k8s.io/v1", "Lease", meta + spec),
    ):
        with contextlib.suppress(ProtoError):
            decode_lease(candidate)
        with contextlib.suppress(ProtoError):
            decode_envelope(candidate)
