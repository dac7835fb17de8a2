"""Cluster agents' lease renewals, as the hub keeps them in memory (``FleetHub.leases``).

The cloud end of the ``fleet`` stream records each renewal here and calls
``FleetHub.events.notify()``; the controller turns leases into ManagedCluster conditions and
taints. Kept in memory only: after a restart every agent renews within its lease duration, and
until then the controller treats the cluster as it would a lease never renewed.

``ready_endpoints`` (the agent's gateway: ready endpoints per Service port) is the one field
renewed wholesale by a lease that carries it, kept by one that does not, and dropped by a
``hello`` (a new stream: the agent sends it again at once if it still has a gateway). The wire
bounds it (``MAX_READY_ENTRIES``), so a cluster's record stays small.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Lease"]


@dataclass(frozen=True, kw_only=True)
class Lease:
    """The last renewal of one cluster agent's lease."""

    renewed_at: float
    """Seconds since the epoch (``time.time()``) when the hub received the renewal."""
    apiserver_healthy: bool | None
    """What the agent said of its member API server; None when it did not say."""
    claims: Mapping[str, str] = field(default_factory=dict)
    """Cluster claims (``kubernetes.version``, ``platform``, ``region``, ``zone``, ``nodes``...)."""
    allocatable: Mapping[str, str] = field(default_factory=dict)
    """Kubernetes quantities by resource name (``{"cpu": "12", "memory": "32Gi"}``)."""
    capacity: Mapping[str, str] = field(default_factory=dict)
    """Same shape as ``allocatable``."""
    ready_endpoints: Mapping[str, int] | None = None
    """``namespace/name:port`` -> ready endpoints, as the agent's gateway last reported them
    (every Service port it serves, up to the wire's cap); None: never reported on this stream
    (the gateway then judges the cluster's backends as before: requests and checks)."""
