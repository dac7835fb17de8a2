"""``Informer`` against a real kube-apiserver: list, watch, resume, relist on 410, bounds.

ConfigMaps in a namespace of each test's own. The cache is compared with a LIST of the server
(names and resourceVersions), so a lost, stale or duplicated object shows as a difference.
Faults are real: a TCP link cut under the informer (``FaultProxy``) and a restarted API
server (whose new watch cache answers an old resourceVersion with a 410 ERROR event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cluster.member_watch import Informer, InformerSettings, Key
from tests.harness import kube
from tests.harness.faultproxy import fault_proxy
from tests.harness.waiting import eventually_async
from tests.integration.cluster_watch.conftest import RecordingApi, kubeconfig_for, open_api

pytestmark = pytest.mark.kube

FAST = InformerSettings(backoff_initial=0.05, backoff_max=0.5)
"""Short back-offs so a test waits little after a fault; the rules are the same."""

WITHIN = 90.0
"""Seconds: a safety net for two busy cores (an API server restart alone can take 40 s)."""

RESTART_TIMEOUT = 360
"""Seconds for a test that restarts the API server: a graceful stop, a cold start waited
for up to ``kube.READY_TIMEOUT`` and the catch-up, which the suite's 120 s cannot hold on
two busy cores."""


def configmaps(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps"


def create(
    plane: kube.ControlPlane,
    namespace: str,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    data: dict[str, str] | None = None,
) -> None:
    body = {"metadata": {"name": name, "labels": labels or {}}, "data": data or {"k": "v"}}
    status, answer = plane.request("POST", configmaps(namespace), body)
    assert status == 201, answer


def patch(plane: kube.ControlPlane, namespace: str, name: str, body: dict[str, Any]) -> None:
    status, answer = plane.request("PATCH", f"{configmaps(namespace)}/{name}", body)
    assert status == 200, answer


def delete(plane: kube.ControlPlane, namespace: str, name: str) -> None:
    status, answer = plane.request("DELETE", f"{configmaps(namespace)}/{name}")
    assert status == 200, answer


def server_state(plane: kube.ControlPlane, path: str) -> dict[Key, str]:
    status, answer = plane.request("GET", path)
    assert status == 200, answer
    return {
        (item["metadata"]["namespace"], item["metadata"]["name"]): item["metadata"][
            "resourceVersion"
        ]
        for item in answer["items"]
    }


def cache_state(informer: Informer) -> dict[Key, str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in informer.items().items()}


async def until_same(informer: Informer, plane: kube.ControlPlane, path: str) -> None:
    """Wait until the cache holds exactly what the server lists (no writes meanwhile)."""

    async def probe() -> tuple[dict[Key, str], dict[Key, str]]:
        return await asyncio.to_thread(server_state, plane, path), cache_state(informer)

    await eventually_async(
        probe,
        lambda states: states[0] == states[1],
        what="the informer's cache equal to the server's LIST (server, cache)",
        within=WITHIN,
        every=0.1,
    )


@contextlib.asynccontextmanager
async def running(informer: Informer) -> AsyncIterator[Informer]:
    """``informer.run()`` in a task group for the block, which starts once it is synced."""
    async with asyncio.TaskGroup() as group:
        task = group.create_task(informer.run(), name=f"informer {informer.path}")
        try:
            async with asyncio.timeout(WITHIN):
                await informer.synced.wait()
            yield informer
        finally:
            task.cancel()


async def test_list_then_watch_sees_creates_updates_deletes(
    api: RecordingApi, plane: kube.ControlPlane, namespace: str
) -> None:
    path = configmaps(namespace)
    for index in range(3):
        create(plane, namespace, f"before-{index}")
    informer = Informer(api, path, settings=FAST)
    async with running(informer):
        assert cache_state(informer) == server_state(plane, path)
        past = informer.revision
        # Nothing changes: the wait ends at its timeout with the same revision.
        assert await informer.wait_changed(past, 0.05) == past

        # A controller waiting for a change wakes up for a create made while it waits.
        async with asyncio.TaskGroup() as group:
            waiter = group.create_task(informer.wait_changed(past, WITHIN), name="waiter")
            await asyncio.to_thread(create, plane, namespace, "after")
        assert waiter.result() > past
        assert informer.get(namespace, "after") is not None

        patch(plane, namespace, "before-0", {"data": {"k": "changed"}})
        delete(plane, namespace, "before-1")
        await until_same(informer, plane, path)
        changed = informer.get(namespace, "before-0")
        assert changed is not None
        assert changed["data"] == {"k": "changed"}
        assert informer.get(namespace, "before-1") is None
        assert informer.lists == 1, informer.last_error


async def test_selectors_are_the_servers(
    api: RecordingApi, plane: kube.ControlPlane, namespace: str
) -> None:
    create(plane, namespace, "web", labels={"app": "web"})
    create(plane, namespace, "db", labels={"app": "db"})
    informer = Informer(api, configmaps(namespace), label_selector="app=web", settings=FAST)
    async with running(informer):
        assert set(informer.items()) == {(namespace, "web")}
        # Relabelled into the selection: the watch brings it as ADDED; out of it: DELETED.
        patch(plane, namespace, "db", {"metadata": {"labels": {"app": "web"}}})
        patch(plane, namespace, "web", {"metadata": {"labels": {"app": "other"}}})
        await eventually_async(
            lambda: asyncio.sleep(0, set(informer.items())),
            lambda keys: keys == {(namespace, "db")},
            what="only the relabelled ConfigMap in the cache",
            within=WITHIN,
        )


async def test_a_list_longer_than_a_page_takes_every_page(
    api: RecordingApi, plane: kube.ControlPlane, namespace: str
) -> None:
    path = configmaps(namespace)
    for index in range(7):
        create(plane, namespace, f"cm-{index}")
    informer = Informer(api, path, settings=InformerSettings(page_size=2))
    async with running(informer):
        # Taken at once: the pages of the first LIST are all there is yet.
        pages = [get for get in api.gets if get.startswith(path + "?")]
        assert cache_state(informer) == server_state(plane, path)
    assert len(pages) == 4, pages
    assert all("limit=2" in page for page in pages)
    assert sum("continue=" in page for page in pages) == 3, pages


async def test_a_dropped_connection_resumes_from_the_last_resource_version(
    plane: kube.ControlPlane, namespace: str, tmp_path: Path
) -> None:
    path = configmaps(namespace)
    for index in range(3):
        create(plane, namespace, f"cm-{index}")
    async with fault_proxy("127.0.0.1", plane.port) as link:
        client = await open_api(kubeconfig_for(plane, tmp_path, port=link.port))
        try:
            informer = Informer(client, path, settings=FAST)
            async with running(informer):
                link.cut()
                # Changes the informer cannot see while cut off: the resumed watch brings them.
                await asyncio.to_thread(create, plane, namespace, "during")
                await asyncio.to_thread(patch, plane, namespace, "cm-0", {"data": {"k": "x"}})
                await asyncio.to_thread(delete, plane, namespace, "cm-1")
                await eventually_async(
                    lambda: asyncio.sleep(0, informer.last_error),
                    what="the informer saw its watch break",
                    within=WITHIN,
                )
                link.restore()
                await until_same(informer, plane, path)
                # Resumed, not listed again: the watch cache still had every event.
                assert informer.lists == 1, informer.last_error
        finally:
            await client.close()


@pytest.mark.timeout(RESTART_TIMEOUT)
async def test_gone_after_an_api_server_restart_relists_without_loss(
    plane: kube.ControlPlane,
    namespace: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.cluster.member_watch")
    path = configmaps(namespace)
    for index in range(4):
        create(plane, namespace, f"cm-{index}")
    async with fault_proxy("127.0.0.1", plane.port) as link:
        client = await open_api(kubeconfig_for(plane, tmp_path, port=link.port))
        try:
            informer = Informer(client, path, settings=FAST)
            async with running(informer):
                link.cut()
                await asyncio.to_thread(create, plane, namespace, "during")
                await asyncio.to_thread(patch, plane, namespace, "cm-0", {"data": {"k": "x"}})
                await asyncio.to_thread(delete, plane, namespace, "cm-1")
                # The restarted API server's watch cache starts after those changes: the
                # informer's resourceVersion is too old now (410), the changes are lost
                # from the watch and only a new LIST brings them (the delete included).
                await asyncio.to_thread(plane.stop_apiserver)
                plane.start_apiserver()
                await asyncio.to_thread(plane.wait_ready)
                link.restore()
                await until_same(informer, plane, path)
                assert informer.lists == 2, informer.last_error
                assert any("410 Gone" in record.getMessage() for record in caplog.records), (
                    caplog.text
                )
                # And the watch after the relist goes on.
                await asyncio.to_thread(create, plane, namespace, "after")
                await until_same(informer, plane, path)
        finally:
            await client.close()


@pytest.mark.timeout(RESTART_TIMEOUT)
async def test_the_watch_goes_on_across_an_api_server_restart(
    api: RecordingApi, plane: kube.ControlPlane, namespace: str
) -> None:
    path = configmaps(namespace)
    create(plane, namespace, "cm-0")
    informer = Informer(api, path, settings=FAST)
    async with running(informer):
        await asyncio.to_thread(plane.stop_apiserver)
        plane.start_apiserver()
        await asyncio.to_thread(plane.wait_ready)
        await asyncio.to_thread(create, plane, namespace, "cm-1")
        await asyncio.to_thread(patch, plane, namespace, "cm-0", {"data": {"k": "x"}})
        await until_same(informer, plane, path)
        await asyncio.to_thread(delete, plane, namespace, "cm-0")
        await until_same(informer, plane, path)


async def test_an_oversized_event_is_refused_and_relisted(
    api: RecordingApi,
    plane: kube.ControlPlane,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.cluster.member_watch")
    path = configmaps(namespace)
    settings = InformerSettings(max_event_bytes=4096, backoff_initial=0.05, backoff_max=0.5)
    informer = Informer(api, path, settings=settings)
    async with running(informer):
        await asyncio.to_thread(create, plane, namespace, "big", data={"k": "x" * 8192})
        # The watch refused the event; only a new LIST can have brought the object.
        await until_same(informer, plane, path)
        assert informer.lists >= 2
        assert any(
            "longer than 4096 bytes" in record.getMessage()
            and "listing again" in record.getMessage()
            for record in caplog.records
        ), caplog.text
        # And small events flow again.
        await asyncio.to_thread(create, plane, namespace, "small")
        await until_same(informer, plane, path)


async def test_more_objects_than_the_bound_are_refused(
    api: RecordingApi, plane: kube.ControlPlane, namespace: str
) -> None:
    path = configmaps(namespace)
    for index in range(4):
        create(plane, namespace, f"cm-{index}")
    informer = Informer(api, path, settings=InformerSettings(max_objects=3, backoff_max=0.5))
    async with asyncio.TaskGroup() as group:
        task = group.create_task(informer.run(), name="informer")
        await eventually_async(
            lambda: asyncio.sleep(0, informer.last_error),
            lambda error: "more than 3 objects" in error,
            what="the LIST refused for max_objects",
            within=WITHIN,
        )
        assert not informer.synced.is_set()
        assert informer.items() == {}
        await asyncio.to_thread(delete, plane, namespace, "cm-3")
        async with asyncio.timeout(WITHIN):
            await informer.synced.wait()
        assert len(informer.items()) == 3
        task.cancel()
