"""The stores while their kube-apiserver is stopped: writes fail at once, heartbeats wait.

On a control plane of the test's own (kine keeps the data while kube-apiserver is stopped and
started again), a ``KubeStore`` and a ``KubeFleetStore`` as one replica opens them:

* with the API server stopped, the first write fails within the connect timeout, and every
  later one at once (microseconds, not a timeout each: they run on the server's event loop),
  with an error that says the Kubernetes API is unreachable and that the REST API answers
  503 (``ApiUnreachableError``, a ``StoreError`` / ``FleetStoreError`` as before);
* reads keep answering from the mirror;
* heartbeats (``touch_node``) never raise and never wait; the latest one is written once the
  API server is back (checked with the official client), the store holding none afterwards;
* writes go through again within seconds of the return, and nothing written before is lost.

``test_a_black_hole_costs_one_timeout_then_nothing``: the API server SIGSTOPped (connections
still accepted by the kernel, nothing answered, as a partition looks): heartbeats still never
wait; the first write of each store waits for its timeout, once, and every later one fails at
once; after SIGCONT writes go through and the latest heartbeat is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import kubernetes
import pytest

from tests.harness.waiting import eventually
from tests.integration.kubestore.conftest import PrivatePlane
from tunnel_server.fleet.hub.store import FleetStoreError
from tunnel_server.fleet.hub.store_kube import KubeFleetStore
from tunnel_server.kubestore._model import GROUP, VERSION
from tunnel_server.kubestore.reach import ApiUnreachableError
from tunnel_server.kubestore.settings import KubeStoreSettings
from tunnel_server.kubestore.store import KubeStore
from tunnel_server.store import NodeRecord, StoreError, TokenRecord

pytestmark = pytest.mark.timeout(300)

NOW = 1_700_000_000.0
FAST_S = 0.05
"""Seconds a write may take once the store knows the API is down (a check, no I/O)."""
FIRST_S = 3.0
"""Seconds the first write may take to find out (connection refused; 2 s connect timeout)."""


def _token(token_id: str, name: str) -> TokenRecord:
    return TokenRecord(
        id=token_id,
        secret_hash="0" * 64,
        kind="node",
        name=name,
        created_at=NOW,
        expires_at=NOW + 3600,
        require_approval=False,
    )


def _node(name: str) -> NodeRecord:
    return NodeRecord(name=name, kind="node", state="approved", created_at=NOW)


REQUEST_TIMEOUT_S = 4.0
"""The stores' ``request_timeout`` here (10 s by default): what a write waits for a black hole."""


@pytest.fixture
def stores(private_plane: PrivatePlane) -> Iterator[tuple[KubeStore, KubeFleetStore]]:
    settings = KubeStoreSettings(
        namespace=private_plane.namespace,
        kubeconfig=private_plane.plane.kubeconfig,
        touch_interval=0.0,  # every heartbeat is due: the test sees each one's fate
        request_timeout=REQUEST_TIMEOUT_S,
    )
    store = KubeStore.open(settings)
    try:
        fleet = KubeFleetStore.open(settings)
        try:
            yield store, fleet
        finally:
            fleet.close()
    finally:
        store.close()


def _timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the test looks at what it was
        return time.monotonic() - started, error
    return time.monotonic() - started, None


def _node_status(plane: PrivatePlane, name: str) -> dict[str, Any]:
    api = kubernetes.config.new_client_from_config(config_file=str(plane.plane.kubeconfig))
    with api:
        obj = kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, plane.namespace, "nodes", name
        )
    assert isinstance(obj, dict)
    return dict(obj.get("status") or {})


def test_writes_fail_at_once_and_heartbeats_wait_for_the_api_server(
    private_plane: PrivatePlane, stores: tuple[KubeStore, KubeFleetStore]
) -> None:
    store, fleet = stores
    plane = private_plane.plane
    store.add_token(_token("before", "edge-1"))
    store.redeem_token("before", now=NOW, node=_node("edge-1"))
    spec = {"hubAcceptsClient": True}
    fleet.put("ManagedCluster", "far", labels={}, annotations={}, spec=spec, now=NOW)

    plane.stop_apiserver()
    # The watches see their connections end and mark the API unreachable; or the first write.
    took, error = _timed(lambda: store.add_token(_token("during-0", "edge-2")))
    assert isinstance(error, StoreError), error
    assert took < FIRST_S, took
    assert isinstance(error, ApiUnreachableError), error
    assert "Kubernetes API (the store) has been unreachable" in str(error), error

    for index in range(1, 20):
        took, error = _timed(partial(store.add_token, _token(f"during-{index}", "edge-2")))
        assert isinstance(error, ApiUnreachableError), error
        assert isinstance(error, StoreError)
        assert took < FAST_S, (index, took)
        put = partial(fleet.put, "ManagedCluster", f"during-{index}", labels={}, annotations={})
        took, error = _timed(partial(put, spec=spec, now=NOW))
        assert isinstance(error, ApiUnreachableError), error
        assert isinstance(error, FleetStoreError)
        assert took < FAST_S, (index, took)
        # Heartbeats never raise nor wait; each one replaces the last one waiting.
        took, error = _timed(partial(store.touch_node, "edge-1", now=NOW + index))
        assert error is None, error
        assert took < FAST_S, (index, took)
    assert store.pending_status() == 1
    # Reads answer from the mirror.
    node = store.get_node("edge-1")
    assert node is not None
    assert node.state == "approved"
    held = fleet.get("ManagedCluster", "far")
    assert held is not None
    assert held.spec == spec

    plane.start_apiserver()
    plane.wait_ready()
    eventually(
        lambda: _timed(partial(store.add_token, _token("after", "edge-2")))[1],
        lambda error: error is None,
        what="a write goes through once the API server is back",
        within=30,
    )
    put = partial(fleet.put, "ManagedCluster", "after", labels={}, annotations={})
    eventually(
        lambda: _timed(partial(put, spec=spec, now=NOW))[1],
        lambda error: error is None,
        what="a fleet write goes through once the API server is back",
        within=30,
    )
    status = eventually(
        lambda: _node_status(private_plane, "edge-1"),
        lambda status: status.get("lastSeen") == NOW + 19,
        what="the latest heartbeat of the outage written once the API server is back",
        within=30,
    )
    assert status["lastSeen"] == NOW + 19
    assert store.pending_status() == 0
    # Nothing written before is lost, nothing refused during the outage was written.
    assert store.get_token("before") is not None
    assert store.get_token("after") is not None
    assert all(store.get_token(f"during-{i}") is None for i in range(20))
    assert {o.name for o in fleet.list("ManagedCluster")} == {"after", "far"}


def test_a_black_hole_costs_one_timeout_then_nothing(
    private_plane: PrivatePlane, stores: tuple[KubeStore, KubeFleetStore]
) -> None:
    store, fleet = stores
    plane = private_plane.plane
    store.add_token(_token("before", "edge-1"))
    store.redeem_token("before", now=NOW, node=_node("edge-1"))
    spec = {"hubAcceptsClient": True}

    plane.pause_apiserver()
    try:
        for index in range(5):  # heartbeats never wait, not even for the first timeout
            took, error = _timed(partial(store.touch_node, "edge-1", now=NOW + index))
            assert error is None, error
            assert took < FAST_S, (index, took)
        put = partial(fleet.put, "ManagedCluster", "during", labels={}, annotations={})
        first: dict[str, Callable[[], object]] = {
            "store": partial(store.add_token, _token("during", "edge-2")),
            "fleet": partial(put, spec=spec, now=NOW),
        }
        for which, write in first.items():
            # The first write of each store finds out by its timeout: once.
            took, error = _timed(write)
            assert isinstance(error, ApiUnreachableError), (which, error)
            assert took < REQUEST_TIMEOUT_S + 2.0, (which, took)
        for index in range(10):
            took, error = _timed(partial(store.add_token, _token(f"during-{index}", "edge-2")))
            assert isinstance(error, ApiUnreachableError), error
            assert took < FAST_S, (index, took)
            took, error = _timed(partial(put, spec=spec, now=NOW))
            assert isinstance(error, ApiUnreachableError), error
            assert took < FAST_S, (index, took)
            took, error = _timed(partial(store.touch_node, "edge-1", now=NOW + 10 + index))
            assert error is None, error
            assert took < FAST_S, (index, took)
    finally:
        plane.resume_apiserver()

    eventually(
        lambda: _timed(partial(store.add_token, _token("after", "edge-2")))[1],
        lambda error: error is None,
        what="a write goes through once the API server answers again",
        within=30,
    )
    eventually(
        lambda: _node_status(private_plane, "edge-1"),
        lambda status: status.get("lastSeen") == NOW + 19,
        what="the latest heartbeat written once the API server answers again",
        within=30,
    )
    assert store.get_token("during") is None
