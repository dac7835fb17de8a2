"""The leader counts clusters whose session another live replica holds as renewed.

With the status's claims (nothing wiped), never over a lease this replica's own stream
wrote, and not for a cluster no live replica holds (its lease ages as a lost one does).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tunnel_server.fleet.hub import remote_leases
from tunnel_server.fleet.hub.hub import FleetHub, FleetSettings
from tunnel_server.fleet.hub.leases import Lease
from tunnel_server.fleet.hub.store import FleetEvents
from tunnel_server.fleet.hub.store_sqlite import SqliteFleetStore


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FleetHub]:
    store = SqliteFleetStore.open(tmp_path)
    yield FleetHub(store=store, events=FleetEvents(store.revision), settings=FleetSettings())
    store.close()


def _cluster(hub: FleetHub, name: str, status: dict[str, object]) -> None:
    hub.put("ManagedCluster", name, labels={}, annotations={}, spec={"hubAcceptsClient": True})
    hub.set_status("ManagedCluster", name, status)


def test_held_elsewhere_counts_as_renewed_with_the_stored_claims(hub: FleetHub) -> None:
    _cluster(
        hub,
        "far",
        {"clusterClaims": [{"name": "region", "value": "eu"}], "allocatable": {"cpu": "4"}},
    )
    _cluster(hub, "lost", {})
    _cluster(hub, "mine", {})
    own = Lease(renewed_at=5.0, apiserver_healthy=True, claims={"region": "us"})
    hub.leases["mine"] = own
    holders = {"far": ("replica-two", "10.0.0.2:8443"), "mine": ("replica-one", "x")}
    ours: dict[str, Lease] = {}

    assert remote_leases.refresh(hub, holders.get, ours, 100.0)
    far = hub.leases["far"]
    assert (far.renewed_at, far.apiserver_healthy) == (100.0, None)
    assert (dict(far.claims), dict(far.allocatable)) == ({"region": "eu"}, {"cpu": "4"})
    assert "lost" not in hub.leases
    assert hub.leases["mine"] is own

    assert remote_leases.refresh(hub, holders.get, ours, 110.0)
    assert hub.leases["far"].renewed_at == 110.0
    # The agent moved to this replica: its stream's lease is never replaced.
    real = Lease(renewed_at=111.0, apiserver_healthy=True)
    hub.leases["far"] = real
    assert not remote_leases.refresh(hub, holders.get, ours, 120.0)
    assert hub.leases["far"] is real
    # Held by no live replica: the last lease stays, and ages.
    hub.leases["far"] = ours["far"]
    assert not remote_leases.refresh(hub, lambda _name: None, ours, 130.0)
    assert hub.leases["far"].renewed_at == 110.0


def test_with_here_a_lease_left_by_a_stream_that_ended_is_replaced(hub: FleetHub) -> None:
    """The agent moved from this replica to another: its last lease here is stale."""
    _cluster(hub, "moved", {"clusterClaims": [{"name": "region", "value": "eu"}]})
    stale = Lease(renewed_at=5.0, apiserver_healthy=True, ready_endpoints={"demo/web:80": 0})
    hub.leases["moved"] = stale
    holders = {"moved": ("replica-two", "10.0.0.2:8443")}
    ours: dict[str, Lease] = {}
    sessions_here = {"moved"}

    # Still here (its record not released yet): the agent's own word stays.
    assert not remote_leases.refresh(hub, holders.get, ours, 100.0, here=sessions_here.__contains__)
    assert hub.leases["moved"] is stale
    assert remote_leases.judged_here(hub, "moved", here=True) is stale

    sessions_here.clear()
    assert remote_leases.judged_here(hub, "moved", here=False) is None
    assert remote_leases.refresh(hub, holders.get, ours, 100.0, here=sessions_here.__contains__)
    moved = hub.leases["moved"]
    assert (moved.renewed_at, dict(moved.claims)) == (100.0, {"region": "eu"})
    assert moved.ready_endpoints is None  # the stale count is not kept
    # Without ``here`` (as before): the lease of a stream that ended here is never replaced.
    hub.leases["moved"] = stale
    assert not remote_leases.refresh(hub, holders.get, {}, 110.0)
    assert hub.leases["moved"] is stale
