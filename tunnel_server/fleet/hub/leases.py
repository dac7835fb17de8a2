"""Cluster agents' lease renewals, as the hub keeps them in memory (``FleetHub.leases``).

The cloud end of the ``fleet`` stream records each renewal here and calls
``FleetHub.events.notify()``; the controller turns leases into ManagedCluster conditions and
taints. Kept in memory only: after a restart every agent renews within its lease duration, and
until then the controller treats the cluster as it would a lease never renewed.
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
