# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""An online LIST written to the cache item by item: whole or not at all, in bounded memory."""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from aiohttp.test_utils import make_mocked_request

from edge_agent.kubecache.cache import AsyncStore
from edge_agent.kubecache.call import Call
from edge_agent.kubecache.forward import Kept
from edge_agent.kubecache.keys import Resource, parse_request
from edge_agent.kubecache.listing import render_raw_list
from edge_agent.kubecache.metrics import KubeCacheMetrics
from edge_agent.kubecache.settings import KubeCacheSettings
from edge_agent.kubecache.store import Scope
from edge_agent.kubecache.wire import Representation
from edge_agent.kubecache.writethrough import WriteThrough

PODS = Resource(group="", version="v1", resource="pods")
SCOPE = Scope(component="kubelet", resource=PODS, namespace="a")
MIB = 1 << 20


def pod(i: int, rv: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"pod-{i:05}", "namespace": "a", "resourceVersion": str(rv)},
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "pause" * 60}]},
    }


def body(items: list[dict[str, Any]], rv: int, token: str = "") -> bytes:
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if token:
        meta["continue"] = token
    envelope = {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}
    return json.dumps(envelope, separators=(",", ":")).encode()


def list_call(query: str = "") -> Call:
    path = "/api/v1/namespaces/a/pods"
    request = make_mocked_request("GET", path + (f"?{query}" if query else ""))
    return Call(
        request=request,
        info=parse_request("GET", path),
        component="kubelet",
        cached_agent=True,
        representation=Representation.JSON,
        body=b"",
    )


def kept(data: bytes, directory: Path) -> Kept:
    copy = Kept(directory=directory)
    for at in range(0, len(data), 65536):
        copy.write(data[at : at + 65536])
    return copy


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    store = AsyncStore(metrics=KubeCacheMetrics(prometheus_client.CollectorRegistry()))
    await store.open(tmp_path / "cache")
    yield store
    await store.close()


async def listed(store: AsyncStore) -> list[dict[str, Any]] | None:
    found = await store.run("list", lambda s: s.snapshot(SCOPE))
    if found is None:
        return None
    coverage, page = found
    return list(json.loads(render_raw_list(coverage, page))["items"])


async def test_a_list_is_stored_whole_as_the_api_server_sent_it(
    store: AsyncStore, tmp_path: Path
) -> None:
    items = [pod(i, 100 + i) for i in range(2000)]  # about 0.7 MiB: spooled to disk
    write_through = WriteThrough(store=store, settings=KubeCacheSettings())
    await write_through.apply(list_call(), 200, kept(body(items, 5000), tmp_path))
    assert await listed(store) == items
    found = await store.run("cov", lambda s: s.coverage_for(SCOPE))
    assert found is not None
    assert found.rv == "5000"
    assert not found.items_have_kind


async def test_a_body_cut_short_leaves_the_previous_list_untouched(
    store: AsyncStore, tmp_path: Path
) -> None:
    write_through = WriteThrough(store=store, settings=KubeCacheSettings())
    before = [pod(i, 10 + i) for i in range(3)]
    await write_through.apply(list_call(), 200, kept(body(before, 50), tmp_path))
    newer = [pod(i, 100 + i) for i in range(1000)]
    data = body(newer, 5000)
    await write_through.apply(list_call(), 200, kept(data[: len(data) * 2 // 3], tmp_path))
    assert await listed(store) == before  # not a view at 5000 holding two thirds of a list
    count = await store.run("count", lambda s: s.object_count())
    assert count == 3  # and no loose version of the cut list was kept either


async def test_a_paged_list_is_complete_only_with_its_last_page(
    store: AsyncStore, tmp_path: Path
) -> None:
    write_through = WriteThrough(store=store, settings=KubeCacheSettings())
    items = [pod(i, 100 + i) for i in range(6)]
    token = base64.urlsafe_b64encode(b'{"v":"meta.k8s.io/v1","rv":700,"start":"/pod-00002\\u0000"}')
    first = body(items[:3], 700, token=token.decode().rstrip("="))
    await write_through.apply(list_call("limit=3"), 200, kept(first, tmp_path))
    assert await listed(store) is None  # one page is no complete list
    last = body(items[3:], 700)
    query = f"limit=3&continue={token.decode().rstrip('=')}"
    await write_through.apply(list_call(query), 200, kept(last, tmp_path))
    assert await listed(store) == items


async def test_a_relist_at_the_same_version_writes_nothing(
    store: AsyncStore, tmp_path: Path
) -> None:
    write_through = WriteThrough(store=store, settings=KubeCacheSettings())
    items = [pod(i, 100 + i) for i in range(5)]
    await write_through.apply(list_call(), 200, kept(body(items, 900), tmp_path))
    changed = [{**items[0], "spec": {"nodeName": "n2"}}, *items[1:]]  # same rv: not re-read
    spaced = body(changed, 900).replace(b'"items":[', b'"items": [')  # past the fast check
    await write_through.apply(list_call(), 200, kept(spaced, tmp_path))
    assert await listed(store) == items


async def test_storing_5000_pods_holds_a_chunk_not_the_list(
    store: AsyncStore, tmp_path: Path
) -> None:
    """Issue 18: the old write-through peaked at 42 MiB of Python objects for 5 MiB of pods."""
    items = [pod(i, 100 + i) for i in range(5000)]
    data = body(items, 9000)
    del items
    copy = kept(data, tmp_path)
    write_through = WriteThrough(store=store, settings=KubeCacheSettings())
    assert len(data) > 1.5 * MIB
    del data
    tracemalloc.start()
    try:
        await write_through.apply(list_call(), 200, copy)
        kept_after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    count = await store.run("count", lambda s: s.object_count())
    assert count == 5000
    # What stays is the view index (about 0.5 KiB per object, store.py); what passes is about
    # one read chunk's items and the members' versions.
    assert kept_after < 3.5 * MIB, f"kept {kept_after / MIB:.1f} MiB"
    assert peak - kept_after < 2 * MIB, f"peak {peak / MIB:.1f} MiB, kept {kept_after / MIB:.1f}"
