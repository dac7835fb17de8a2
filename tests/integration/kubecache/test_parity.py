# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The proxy gives the API server's answers: online, and offline from the cache."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes import client

from tests.integration.kubecache.conftest import Edge

pytestmark = pytest.mark.kube

QUERIES: list[dict[str, Any]] = [
    {},
    {"label_selector": "app=web"},
    {"label_selector": "app in (web,db),tier!=front"},
    {"label_selector": "!tier"},
    {"field_selector": "spec.nodeName=node-a"},
    {"field_selector": "status.phase=Running"},
    {"field_selector": "spec.nodeName=node-b,status.phase!=Running"},
    {"field_selector": "metadata.name=pod-3"},
    {"label_selector": "app=web", "field_selector": "spec.nodeName=node-a"},
    {"limit": 2},
    {"label_selector": "app=nothing"},
]


def make_pods(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    for index in range(6):
        labels = {"app": ["web", "db", "cache"][index % 3]}
        if index % 2:
            labels["tier"] = "front" if index % 4 == 1 else "back"
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name=f"pod-{index}", labels=labels),
            spec=client.V1PodSpec(
                node_name="node-a" if index < 3 else "node-b",
                containers=[client.V1Container(name="c", image="busybox")],
            ),
        )
        core.create_namespaced_pod(namespace, pod)
        if index % 3 == 0:
            core.patch_namespaced_pod_status(
                f"pod-{index}", namespace, {"status": {"phase": "Running"}}
            )


def raw_list(api: client.ApiClient, namespace: str, **query: Any) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    response: Any = core.list_namespaced_pod(namespace, _preload_content=False, **query)
    data = json.loads(response.data)
    assert isinstance(data, dict)
    return data


def page_through(api: client.ApiClient, namespace: str, **query: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = None
    while True:
        page = (
            raw_list(api, namespace, _continue=token, **query)
            if token
            else raw_list(api, namespace, **query)
        )
        items.extend(page["items"])
        token = page["metadata"].get("continue")
        if not token:
            return items


async def answers(api: client.ApiClient, namespace: str) -> list[Any]:
    out: list[Any] = []
    for query in QUERIES:
        listed = await asyncio.to_thread(raw_list, api, namespace, **query)
        out.append((listed["kind"], listed["metadata"].get("resourceVersion"), listed["items"]))
    paged = await asyncio.to_thread(page_through, api, namespace, limit=4)
    out.append(paged)
    return out


async def test_online_answers_match_direct(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    await asyncio.to_thread(make_pods, direct, namespace)
    with edge.api() as via:
        for query in QUERIES:
            through = await asyncio.to_thread(raw_list, via, namespace, **query)
            straight = await asyncio.to_thread(raw_list, direct, namespace, **query)
            assert through["items"] == straight["items"], query


async def test_offline_answers_match_online(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    await asyncio.to_thread(make_pods, direct, namespace)
    with edge.api() as via:
        await asyncio.to_thread(raw_list, via, namespace)  # one complete LIST fills the cache
        before = await answers(direct, namespace)
        await edge.go_offline()
        after = await answers(via, namespace)
        core = client.CoreV1Api(via)
        pod = await asyncio.to_thread(core.read_namespaced_pod, "pod-4", namespace)
        with pytest.raises(client.ApiException) as missing:
            await asyncio.to_thread(core.read_namespaced_pod, "no-such-pod", namespace)
    assert after == before
    assert pod.spec is not None
    assert pod.spec.node_name == "node-b"
    assert missing.value.status == 404
