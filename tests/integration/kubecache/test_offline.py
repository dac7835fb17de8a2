# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Offline behaviour: honest 503s, heartbeats kept and synced, watches that resume."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest
from kubernetes import client

from edge_agent.kubecache import open_direct_upstream, serve_kube_proxy
from edge_agent.kubecache.wire import PROTOBUF
from tests.harness import kube
from tests.harness.waiting import eventually_async
from tests.integration.kubecache.conftest import KUBELET, Edge, edge_settings

pytestmark = pytest.mark.kube


def configmap(name: str, **data: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)


async def test_offline_writes_get_a_503_status_saying_so(edge: Edge, namespace: str) -> None:
    with edge.api() as via:
        core = client.CoreV1Api(via)
        await asyncio.to_thread(core.list_namespaced_config_map, namespace)
        await edge.go_offline()
        with pytest.raises(client.ApiException) as caught:
            await asyncio.to_thread(core.create_namespaced_config_map, namespace, configmap("nope"))
    status = json.loads(str(caught.value.body))
    assert caught.value.status == 503
    assert status["kind"] == "Status"
    assert status["reason"] == "ServiceUnavailable"
    assert "offline" in status["message"]
    assert "nothing was changed" in status["message"]


def renew(api: client.ApiClient, namespace: str, when: dt.datetime) -> client.V1Lease:
    leases = client.CoordinationV1Api(api)
    lease = leases.read_namespaced_lease("node-a", namespace)
    assert lease.spec is not None
    lease.spec.renew_time = when
    replaced: client.V1Lease = leases.replace_namespaced_lease("node-a", namespace, lease)
    return replaced


def renewed_at(lease: client.V1Lease) -> dt.datetime | None:
    assert lease.spec is not None
    return lease.spec.renew_time


async def test_heartbeats_succeed_offline_and_reach_the_cloud_after(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="node-a"),
        spec=client.V1LeaseSpec(holder_identity="node-a", lease_duration_seconds=40),
    )
    # Non-zero microseconds: the Python client drops '.000000', which the server refuses.
    start = dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC)
    with edge.api() as via:
        await asyncio.to_thread(
            client.CoordinationV1Api(via).create_namespaced_lease, namespace, lease
        )
        await asyncio.to_thread(renew, via, namespace, start)
        await edge.go_offline()
        answered = [
            await asyncio.to_thread(renew, via, namespace, start + dt.timedelta(seconds=10 * i))
            for i in range(1, 4)
        ]
        last = renewed_at(answered[-1])
        assert last is not None
        assert last == start + dt.timedelta(seconds=30)
        cloud = client.CoordinationV1Api(direct)
        while_offline = await asyncio.to_thread(cloud.read_namespaced_lease, "node-a", namespace)
        assert renewed_at(while_offline) == start
        await edge.go_online()
        await eventually_async(
            lambda: asyncio.to_thread(cloud.read_namespaced_lease, "node-a", namespace),
            lambda synced: renewed_at(synced) == last,
            what="the offline renewal synced upstream",
            every=0.1,
        )
        # Online again, renewals go straight up with the synced resourceVersion.
        later = await asyncio.to_thread(renew, via, namespace, last + dt.timedelta(seconds=10))
    assert renewed_at(later) == last + dt.timedelta(seconds=10)


async def read_events(
    stream: aiohttp.ClientResponse, until: set[tuple[str, str]]
) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    while not until <= set(seen):
        line = await stream.content.readline()
        assert line, f"watch ended; saw {seen}"
        event = json.loads(line)
        seen.append((event["type"], event["object"]["metadata"].get("name", "")))
    return seen


async def test_watch_sees_cloud_changes_made_during_the_outage(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(direct)
    for name in ("keep", "gone"):
        await asyncio.to_thread(core.create_namespaced_config_map, namespace, configmap(name))
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as listed:
            rv = (await listed.json())["metadata"]["resourceVersion"]
        params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true"}
        async with http.get(url, params=params) as stream:
            await edge.go_offline()
            await asyncio.to_thread(
                core.create_namespaced_config_map, namespace, configmap("during", a="1")
            )
            await asyncio.to_thread(
                core.patch_namespaced_config_map, "keep", namespace, {"data": {"b": "2"}}
            )
            await asyncio.to_thread(core.delete_namespaced_config_map, "gone", namespace)
            offline_events = await read_events(stream, {("BOOKMARK", "")})
            await edge.go_online()
            events = await read_events(
                stream, {("ADDED", "during"), ("MODIFIED", "keep"), ("DELETED", "gone")}
            )
    assert {kind for kind, _ in offline_events} == {"BOOKMARK"}
    changes = [e for e in events if e[0] != "BOOKMARK"]
    assert changes == [("ADDED", "during"), ("MODIFIED", "keep"), ("DELETED", "gone")]


async def test_kubectl_offline_after_the_api_server_stops(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(direct)
    for index in range(3):
        await asyncio.to_thread(
            core.create_namespaced_config_map, namespace, configmap(f"cm-{index}", i=str(index))
        )
    query = ("get", "configmaps", "-n", namespace, "--field-selector", "metadata.name!=cm-1")
    straight = await edge.kubectl(*query, direct=True)
    online = await edge.kubectl(*query)
    whole = await edge.kubectl("get", "configmaps", "-n", namespace)
    try:
        await edge.go_offline(stop_apiserver=True)
        offline = await edge.kubectl(*query)
        one = await edge.kubectl("get", "configmap", "cm-2", "-n", namespace)
    finally:
        # On this (the main) thread: the harness ties the child's life to the forking thread.
        edge.plane.start_apiserver()
        await asyncio.to_thread(edge.plane.wait_ready)
    names = [i["metadata"]["name"] for i in offline["items"]]
    assert names in (["cm-0", "cm-2", "kube-root-ca.crt"], ["cm-0", "cm-2"])
    assert offline["items"] == online["items"] == straight["items"]
    assert len(whole["items"]) >= 3
    assert one["data"] == {"i": "2"}


async def test_protobuf_only_passes_through_and_json_fallback_is_served_json(
    edge: Edge, namespace: str
) -> None:
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Accept": PROTOBUF}) as only:
            assert only.status == 200
            assert only.headers["Content-Type"] == PROTOBUF
            assert (await only.read()).startswith(b"k8s\x00")
        async with http.get(url, headers={"Accept": f"{PROTOBUF},application/json"}) as either:
            assert either.headers["Content-Type"].startswith("application/json")
            assert (await either.json())["kind"] == "ConfigMapList"
        await edge.go_offline()
        async with http.get(url, headers={"Accept": PROTOBUF}) as offline_only:
            assert offline_only.status == 503
        async with http.get(url, headers={"Accept": f"{PROTOBUF},application/json"}) as cached:
            assert cached.status == 200
            assert (await cached.json())["kind"] == "ConfigMapList"


async def test_a_corrupt_cache_degrades_to_pass_through_loudly(
    kube_cluster: kube.ControlPlane,
    tmp_path: Path,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = edge_settings(tmp_path)
    settings.cache_dir.mkdir()
    (settings.cache_dir / "objects.db").write_bytes(b"this is not a database" * 100)
    registry = prometheus_client.CollectorRegistry()
    async with (
        open_direct_upstream(kube_cluster.kubeconfig) as upstream,
        serve_kube_proxy(settings, upstream, registry=registry) as proxy,
        aiohttp.ClientSession() as http,
    ):
        url = f"{proxy.url}/api/v1/namespaces/{namespace}/configmaps"
        async with http.get(url) as response:
            body: dict[str, Any] = await response.json()
        status = proxy.status()
    assert body["kind"] == "ConfigMapList"
    assert status["cache"]["degraded"] is True
    assert registry.get_sample_value("edge_agent_kubecache_store_degraded") == 1
    assert any(
        r.levelname == "ERROR" and "object cache unusable" in r.getMessage() for r in caplog.records
    )


async def test_a_big_offline_list_is_streamed_and_other_answers_go_on_meanwhile(
    edge: Edge, cloud: aiohttp.ClientSession, namespace: str
) -> None:
    """1.3 MB of ConfigMaps: several chunks, sent as they are read (chunked, no length)."""
    filler = "x" * 32768
    for index in range(40):
        body = {"metadata": {"name": f"big-{index:02d}"}, "data": {"f": filler}}
        async with cloud.post(f"/api/v1/namespaces/{namespace}/configmaps", json=body) as made:
            assert made.status == 201, await made.text()
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession(headers=KUBELET) as http:
        async with http.get(url) as online:
            assert online.status == 200
            expected = await online.json()
        await edge.go_offline()
        async with http.get(url) as streamed:
            assert streamed.status == 200
            assert streamed.headers.get("Transfer-Encoding") == "chunked"
            assert "Content-Length" not in streamed.headers
            first = await streamed.content.readexactly(1024)
            # The answer is half read: another offline answer is not held up behind it.
            async with asyncio.timeout(30), http.get(f"{url}/big-07") as one:
                assert one.status == 200
                assert (await one.json())["metadata"]["name"] == "big-07"
            text = first + await streamed.read()
    answer = json.loads(text)
    assert answer["metadata"] == expected["metadata"]
    assert answer["items"] == expected["items"]
    assert len([i for i in answer["items"] if i["metadata"]["name"].startswith("big-")]) == 40
