"""Two ``KubeFleetStore``s on one namespace, as two replicas of the server.

Each sees the other's writes through its watch (and is woken for them), a stale
``expected_version`` is a 409 whichever replica wrote last, the objects are plain custom
resources to an independent client and to kubectl, and a watch answered 410 lists again
without losing a change.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import kubernetes
import pytest
from lightkube import AsyncClient

from tests.harness import kube
from tests.harness.waiting import eventually
from tunnel_server.fleet.hub import store_kube
from tunnel_server.fleet.hub.store import ConflictError, StoredObject
from tunnel_server.fleet.hub.store_kube import GROUP, VERSION, KubeFleetStore

Opener = Callable[..., KubeFleetStore]


def _put(store: KubeFleetStore, name: str, **fields: Any) -> StoredObject:
    obj, _ = store.put(
        fields.get("kind", "ManagedCluster"),
        name,
        labels=fields.get("labels", {}),
        annotations={},
        spec=fields.get("spec", {"hubAcceptsClient": True}),
        expected_version=fields.get("expected"),
        now=1_000.0,
    )
    return obj


def test_each_replica_sees_and_is_woken_by_the_others_writes(open_fleet: Opener) -> None:
    a, b = open_fleet(), open_fleet()
    woken = threading.Event()
    b.on_change = woken.set
    start = b.revision()
    written = _put(a, "east", labels={"tier": "gold"})
    seen = eventually(lambda: b.get("ManagedCluster", "east"), what="b sees a's cluster")
    assert seen == written
    assert woken.wait(10.0), "b's on_change fired for a's write"
    assert [(c.type, c.object.name) for c in b.changes_since(start)] == [("ADDED", "east")]
    status = a.set_status("ManagedCluster", "east", {"conditions": []})
    eventually(
        lambda: b.get("ManagedCluster", "east"),
        lambda obj: obj is not None and obj.resource_version == status.resource_version,
        what="b sees a's status",
    )
    # b writes on the version it holds; a's now-stale one is refused, naming the current one.
    newer = _put(b, "east", spec={"hubAcceptsClient": False}, expected=status.resource_version)
    assert a.get("ManagedCluster", "east") is not None
    with pytest.raises(ConflictError) as stale:
        _put(a, "east", spec={"hubAcceptsClient": True}, expected=status.resource_version)
    assert stale.value.current == newer.resource_version
    # The refused write read the object afresh: a holds b's version now, and can write on it.
    assert a.get("ManagedCluster", "east") == newer
    a.delete("ManagedCluster", "east", expected_version=newer.resource_version)
    eventually(lambda: b.get("ManagedCluster", "east") is None, what="b sees a's delete")
    assert b.changes_since(start)[-1].type == "DELETED"


def test_an_independent_client_and_kubectl_read_them(
    open_fleet: Opener,
    namespace: str,
    custom_objects: kubernetes.client.CustomObjectsApi,
    fleet_crds: kube.ControlPlane,
) -> None:
    store = open_fleet()
    _put(store, "edge-a", labels={"region": "eu"})
    done = store.set_status(
        "ManagedCluster",
        "edge-a",
        {"conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True"}]},
    )
    got = custom_objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "managedclusters", "edge-a"
    )
    assert isinstance(got, dict)
    assert got["spec"] == {"hubAcceptsClient": True}
    assert got["metadata"]["labels"] == {"region": "eu"}
    assert got["metadata"]["resourceVersion"] == str(done.resource_version)
    assert got["metadata"]["uid"] == done.uid
    assert got["status"]["conditions"][0]["status"] == "True"
    text = fleet_crds.kubectl("get", "managedclusters.fleet.edgefleet.io", "-n", namespace).stdout
    assert "HUB-ACCEPTED" in text
    assert "edge-a" in text


def test_write_round_trip_blocks_the_caller_briefly(open_fleet: Opener) -> None:
    """A write is one API round trip, called from the event loop: measured, and bounded."""
    store = open_fleet()
    took = []
    for n in range(20):
        began = time.perf_counter()
        _put(store, "timed", spec={"hubAcceptsClient": True, "n": n})
        took.append(time.perf_counter() - began)
    took.sort()
    logging.getLogger(__name__).warning(
        "fleet kube write: p50 %.1f ms, max %.1f ms", took[10] * 1e3, took[-1] * 1e3
    )
    assert took[10] < 0.5, took  # generous: 2 busy cores; the loop must not stall for long


def test_a_watch_answered_410_lists_again_and_loses_nothing(
    open_fleet: Opener, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a = open_fleet()
    _put(a, "before")
    gate = threading.Event()
    original = AsyncClient.watch
    broken: list[bool] = []
    resource = store_kube._RESOURCES["ManagedCluster"]

    async def held(inner: AsyncIterable[Any]) -> AsyncIterator[Any]:
        while not gate.is_set():  # noqa: ASYNC110 - a thread's Event: the watch is down while the test writes
            await asyncio.sleep(0.05)
        async for item in inner:
            yield item

    def watch(self: AsyncClient, res: Any, *args: Any, **kwargs: Any) -> Any:
        if res is resource and not broken:
            broken.append(True)
            # A resourceVersion long compacted away: the API server answers 410 Gone.
            return held(original(self, res, *args, **{**kwargs, "resource_version": "1"}))
        return original(self, res, *args, **kwargs)

    monkeypatch.setattr(AsyncClient, "watch", watch)
    b = open_fleet()
    start = b.revision()
    assert b.get("ManagedCluster", "before") is not None
    _put(a, "during")
    a.delete("ManagedCluster", "before")
    caplog.set_level(logging.WARNING, logger="tunnel_server.fleet.hub.store")
    gate.set()
    eventually(lambda: b.get("ManagedCluster", "during"), what="b lists again after the 410")
    eventually(lambda: b.get("ManagedCluster", "before") is None, what="b drops the deleted one")
    assert broken == [True]
    failures = [
        r.getMessage() for r in caplog.records if "watch of managedclusters" in r.getMessage()
    ]
    assert failures, caplog.text
    assert any("410" in f or "too old" in f.lower() or "expired" in f.lower() for f in failures)
    changes = [(c.type, c.object.name) for c in b.changes_since(start, kind="ManagedCluster")]
    assert sorted(changes) == [("ADDED", "during"), ("DELETED", "before")]
    _put(a, "after")
    eventually(lambda: b.get("ManagedCluster", "after"), what="b watches again after the relist")
