# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Service-account tokens: the request's deciding spec, expiry, keeping and pruning."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.kubecache.ops import cache_purge, cache_stats, cache_verify
from edge_agent.kubecache.protowire import (
    ProtoError,
    decode_token_request_spec,
    encode_bytes_field,
    encode_envelope,
    encode_varint_field,
)
from edge_agent.kubecache.store import CacheStore
from edge_agent.kubecache.tokens import expiry_of, spec_from_json

BOUND = {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u-1"}


def protobuf_spec(audiences: list[str], seconds: int | None, bound: dict[str, str] | None) -> bytes:
    spec = b"".join(encode_bytes_field(1, a) for a in audiences)
    if bound is not None:
        spec += encode_bytes_field(
            3,
            b"".join(
                encode_bytes_field(n, bound[k])
                for n, k in ((1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid"))
            ),
        )
    if seconds is not None:
        spec += encode_varint_field(4, seconds)
    return encode_envelope("authentication.k8s.io/v1", "TokenRequest", encode_bytes_field(2, spec))


@given(
    st.lists(st.text()),
    st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.none() | st.fixed_dictionaries({k: st.text() for k in BOUND}),
)
def test_json_and_protobuf_requests_give_the_same_spec(
    audiences: list[str], seconds: int | None, bound: dict[str, str] | None
) -> None:
    body: dict[str, Any] = {"spec": {"audiences": audiences}}
    if seconds is not None:
        body["spec"]["expirationSeconds"] = seconds
    if bound is not None:
        body["spec"]["boundObjectRef"] = bound
    assert decode_token_request_spec(protobuf_spec(audiences, seconds, bound)) == spec_from_json(
        body
    )


@given(st.binary(max_size=256))
def test_arbitrary_token_request_bodies_raise_only_proto_error(data: bytes) -> None:
    for raw in (data, encode_bytes_field(2, data)):
        with contextlib.suppress(ProtoError):
            decode_token_request_spec(
                encode_envelope("authentication.k8s.io/v1", "TokenRequest", raw)
            )


@pytest.mark.parametrize("body", [None, [], {"spec": 1}, {"spec": {"audiences": [1]}}])
def test_unreadable_json_requests_are_errors(body: object) -> None:
    with pytest.raises(ValueError, match=r"spec|audiences"):
        spec_from_json(body)


def test_expiry_needs_a_token_and_a_zoned_time() -> None:
    answer = {"status": {"token": "t", "expirationTimestamp": "2026-01-01T00:00:00Z"}}
    assert expiry_of(answer) == 1767225600.0
    assert expiry_of({"status": {"expirationTimestamp": "2026-01-01T00:00:00Z"}}) is None
    assert expiry_of({"status": {"token": "t", "expirationTimestamp": "2026-01-01"}}) is None
    assert expiry_of({"status": {"token": "t", "expirationTimestamp": "never"}}) is None


def record(expires: float) -> dict[str, Any]:
    return {"component": "kubelet", "expires": expires, "object": {"kind": "TokenRequest"}}


def test_tokens_are_kept_pruned_when_expired_and_purged_per_component(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    store = CacheStore(folder)
    store.put_token("t/kubelet/ns/sa/old", record(100.0), now=50.0)
    store.put_token("t/kubelet/ns/sa/new", record(300.0), now=200.0)  # "old" expired: gone
    assert store.get_token("t/kubelet/ns/sa/old") is None
    assert store.get_token("t/kubelet/ns/sa/new") == record(300.0)
    store.put_token("t/kube-proxy/ns/sa/x", record(400.0), now=200.0)
    store.close()
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()} == {0o600}
    assert cache_stats(folder)["service_account_tokens"] == 2
    assert cache_verify(folder).ok
    assert cache_purge(folder, component="kubelet") == 1
    reopened = CacheStore(folder)
    try:
        assert reopened.token_count() == 1
        assert reopened.get_token("t/kube-proxy/ns/sa/x") == record(400.0)
    finally:
        reopened.close()
