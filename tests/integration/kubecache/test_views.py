# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Views against the real API server: what one client listed or watches, kept apart.

Each test is one bug of issue 10 (objects vanishing offline, ghosts after a restart, watchers
that never converge after a 410, paging across the cut, offline lists mixing versions).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest
from kubernetes import client

from edge_agent.kubecache import KubeProxy, open_direct_upstream, serve_kube_proxy
from edge_agent.kubecache.health import State
from edge_agent.kubecache.keys import Resource
from edge_agent.kubecache.store import Scope
from tests.harness import kube
from tests.harness.faultproxy import FaultProxy, fault_proxy
from tests.harness.waiting import eventually_async
from tests.integration.kubecache.conftest import KUBELET, Edge, edge_settings

pytestmark = pytest.mark.kube

CONFIGMAPS = Resource(group="", version="v1", resource="configmaps")
CONVERGE_TIMEOUT = 90.0
"""Seconds a watcher may take to catch up after the link returns (an API server restart and
the watchers' re-lists included); a watcher that never converges fails the test here."""


def configmap(name: str, **labels: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels), data={"v": "1"}
    )


def names(body: dict[str, Any]) -> list[str]:
    return [i["metadata"]["name"] for i in body["items"]]


async def get_json(
    http: aiohttp.ClientSession, url: str, **params: str
) -> tuple[int, dict[str, Any]]:
    async with http.get(url, params=params) as response:
        return response.status, await response.json()


async def listed(http: aiohttp.ClientSession, url: str, **params: str) -> dict[str, Any]:
    status, body = await get_json(http, url, **params)
    assert status == 200, body
    return body


async def test_an_object_that_leaves_a_selective_list_stays_in_wider_views(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    """Bug 1: a selective LIST no longer holding X says "X left this view", not "X is gone"."""
    core = client.CoreV1Api(direct)
    for name in ("x", "y"):
        await asyncio.to_thread(
            core.create_namespaced_config_map, namespace, configmap(name, phase="running")
        )
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession(headers=KUBELET) as http:
        whole = await listed(http, url)
        assert {"x", "y"} <= set(names(whole))
        await asyncio.to_thread(
            core.patch_namespaced_config_map,
            "x",
            namespace,
            {"metadata": {"labels": {"phase": "succeeded"}}},
        )
        running = await listed(http, url, labelSelector="phase=running")
        assert names(running) == ["y"]
        await edge.go_offline()
        offline_whole = await listed(http, url)
        status, x = await get_json(http, f"{url}/x")
        offline_running = await listed(http, url, labelSelector="phase=running")
    assert names(offline_whole) == names(whole)
    assert status == 200, x
    assert x["metadata"]["name"] == "x"
    assert names(offline_running) == ["y"]


async def test_an_object_a_selective_watch_deletes_stays_in_wider_views(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    """Bug 1, watch form: a selective watch's DELETED means "left this view"."""
    core = client.CoreV1Api(direct)
    for name in ("x", "y"):
        await asyncio.to_thread(
            core.create_namespaced_config_map, namespace, configmap(name, phase="running")
        )
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession(headers=KUBELET) as http:
        whole = await listed(http, url)
        running = await listed(http, url, labelSelector="phase=running")
        params = {
            "watch": "true",
            "labelSelector": "phase=running",
            "resourceVersion": running["metadata"]["resourceVersion"],
        }
        async with http.get(url, params=params) as stream:
            await asyncio.to_thread(
                core.patch_namespaced_config_map,
                "x",
                namespace,
                {"metadata": {"labels": {"phase": "succeeded"}}},
            )
            while True:
                event = json.loads(await stream.content.readline())
                if (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "x"):
                    break
            await edge.proxy.flush_writes()
            await edge.go_offline()
        offline_whole = await listed(http, url)
        status, _ = await get_json(http, f"{url}/x")
    assert names(offline_whole) == names(whole)
    assert status == 200


async def test_an_offline_list_is_one_snapshot_of_one_view(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    """Bug 7: offline, a full LIST is exactly what it was at its resourceVersion.

    Between it and the cut: a create through the proxy, a change, and a selective LIST that
    holds the newer versions; none of them is mixed into the full LIST's snapshot.
    """
    core = client.CoreV1Api(direct)
    for name in ("a", "b", "c"):
        await asyncio.to_thread(
            core.create_namespaced_config_map, namespace, configmap(name, app="web")
        )
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession(headers=KUBELET) as http:
        whole = await listed(http, url)
        made = {"metadata": {"name": "new", "labels": {"app": "web"}}, "data": {"v": "1"}}
        async with http.post(url, json=made) as created:
            assert created.status == 201
        await asyncio.to_thread(
            core.patch_namespaced_config_map, "b", namespace, {"data": {"v": "2"}}
        )
        web = await listed(http, url, labelSelector="app=web")
        assert set(names(web)) == {"a", "b", "c", "new"}
        await edge.go_offline()
        offline_whole = await listed(http, url)
        offline_web = await listed(http, url, labelSelector="app=web")
    list_rv = int(offline_whole["metadata"]["resourceVersion"])
    assert offline_whole["metadata"]["resourceVersion"] == whole["metadata"]["resourceVersion"]
    assert offline_whole["items"] == whole["items"]
    assert all(int(i["metadata"]["resourceVersion"]) <= list_rv for i in offline_whole["items"])
    assert offline_web["items"] == web["items"]


async def test_paging_started_online_continues_offline_without_duplicates(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    """Bug 6: the API server's own continue token, taken offline: the rest or 410 Expired."""
    core = client.CoreV1Api(direct)
    for index in range(10):
        await asyncio.to_thread(
            core.create_namespaced_config_map, namespace, configmap(f"cm-{index:03}")
        )
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession(headers=KUBELET) as http:
        whole = await listed(http, url)
        first = await listed(http, url, limit="4")
        token = first["metadata"]["continue"]
        await edge.go_offline()
        seen = names(first)
        status, page = 200, first
        while token:
            status, page = await get_json(http, url, limit="4", **{"continue": token})
            if status != 200:
                break
            seen += names(page)
            token = page["metadata"].get("continue", "")
    assert len(seen) == len(set(seen)), f"duplicates: {seen}"
    if status == 200:
        assert seen == names(whole)
    else:
        assert (status, page["reason"]) == (410, "Expired")


async def test_paging_started_offline_continues_online(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    """Bug 6: our continue tokens are the API server's format (no base64 padding)."""
    core = client.CoreV1Api(direct)
    # Names of every length mod 3, so some token's JSON needs base64 padding.
    for name in ("a", "bb", "ccc", "dddd", "eeeee", "ffffff"):
        await asyncio.to_thread(core.create_namespaced_config_map, namespace, configmap(name))
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession(headers=KUBELET) as http:
        whole = await listed(http, url)
        await edge.go_offline()
        tokens = []
        token = ""
        while True:
            page = await listed(http, url, limit="1", **({"continue": token} if token else {}))
            token = page["metadata"].get("continue", "")
            if not token:
                break
            tokens.append(token)
        await edge.go_online()
        rests = []
        for token in tokens:
            status, page = await get_json(http, url, limit="100", **{"continue": token})
            assert status == 200, page
            rests.append(names(page))
    assert any(len(t) % 4 for t in tokens), "no token would have needed padding"
    everything = names(whole)
    for index, rest in enumerate(rests):
        assert rest == everything[index + 1 :]
    for token in tokens:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        assert decoded["start"].startswith("/")


# ---------------------------------------------------------------- watchers


class Informer:
    """A client-go reflector in miniature: list, watch from there, re-list after a 410."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.state: dict[str, str] = {}
        self.rv = ""
        self.relists = 0

    async def relist(self) -> None:
        # As client-go's reflector: a failed LIST (503 or 429 right after the API server's
        # restart) is tried again, never taken as the list.
        while True:
            status, body = await get_json(self.http, self.url)
            if status == 200:
                break
            await asyncio.sleep(0.2)
        self.state = {
            i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in body["items"]
        }
        self.rv = body["metadata"]["resourceVersion"]
        self.relists += 1

    async def run(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                await self._watch_once()

    async def _watch_once(self) -> None:
        params = {"watch": "true", "resourceVersion": self.rv, "allowWatchBookmarks": "true"}
        async with self.http.get(self.url, params=params) as stream:
            if stream.status == 410:
                await self.relist()
                return
            if stream.status != 200:
                await asyncio.sleep(0.2)  # e.g. 503 while the proxy cannot serve this watch
                return
            while line := await stream.content.readline():
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    if obj.get("code") == 410:
                        await self.relist()
                    return
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] in {"ADDED", "MODIFIED"}:
                    self.state[obj["metadata"]["name"]] = rv
                elif event["type"] == "DELETED":
                    self.state.pop(obj["metadata"]["name"], None)
                self.rv = rv


async def server_state(direct: client.ApiClient, namespace: str) -> dict[str, str]:
    api = client.CoreV1Api(direct)
    items = await asyncio.to_thread(api.list_namespaced_config_map, namespace)
    return {
        str(i.metadata.name): str(i.metadata.resource_version) for i in items.items if i.metadata
    }


async def converged(informers: list[Informer], direct: client.ApiClient, namespace: str) -> None:
    async def differences() -> list[str]:
        """What each watcher still has wrong against the API server (nothing once converged)."""
        want = await server_state(direct, namespace)
        report = []
        for index, informer in enumerate(informers):
            missing = sorted(set(want) - set(informer.state))
            ghosts = sorted(set(informer.state) - set(want))
            stale = sorted(n for n in want if n in informer.state and informer.state[n] != want[n])
            if missing or ghosts or stale:
                report.append(f"watcher {index}: missing {missing}, ghosts {ghosts}, stale {stale}")
        return report

    await eventually_async(
        differences,
        lambda report: not report,
        what="every watcher converged",
        within=CONVERGE_TIMEOUT,
        every=0.2,
    )


async def churn(core: client.CoreV1Api, namespace: str, *, start: int) -> None:
    """Deletes, updates and creates: what a busy cluster does during an outage."""
    for index in range(start, start + 5):
        await asyncio.to_thread(core.delete_namespaced_config_map, f"cm-{index:03}", namespace)
    for index in range(start + 5, start + 15):
        await asyncio.to_thread(
            core.patch_namespaced_config_map, f"cm-{index:03}", namespace, {"data": {"v": "2"}}
        )
    for index in range(100 + start, 100 + start + 5):
        await asyncio.to_thread(
            core.create_namespaced_config_map, namespace, configmap(f"cm-{index:03}")
        )


@pytest.mark.timeout(400)  # restarts the shared API server: 10-40 s cold on two busy cores
async def test_every_watcher_converges_after_a_410_during_the_cut(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    """Bug 5: after a 410 Gone upstream, every watcher converges, not only the first.

    Two watchers, an outage with changes and an API server restart (the resume gets 410
    Gone): both watchers end with exactly the server's objects.
    """
    core = client.CoreV1Api(direct)
    for index in range(30):
        await asyncio.to_thread(
            core.create_namespaced_config_map, namespace, configmap(f"cm-{index:03}")
        )
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession(headers=KUBELET) as http, asyncio.TaskGroup() as group:
        informers = [Informer(http, url), Informer(http, url)]
        for informer in informers:
            await informer.relist()
        tasks = [
            group.create_task(informer.run(), name=f"informer.{index}")
            for index, informer in enumerate(informers)
        ]
        await converged(informers, direct, namespace)
        edge.link.cut()
        await edge.proxy.health.wait_for(State.OFFLINE)
        await churn(core, namespace, start=0)
        await churn(core, namespace, start=15)
        # An API server restart empties its watch cache: resuming from before gets 410.
        await asyncio.to_thread(edge.plane.stop_apiserver)
        edge.plane.start_apiserver()  # on this thread: the harness ties it to the forking one
        await asyncio.to_thread(edge.plane.wait_ready)
        await edge.go_online()
        await converged(informers, direct, namespace)
        for task in tasks:
            task.cancel()


async def recorded(proxy: KubeProxy, namespace: str, rv: str) -> None:
    """Wait until the namespace's configmaps view of the kubelet is at ``rv`` or later."""
    scope = Scope(component="kubelet", resource=CONFIGMAPS, namespace=namespace)
    while True:
        coverage = await proxy.store.run("coverage", lambda s: s.coverage_for(scope))
        if coverage is not None and int(coverage.rv) >= int(rv):
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_proxy(
    upstream_link: FaultProxy, plane: kube.ControlPlane, workdir: Path
) -> AsyncIterator[KubeProxy]:
    async with (
        open_direct_upstream(
            plane.kubeconfig, server=f"https://127.0.0.1:{upstream_link.port}"
        ) as upstream,
        serve_kube_proxy(
            edge_settings(workdir), upstream, registry=prometheus_client.CollectorRegistry()
        ) as proxy,
    ):
        yield proxy


async def test_a_watch_from_before_an_offline_restart_gets_410_not_ghosts(
    kube_cluster: kube.ControlPlane, tmp_path: Path, direct: client.ApiClient, namespace: str
) -> None:
    """Bug 4: a watch from before an offline restart gets 410 Expired, never ghosts.

    One watcher stops at r1, another sees deletes and updates; the agent restarts offline;
    re-watching from r1 gets 410 (then a re-list), not only the MODIFIED events.
    """
    core = client.CoreV1Api(direct)
    for index in range(20):
        await asyncio.to_thread(
            core.create_namespaced_config_map, namespace, configmap(f"cm-{index:03}")
        )
    async with fault_proxy("127.0.0.1", kube_cluster.port) as link:
        async with running_proxy(link, kube_cluster, tmp_path) as proxy:
            url = f"{proxy.url}/api/v1/namespaces/{namespace}/configmaps"
            async with aiohttp.ClientSession(headers=KUBELET) as http:
                first = await listed(http, url)
                r1 = first["metadata"]["resourceVersion"]
                params = {"watch": "true", "resourceVersion": r1}
                async with http.get(url, params=params) as other:
                    await churn(core, namespace, start=0)
                    await asyncio.to_thread(
                        core.create_namespaced_config_map, namespace, configmap("last")
                    )
                    while True:
                        event = json.loads(await other.content.readline())
                        if event["object"]["metadata"]["name"] == "last":
                            break
                # The watch forwards a line before recording it: wait until it is recorded.
                await recorded(proxy, namespace, event["object"]["metadata"]["resourceVersion"])
        link.cut()
        async with running_proxy(link, kube_cluster, tmp_path) as proxy:
            assert not proxy.health.online
            url = f"{proxy.url}/api/v1/namespaces/{namespace}/configmaps"
            async with aiohttp.ClientSession(headers=KUBELET) as http:
                async with http.get(url, params={"watch": "true", "resourceVersion": r1}) as again:
                    assert again.status == 200
                    event = json.loads(await again.content.readline())
                relisted = await listed(http, url)
    assert event["type"] == "ERROR", event
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    want = await server_state(direct, namespace)
    assert {
        i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in relisted["items"]
    } == want


async def test_a_watch_from_any_version_never_moves_a_view_past_unseen_deletes(
    edge: Edge, direct: client.ApiClient, namespace: str
) -> None:
    """A watch from "any" version must not carry a view past deletions it never saw.

    Without a resourceVersion the stream starts with the current state as ADDED events, not
    with the deletions since the view's LIST.
    """
    core = client.CoreV1Api(direct)
    for name in ("keep", "gone"):
        await asyncio.to_thread(core.create_namespaced_config_map, namespace, configmap(name))
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession(headers=KUBELET) as http:
        whole = await listed(http, url)
        await asyncio.to_thread(core.delete_namespaced_config_map, "gone", namespace)
        async with http.get(url, params={"watch": "true"}) as stream:
            await asyncio.to_thread(
                core.create_namespaced_config_map, namespace, configmap("later")
            )
            while True:
                event = json.loads(await stream.content.readline())
                if event["object"]["metadata"]["name"] == "later":
                    break
            await edge.proxy.flush_writes()
            await edge.go_offline()
        offline_whole = await listed(http, url)
    # The view may still be the LIST's snapshot (with "gone", at its resourceVersion), but
    # never a later version that still holds "gone".
    if offline_whole["metadata"]["resourceVersion"] != whole["metadata"]["resourceVersion"]:
        assert "gone" not in names(offline_whole)
    else:
        assert offline_whole["items"] == whole["items"]
