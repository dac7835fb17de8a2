"""Health: the agents' leases (``FleetHub.leases``) as ManagedCluster status and built-in taints.

The rules are ``fleet_model.cluster.evaluate_health`` (5 x ``leaseDurationSeconds`` without a
renewal: ``Available`` Unknown and the ``unreachable`` taint; an API server the agent says is
unhealthy: ``Available`` False and the ``unavailable`` taint). This module only turns a lease
into those arguments and into the status fields the agent reports, and decides what is worth a
write:

* ``clusterClaims``, ``allocatable``, ``capacity``, ``version`` come from the lease when the
  agent holds one; without a lease (agent offline, or before it reported) the stored values
  stay: they are the last known, and an admin may have set them (``PUT .../status``).
* ``lease.renewTime`` is written when anything else changes, else at most every
  ``max(leaseDurationSeconds, renew_write_seconds)``: a renewal alone does not cost a store
  write (1,000 clusters renewing every 10 s would be 100 writes a second). Availability is
  computed from the in-memory lease, never from the stored ``renewTime``.
* After a hub restart ``leases`` is empty until the agents renew: a cluster whose status shows
  it had renewed counts as renewed when the controller started (a grace of one 5 x N), so a
  restart does not taint and move every workload. One that never renewed gets no grace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet_model.cluster import MAX_CLAIMS, MAX_QUANTITY_CHARS
from fleet_model.selectors import MAX_CLAIM_VALUE
from fleet_model.times import format_time, parse_time
from tunnel_server.fleet.hub.leases import Lease

__all__ = ["LeaseFacts", "agent_fields", "lease_facts", "renew_time"]

MAX_RESOURCES = 32
"""Resource names kept from one lease's allocatable or capacity (cpu, memory, pods, ...)."""
MAX_CLAIM_NAME = 253


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseFacts:
    renewed_at: float | None
    apiserver_healthy: bool | None
    claims: list[dict[str, str]] | None
    """None: no lease in memory, keep what the status says."""
    allocatable: dict[str, str] | None
    capacity: dict[str, str] | None
    assumed: bool = False
    """``renewed_at`` is the controller's start (restart grace), not a renewal."""


def _claims(value: object) -> list[dict[str, str]]:
    pairs: list[tuple[object, object]]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = [(c.get("name"), c.get("value")) for c in value if isinstance(c, Mapping)]
    else:
        return []
    out = {
        name: claim
        for name, claim in pairs
        if isinstance(name, str)
        and 0 < len(name) <= MAX_CLAIM_NAME
        and isinstance(claim, str)
        and len(claim) <= MAX_CLAIM_VALUE
    }
    return [{"name": n, "value": out[n]} for n in sorted(out)[:MAX_CLAIMS]]


def _resources(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    out = {
        k: v
        for k, v in value.items()
        if isinstance(k, str)
        and 0 < len(k) <= MAX_CLAIM_NAME
        and isinstance(v, str)
        and 0 < len(v) <= MAX_QUANTITY_CHARS
    }
    return {k: out[k] for k in sorted(out)[:MAX_RESOURCES]}


def lease_facts(
    lease: Lease | None,
    *,
    status: Mapping[str, Any],
    started_at: float,
    last_renewed: float | None = None,
) -> LeaseFacts:
    """What one cluster's lease says (None: not in memory), with the restart grace.

    ``last_renewed``: the last renewal this controller saw, used if the lease left memory.
    """
    if lease is None:
        if last_renewed is not None:
            return LeaseFacts(
                renewed_at=last_renewed,
                apiserver_healthy=None,
                claims=None,
                allocatable=None,
                capacity=None,
            )
        had = (
            isinstance(status.get("lease"), Mapping)
            and parse_time(status["lease"].get("renewTime")) is not None
        )
        return LeaseFacts(
            renewed_at=started_at if had else None,
            apiserver_healthy=None,
            claims=None,
            allocatable=None,
            capacity=None,
            assumed=had,
        )
    healthy = lease.apiserver_healthy
    return LeaseFacts(
        renewed_at=float(lease.renewed_at),
        apiserver_healthy=healthy if isinstance(healthy, bool) else None,
        claims=_claims(lease.claims),
        allocatable=_resources(lease.allocatable),
        capacity=_resources(lease.capacity),
    )


def agent_fields(facts: LeaseFacts, status: Mapping[str, Any]) -> dict[str, Any]:
    """``clusterClaims``, ``allocatable``, ``capacity``, ``version``: the lease's or the stored."""
    if facts.claims is None:
        return {
            key: status[key]
            for key in ("clusterClaims", "allocatable", "capacity", "version")
            if key in status
        }
    out: dict[str, Any] = {
        "clusterClaims": facts.claims,
        "allocatable": facts.allocatable or {},
        "capacity": facts.capacity or {},
    }
    version = next((c["value"] for c in facts.claims if c["name"] == "kubernetes.version"), None)
    if version is not None:
        out["version"] = {"kubernetes": version}
    return out


def renew_time(
    facts: LeaseFacts,
    *,
    stored: object,
    min_interval: float,
    now: float,
) -> str | None:
    """``lease.renewTime`` to write: the stored one while younger than ``min_interval``."""
    if facts.renewed_at is None or facts.assumed:
        return stored if isinstance(stored, str) else None
    fresh = format_time(facts.renewed_at)
    before = parse_time(stored)
    if before is not None and now - before < min_interval:
        return str(stored)
    return fresh
