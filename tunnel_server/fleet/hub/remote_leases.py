"""Leases of cluster agents whose session another replica holds (``--store kubernetes`` only).

An agent's ``fleet`` stream renews its lease in the memory of the replica holding its tunnel
session (``FleetHub.leases``), but the hub controller runs on the leader only. So the leader
counts a cluster whose session a live replica holds (the replicas' holder Leases,
``replicas.keys.HOLDER_KEY``) as renewed now, with the claims and resources its status holds
already: a healthy cluster on a follower is neither tainted unreachable nor stripped of what
its status says. Rules:

* a lease this replica's own stream wrote is never replaced (it is the agent's word) while
  the session is here; with ``here`` (whether this replica holds the session now), one left
  by a stream that ended here (the agent moved to another replica) is replaced as any other;
* a cluster whose session no live replica holds is left alone: its last lease ages as a lost
  one does (5 x ``leaseDurationSeconds``, then ``unreachable``);
* the agent's own claims and its API server health reach the status only while the leader
  holds its session (docs/ha.md, "Fleet objects": a limit of this step).

Every replica judges a cluster by the same rule (``judged_here``): by its own lease while its
session is here, by the holder replica's Lease (alive: renewed now) while another live replica
holds it. The gateway of a replica that does not hold the session follows it too
(``fleet/gateway/fleet_router.py``): the lease in its memory, if any, is a stale one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from tunnel_server.fleet.hub.hub import FleetHub
from tunnel_server.fleet.hub.leases import Lease

__all__ = ["follow", "judged_here", "lease_from_status", "refresh"]

Holder = Callable[[str], object | None]
"""``(cluster) -> the live replica holding its session, or None`` (``HOLDER_KEY``)."""
Here = Callable[[str], bool]
"""``(cluster) -> whether this replica holds its session now`` (``SESSIONS_KEY``)."""


def judged_here(hub: FleetHub, cluster: str, *, here: bool) -> Lease | None:
    """The lease this replica judges ``cluster`` by: its own while the session is here.

    None when the session is not here: a lease in this replica's memory was renewed by a
    stream that ended (the agent moved, or it is one ``refresh`` made), and says nothing of
    the agent now; whether some live replica holds the session (its holder Lease) decides.
    """
    return hub.leases.get(cluster) if here else None


def _strings(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def lease_from_status(status: Mapping[str, Any], now: float) -> Lease:
    """A renewal at ``now`` carrying what the status says (claims, allocatable, capacity)."""
    claims = status.get("clusterClaims")
    pairs = (
        {c.get("name"): c.get("value") for c in claims if isinstance(c, Mapping)}
        if isinstance(claims, list)
        else {}
    )
    return Lease(
        renewed_at=now,
        apiserver_healthy=None,
        claims=_strings(pairs),
        allocatable=_strings(status.get("allocatable")),
        capacity=_strings(status.get("capacity")),
    )


def refresh(
    hub: FleetHub, held: Holder, ours: dict[str, Lease], now: float, *, here: Here | None = None
) -> bool:
    """Renew the leases of clusters held by a live replica; whether any was (and notify).

    ``here`` None: a lease this replica's own stream wrote is never replaced, even once the
    stream ended (the agent moved; it then ages out here).
    """
    changed = False
    for obj in hub.store.list("ManagedCluster"):
        current = hub.leases.get(obj.name)
        own = current is not None and ours.get(obj.name) is not current
        if own and (here is None or here(obj.name)):
            continue  # this replica's own stream renewed it: the agent's word wins
        if held(obj.name) is None:
            continue
        lease = lease_from_status(obj.status, now)
        hub.leases[obj.name] = ours[obj.name] = lease
        changed = True
    if changed:
        hub.events.notify()
    return changed


async def follow(hub: FleetHub, held: Holder, *, interval: float, here: Here | None = None) -> None:
    """``refresh`` every ``interval`` seconds (a lease duration: renewals are periodic)."""
    ours: dict[str, Lease] = {}
    while True:
        refresh(hub, held, ours, time.time(), here=here)
        await asyncio.sleep(interval)
