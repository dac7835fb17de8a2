# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Request parsing, content negotiation, local patching, line framing, health thresholds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.kubecache.health import HealthState, State
from edge_agent.kubecache.keys import Resource, Verb, component_of, parse_request
from edge_agent.kubecache.wire import (
    LineSplitter,
    LineTooLongError,
    PatchError,
    Representation,
    apply_patch,
    negotiate,
)


@pytest.mark.parametrize(
    ("method", "path", "watch", "expected"),
    [
        ("GET", "/api/v1/namespaces/a/pods/p", "", (Verb.GET, "pods.v1.core", "a", "p", "")),
        ("GET", "/api/v1/pods", "", (Verb.LIST, "pods.v1.core", "", "", "")),
        ("GET", "/api/v1/pods", "true", (Verb.WATCH, "pods.v1.core", "", "", "")),
        ("GET", "/api/v1/watch/namespaces/a/pods", "", (Verb.WATCH, "pods.v1.core", "a", "", "")),
        ("GET", "/api/v1/namespaces/a", "", (Verb.GET, "namespaces.v1.core", "", "a", "")),
        ("PUT", "/api/v1/nodes/n/status", "", (Verb.UPDATE, "nodes.v1.core", "", "n", "status")),
        (
            "PATCH",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n",
            "",
            (Verb.PATCH, "leases.v1.coordination.k8s.io", "kube-node-lease", "n", ""),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/a/pods",
            "",
            (Verb.DELETECOLLECTION, "pods.v1.core", "a", "", ""),
        ),
    ],
)
def test_requests_parse_like_the_api_server(
    method: str, path: str, watch: str, expected: tuple[Verb, str, str, str, str]
) -> None:
    info = parse_request(method, path, watch_param=watch)
    assert info.resource is not None
    got = (info.verb, info.resource.key, info.namespace, info.name, info.subresource)
    assert got == expected


@pytest.mark.parametrize("path", ["/version", "/api", "/apis/apps", "/openapi/v3", "/healthz"])
def test_non_resource_paths(path: str) -> None:
    assert not parse_request("GET", path).is_resource


def test_resource_paths_round_trip() -> None:
    lease = Resource(group="coordination.k8s.io", version="v1", resource="leases")
    assert Resource.from_key(lease.key) == lease
    assert lease.path("ns", "n") == "/apis/coordination.k8s.io/v1/namespaces/ns/leases/n"


@pytest.mark.parametrize(
    ("agent", "component"),
    [
        ("kubelet/v1.36.3 (linux/amd64) kubernetes/abc", "kubelet"),
        ("Kube-Proxy/v1", "kube-proxy"),
        ("", "unknown"),
        ("weird agent\x00/1", "weird-agent-"),
    ],
)
def test_component_from_user_agent(agent: str, component: str) -> None:
    assert component_of(agent) == component


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, Representation.JSON),
        ("application/json", Representation.JSON),
        ("application/vnd.kubernetes.protobuf,application/json", Representation.JSON),
        ("application/vnd.kubernetes.protobuf", Representation.OPAQUE),
        ("*/*", Representation.JSON),
        (
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            Representation.PREFERS_TRANSFORMED,
        ),
        (
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
            Representation.TRANSFORMED,
        ),
    ],
)
def test_negotiation(accept: str | None, expected: Representation) -> None:
    assert negotiate(accept) is expected


def test_strategic_patch_merges_node_conditions_by_type() -> None:
    node = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "t1"},
                {"type": "DiskPressure", "status": "False"},
            ]
        }
    }
    patch = {
        "status": {
            "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "DiskPressure"}],
            "conditions": [{"type": "Ready", "lastHeartbeatTime": "t2"}],
        }
    }
    patched = apply_patch(node, patch, "application/strategic-merge-patch+json")
    assert patched["status"]["conditions"] == [
        {"type": "Ready", "status": "True", "lastHeartbeatTime": "t2"},
        {"type": "DiskPressure", "status": "False"},
    ]


def test_merge_patch_and_refusals() -> None:
    merged = apply_patch(
        {"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}, "application/merge-patch+json"
    )
    assert merged == {"a": {"c": 2, "d": 3}}
    with pytest.raises(PatchError):
        apply_patch({}, [{"op": "add"}], "application/json-patch+json")


@given(st.lists(st.binary(max_size=30), max_size=10), st.integers(1, 7))
def test_line_splitter_reassembles_any_chunking(parts: list[bytes], cut: int) -> None:
    data = b"\n".join(p.replace(b"\n", b"") for p in parts) + b"\n"
    splitter = LineSplitter.create(64)
    lines: list[bytes] = []
    for start in range(0, len(data), cut):
        lines.extend(splitter.feed(data[start : start + cut]))
    assert b"".join(lines) == data
    assert splitter.pending == b""


def test_line_splitter_bounds_a_line() -> None:
    splitter = LineSplitter.create(8)
    with pytest.raises(LineTooLongError):
        splitter.feed(b"0123456789")


def test_health_thresholds() -> None:
    health = HealthState(failure_threshold=3, success_threshold=2)
    assert health.record(ok=True) is State.ONLINE  # the first result decides at once
    assert health.record(ok=False) is None
    assert health.record(ok=False, probe=False) is None
    assert health.record(ok=False) is State.OFFLINE
    assert health.record(ok=True) is None
    assert health.record(ok=True, probe=False) is None  # requests do not bring it back
    assert health.record(ok=True) is State.ONLINE
    assert health.record(ok=False) is None
    assert health.record(ok=True, probe=False) is None  # a good request resets failures
    assert health.record(ok=False) is None
    assert health.record(ok=False) is None
    assert health.state is State.ONLINE


def test_health_starts_offline_when_the_first_probe_fails() -> None:
    health = HealthState(failure_threshold=3, success_threshold=2)
    assert health.record(ok=False, error="refused") is State.OFFLINE
    assert health.last_error == "refused"
