# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""kubelet's default: Lease renewals as protobuf PUTs, answered offline and synced after."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from edge_agent.kubecache import protowire as pw
from edge_agent.kubecache.protowire import decode_lease, lease_with_spec
from edge_agent.kubecache.wire import PROTOBUF
from tests.harness.waiting import eventually_async
from tests.integration.kubecache.conftest import KUBELET, Edge

pytestmark = pytest.mark.kube

KUBELET_PUT = {**KUBELET, "Content-Type": PROTOBUF, "Accept": f"{PROTOBUF},application/json"}


def lease_path(namespace: str, name: str = "") -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


async def as_protobuf(cloud: aiohttp.ClientSession, path: str) -> bytes:
    """The object as the API server encodes it in protobuf: the most honest source of bytes."""
    async with cloud.get(path, headers={"Accept": PROTOBUF}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == PROTOBUF
        return await response.read()


async def cloud_lease(cloud: aiohttp.ClientSession, path: str) -> dict[str, Any]:
    async with cloud.get(path) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


def at(second: int) -> str:
    return f"2026-01-01T00:00:{second:02d}.000001Z"


async def test_protobuf_lease_renewals_succeed_offline_and_reach_the_cloud(
    edge: Edge, cloud: aiohttp.ClientSession, namespace: str
) -> None:
    path = lease_path(namespace, "node-a")
    spec = {"holderIdentity": "node-a", "leaseDurationSeconds": 40, "renewTime": at(0)}
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "node-a"}}
    async with aiohttp.ClientSession(base_url=edge.url) as http:
        async with http.post(lease_path(namespace), json={**body, "spec": spec}, headers=KUBELET):
            pass
        # The server's own protobuf bytes; our encoder rebuilds them byte for byte.
        served = await as_protobuf(cloud, path)
        assert decode_lease(served).spec == spec
        assert lease_with_spec(served, spec) == served

        # Online: the protobuf PUT goes up as it is; the JSON answer is cached.
        async with http.put(
            path, data=lease_with_spec(served, {**spec, "renewTime": at(1)}), headers=KUBELET_PUT
        ) as online:
            assert online.status == 200, await online.text()
            renewed = await online.json()
        assert renewed["spec"]["renewTime"] == at(1)
        served = await as_protobuf(cloud, path)  # carries the resourceVersion kubelet has now

        await edge.go_offline()
        answers = []
        for second in (10, 20, 30):
            async with http.put(
                path,
                data=lease_with_spec(served, {**spec, "renewTime": at(second)}),
                headers=KUBELET_PUT,
            ) as response:
                assert response.status == 200, await response.text()
                assert response.headers["Content-Type"].startswith("application/json")
                answers.append(await response.json())
        assert [a["spec"]["renewTime"] for a in answers] == [at(10), at(20), at(30)]
        kept = {a["metadata"]["resourceVersion"] for a in answers}
        assert kept == {renewed["metadata"]["resourceVersion"]}
        assert answers[-1]["metadata"]["uid"] == renewed["metadata"]["uid"]

        # A stale resourceVersion is a conflict, as upstream; protobuf-only clients get a 503.
        stale = lease_with_spec(with_stale_rv(served), spec)
        async with http.put(path, data=stale, headers=KUBELET_PUT) as conflict:
            assert conflict.status == 409
        only_protobuf = {**KUBELET_PUT, "Accept": PROTOBUF}
        async with http.put(path, data=served, headers=only_protobuf) as refused:
            assert refused.status == 503
            assert "offline" in (await refused.json())["message"]
        async with http.get(path, headers=KUBELET) as cached:
            assert (await cached.json())["spec"]["renewTime"] == at(30)

        assert (await cloud_lease(cloud, path))["spec"]["renewTime"] == at(1)
        await edge.go_online()
        await eventually_async(
            lambda: cloud_lease(cloud, path),
            lambda lease: lease["spec"]["renewTime"] == at(30),
            what="the offline renewal synced upstream",
            every=0.1,
        )
    synced = edge.registry.get_sample_value(
        "edge_agent_kubecache_heartbeats_synced_total", {"result": "ok"}
    )
    assert synced == 1


def with_stale_rv(served: bytes) -> bytes:
    """The same body with resourceVersion "1" (older than any real one) in its metadata."""
    envelope = pw.decode_envelope(served)
    fields = list(pw.iter_fields(envelope.raw))
    meta = next(v for n, _, v in fields if n == 1)
    assert isinstance(meta, bytes)
    kept = b"".join(
        pw.encode_bytes_field(n, v)
        for n, _, v in pw.iter_fields(meta)
        if n != 6 and isinstance(v, bytes)
    )
    raw = pw.encode_bytes_field(1, kept + pw.encode_bytes_field(6, "1")) + b"".join(
        pw.encode_bytes_field(n, v) for n, _, v in fields if n != 1 and isinstance(v, bytes)
    )
    return pw.encode_envelope(envelope.api_version, envelope.kind, raw)


async def test_protobuf_bodies_for_other_writes_are_refused_offline(
    edge: Edge, cloud: aiohttp.ClientSession, namespace: str
) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    async with cloud.post(path, json={"metadata": {"name": "c"}, "data": {"a": "1"}}):
        pass
    served = await as_protobuf(cloud, f"{path}/c")
    async with aiohttp.ClientSession(base_url=edge.url) as http:
        async with http.get(f"{path}/c", headers=KUBELET):
            pass
        await edge.go_offline()
        async with http.put(f"{path}/c", data=served, headers=KUBELET_PUT) as response:
            assert response.status == 503
            assert json.loads(await response.text())["reason"] == "ServiceUnavailable"
