# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""What a client sees when the link under the proxy fails mid-request, and how fast it sees it.

A real kube-apiserver behind ``LinkRelay`` (reset, silent drop, answers dropped, throttle then
cut); clients are raw HTTP, aiohttp and the real kubectl. Asyncio timeouts here only guard
against a hang (the old behaviour: waiting out a 600 s ``request_timeout``), except the
heartbeat test, whose bound is the kubelet's own: it gives up on a lease renewal after 10 s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest
import yaml
from kubernetes import client

from edge_agent.kubecache import HealthSettings, KubeProxy, open_direct_upstream, serve_kube_proxy
from edge_agent.kubecache.fieldlabels import SUPPORTED
from edge_agent.kubecache.health import State
from edge_agent.kubecache.keys import Resource
from tests.harness import kube
from tests.harness.waiting import eventually_async
from tests.integration.kubecache.conftest import KUBELET, edge_settings
from tests.integration.kubecache.linkrelay import LinkRelay, link_relay

pytestmark = pytest.mark.kube

HANG_GUARD = 60.0
"""Seconds after which a request counts as hung: far below the 600 s request_timeout the
tests configure, far above any answer that does not wait out a timeout."""

# The only probe these tests get is the first one (interval 3600 s): give it time on busy cores,
# since a slow first probe would start the proxy offline for the whole test.
DEAF_HEALTH = HealthSettings(interval=3600, timeout=30.0, failure_threshold=1000)
"""A health checker that never turns offline during a test, so only the forwarded request's
own timeouts can end its wait."""


@dataclass(kw_only=True)
class Link:
    proxy: KubeProxy
    relay: LinkRelay
    plane: kube.ControlPlane
    registry: prometheus_client.CollectorRegistry
    workdir: Path

    def url(self, path: str) -> str:
        return self.proxy.url + path

    def counted(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def kubeconfig(self) -> Path:
        path = self.workdir / "proxy-kubeconfig"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "edge", "cluster": {"server": self.proxy.url}}],
            "users": [{"name": "node", "user": {}}],
            "contexts": [{"name": "edge", "context": {"cluster": "edge", "user": "node"}}],
            "current-context": "edge",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    async def kubectl(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            str(kube.kube_bin_dir() / "kubectl"),
            f"--kubeconfig={self.kubeconfig()}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )


@contextlib.asynccontextmanager
async def edge_over_relay(
    plane: kube.ControlPlane, workdir: Path, **overrides: Any
) -> AsyncIterator[Link]:
    values: dict[str, Any] = {"request_timeout": 600.0}
    values.update(overrides)
    async with (
        link_relay("127.0.0.1", plane.port) as relay,
        open_direct_upstream(plane.kubeconfig, server=f"https://127.0.0.1:{relay.port}") as up,
    ):
        registry = prometheus_client.CollectorRegistry()
        settings = edge_settings(workdir, **values)
        async with serve_kube_proxy(settings, up, registry=registry) as proxy:
            async with asyncio.timeout(60):  # every test here starts with the link up
                await proxy.health.wait_for(State.ONLINE)
            yield Link(proxy=proxy, relay=relay, plane=plane, registry=registry, workdir=workdir)


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, headers=KUBELET, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def raw_exchange(url: str, request: bytes) -> bytes:
    """Send one HTTP/1.1 request on a fresh connection; every byte until close or reset."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    received = bytearray()
    try:
        while data := await reader.read(65536):
            received.extend(data)
    except ConnectionResetError:
        pass  # an aborted answer: what was received is what the client saw
    finally:
        writer.close()
    return bytes(received)


def configmap(name: str, **data: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)


# ---------------------------------------------------------------- bug 2: cut mid-answer


async def test_a_cut_mid_answer_ends_that_answer_as_broken_never_a_second_one(
    kube_cluster: kube.ControlPlane, direct: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(direct)
    for index in range(8):  # ~1 MB of incompressible data: the API server's gzip cannot shrink it
        blob = base64.b64encode(os.urandom(96_000)).decode()
        await asyncio.to_thread(
            core.create_namespaced_config_map, namespace, configmap(f"big-{index}", blob=blob)
        )
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    async with edge_over_relay(kube_cluster, tmp_path) as link, aiohttp.ClientSession() as http:
        status, online = await fetch(http, "GET", link.url(path))
        assert status == 200
        assert len(online["items"]) == 8
        await link.proxy.flush_writes()  # the cache could answer it: the old fallback's trigger

        link.relay.throttle(4_000_000, cut_after=300_000)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: edge\r\nUser-Agent: {KUBELET['User-Agent']}\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n"
        ).encode()
        async with asyncio.timeout(HANG_GUARD):
            seen = await raw_exchange(link.proxy.url, request)
        assert link.relay.answer_bytes_before_cut == 300_000

        head, _, body = seen.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body, "the answer had started before the cut"
        assert seen.count(b"HTTP/1.1 ") == 1, "a second answer was written into the first"
        assert not body.endswith(b"0\r\n\r\n"), "a cut answer must not end like a whole one"

        # A request after the cut is answered from the cache, whole.
        await link.proxy.health.wait_for(State.OFFLINE)
        status, offline = await fetch(http, "GET", link.url(path))
        assert status == 200
        assert [i["metadata"]["name"] for i in offline["items"]] == [
            i["metadata"]["name"] for i in online["items"]
        ]
    assert link.counted("edge_agent_kubecache_forward_failures_total", when="mid_answer") >= 1


# ---------------------------------------------------------------- bug 3: a silent link


async def test_requests_in_flight_fail_over_when_the_link_is_declared_offline(
    kube_cluster: kube.ControlPlane, direct: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(direct)
    await asyncio.to_thread(core.create_namespaced_config_map, namespace, configmap("a", k="1"))
    list_path = f"/api/v1/namespaces/{namespace}/configmaps"
    # Only the health checker can end the wait: no read or connect timeout (the second request
    # opens a new connection, whose handshake hangs), a 600 s request timeout.
    async with (
        edge_over_relay(kube_cluster, tmp_path, read_timeout=600.0, connect_timeout=600.0) as link,
        aiohttp.ClientSession() as http,
    ):
        assert (await fetch(http, "GET", link.url(list_path)))[0] == 200
        assert (await fetch(http, "GET", link.url(f"{list_path}/a")))[0] == 200
        await link.proxy.flush_writes()

        link.relay.silence()
        async with asyncio.timeout(HANG_GUARD):
            listed, got = await asyncio.gather(
                fetch(http, "GET", link.url(list_path)),
                fetch(http, "GET", link.url(f"{list_path}/a")),
            )
        assert link.proxy.health.state.state is State.OFFLINE
    assert listed[0] == 200
    assert [i["metadata"]["name"] for i in listed[1]["items"]] == ["a"]
    assert got == (200, got[1])
    assert got[1]["data"] == {"k": "1"}
    # Both were forwarded and abandoned, not answered locally from the start.
    assert link.counted("edge_agent_kubecache_forward_failures_total", when="no_answer") >= 2


async def test_read_and_connect_timeouts_apply_to_forwarded_requests(
    kube_cluster: kube.ControlPlane, direct: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(direct)
    await asyncio.to_thread(core.create_namespaced_config_map, namespace, configmap("a", k="1"))
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    async with (
        edge_over_relay(
            kube_cluster,
            tmp_path,
            health=DEAF_HEALTH,
            read_timeout=1.0,
            connect_timeout=1.0,
        ) as link,
        aiohttp.ClientSession() as http,
    ):
        # Online first; with 1 s timeouts a busy machine may need a second try.
        await eventually_async(
            lambda: fetch(http, "GET", link.url(path)),
            lambda answer: answer[0] == 200,
            what="the list answered online",
            within=HANG_GUARD,
        )
        await link.proxy.flush_writes()

        # Open connections go silent: the read (first byte) timeout ends the wait.
        link.relay.silence()
        async with asyncio.timeout(HANG_GUARD):
            status, listed = await fetch(http, "GET", link.url(path))
        assert status == 200
        assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]

        # New connections never complete their handshake: the connect timeout ends the wait,
        # and a write that provably never left says so.
        link.relay.silence(drop_open=True)
        async with asyncio.timeout(HANG_GUARD):
            status, refused = await fetch(
                http, "POST", link.url(path), json={"metadata": {"name": "b"}, "data": {}}
            )
        assert link.proxy.health.state.state is State.ONLINE  # only the timeouts acted
    assert status == 503
    assert "nothing was changed" in refused["message"]
    assert link.counted("edge_agent_kubecache_forward_failures_total", when="not_sent") >= 1


async def test_a_heartbeat_is_answered_before_the_kubelet_gives_up(
    kube_cluster: kube.ControlPlane, namespace: str, tmp_path: Path
) -> None:
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "node-a"},
        "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 40},
    }
    async with (
        edge_over_relay(kube_cluster, tmp_path, health=DEAF_HEALTH, read_timeout=600.0) as link,
        aiohttp.ClientSession() as http,
    ):
        status, created = await fetch(http, "POST", link.url(lease_path), json=lease)
        assert status == 201
        await link.proxy.flush_writes()

        link.relay.silence()
        renewal = {
            **created,
            "spec": {**created["spec"], "renewTime": "2026-01-01T00:00:10.000001Z"},
        }
        # The kubelet's lease client gives up after 10 s: the answer must come before.
        async with asyncio.timeout(10.0):
            status, answered = await fetch(
                http, "PUT", link.url(f"{lease_path}/node-a"), json=renewal
            )
        assert status == 200
        assert answered["spec"]["renewTime"] == "2026-01-01T00:00:10.000001Z"
        assert link.counted(
            "edge_agent_kubecache_requests_total", verb="update", source="local_heartbeat"
        )
        assert link.proxy.status()["cache"]["pending_heartbeats"] == 1

        # The link was only slow: the next renewal goes up, and the one kept locally is now
        # obsolete (a later sync would set renewTime back to it).
        link.relay.restore()
        later = {
            **answered,
            "spec": {**answered["spec"], "renewTime": "2026-01-01T00:00:20.000001Z"},
        }
        status, _ = await fetch(http, "PUT", link.url(f"{lease_path}/node-a"), json=later)
        assert status == 200
        await link.proxy.flush_writes()
        assert link.proxy.status()["cache"]["pending_heartbeats"] == 0


# ---------------------------------------------------------------- bug 8: an answer lost


async def test_a_write_whose_answer_was_lost_is_reported_as_unknown_not_as_unsent(
    kube_cluster: kube.ControlPlane, direct: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "maybe", "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
    }
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps(pod))
    core = client.CoreV1Api(direct)
    # The health checker stays online, so the create is surely forwarded.
    async with edge_over_relay(kube_cluster, tmp_path, health=DEAF_HEALTH) as link:
        # Online first, so kubectl's discovery is cached and the create is its only request.
        primed = await link.kubectl("get", "pods", "-n", namespace)
        assert await primed.wait() == 0

        link.relay.drop_answers()
        create = await link.kubectl("create", "-f", str(manifest), "--validate=false")
        async with asyncio.timeout(HANG_GUARD):
            # Until the create reached the API server; its answer is dropped.
            await eventually_async(
                lambda: asyncio.to_thread(
                    core.list_namespaced_pod, namespace, field_selector="metadata.name=maybe"
                ),
                lambda found: bool(found.items),
                what="the pod created upstream",
                within=HANG_GUARD,
                every=0.1,
            )
            link.relay.reset()
            stdout, stderr = await create.communicate()
    said = stderr.decode()
    assert create.returncode != 0, stdout.decode()
    assert "may or may not have been applied" in said
    assert "nothing was changed" not in said
    assert "was not sent" not in said


# ---------------------------------------------------------------- bug 10: smaller ones


async def test_kubectl_watching_a_table_is_told_when_the_link_breaks(
    kube_cluster: kube.ControlPlane, direct: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(direct)
    await asyncio.to_thread(core.create_namespaced_config_map, namespace, configmap("seen", k="1"))
    async with edge_over_relay(kube_cluster, tmp_path) as link:
        watcher = await link.kubectl("get", "configmaps", "-n", namespace, "-w")
        assert watcher.stdout is not None
        async with asyncio.timeout(HANG_GUARD):
            while b"seen" not in await watcher.stdout.readline():
                pass

            async def watches() -> float:
                return link.counted("edge_agent_kubecache_watches", mode="passthrough")

            # kubectl printed its LIST; wait until its watch is open too.
            await eventually_async(watches, what="kubectl's watch open", within=HANG_GUARD)
            link.relay.reset()
            stdout, _ = await watcher.communicate()
    # kubectl prints the ERROR event's Status as a row of its table (and exits 0: its choice).
    said = stdout.decode()
    assert "ServiceUnavailable" in said, said
    assert "the link to the cloud API server broke" in said, said


async def test_unsupported_field_labels_are_refused_offline_as_online(
    kube_cluster: kube.ControlPlane, namespace: str, tmp_path: Path
) -> None:
    path = f"/api/v1/namespaces/{namespace}/pods"
    async with edge_over_relay(kube_cluster, tmp_path) as link, aiohttp.ClientSession() as http:
        assert (await fetch(http, "GET", link.url(path)))[0] == 200
        online = await fetch(http, "GET", link.url(path), params={"fieldSelector": "spec.foo=bar"})
        await link.proxy.flush_writes()
        link.relay.reset()
        await link.proxy.health.wait_for(State.OFFLINE)
        offline = await fetch(http, "GET", link.url(path), params={"fieldSelector": "spec.foo=bar"})
        watched = await fetch(
            http, "GET", link.url(path), params={"fieldSelector": "spec.foo=bar", "watch": "1"}
        )
        supported = await fetch(
            http, "GET", link.url(path), params={"fieldSelector": "status.phase=Running"}
        )
    assert online[0] == 400
    assert offline == online
    assert watched == online
    assert supported[0] == 200


def test_the_field_label_table_is_what_the_api_server_accepts(
    kube_cluster: kube.ControlPlane,
) -> None:
    for (group, resource), labels in SUPPORTED.items():
        version = "v1"
        collection = Resource(group=group, version=version, resource=resource).path()
        for label in sorted(labels):
            status, body = kube_cluster.get(f"{collection}?limit=1&fieldSelector={label}%3Dx")
            assert status == 200, (collection, label, body[:200])
        status, _ = kube_cluster.get(f"{collection}?limit=1&fieldSelector=spec.foo%3Dx")
        assert status == 400, collection
