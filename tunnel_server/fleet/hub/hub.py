"""``FleetHub``: the one handle every part of this process writes fleet objects through.

The API, the controller, the ``fleet`` stream and the GitSource syncer all hold the same hub
(``app[FLEET_HUB_KEY]``). Its write methods call the store and then ``events.notify()``, so
watches and the controller wake at once; parts never write to the store directly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunnel_server.fleet.hub.leases import Lease
from tunnel_server.fleet.hub.store import FleetEvents, FleetStore, StoredObject

__all__ = ["CLUSTER_LABEL", "FleetHub", "FleetSettings", "from_environment"]

CLUSTER_LABEL = "fleet.edgefleet.io/cluster"
"""Label the hub sets on every Work: its ``spec.clusterName`` (so lists select by cluster)."""


@dataclass(frozen=True, kw_only=True)
class FleetSettings:
    """Bounds and defaults of the hub-managed fleet (``EDGEFLEET_FLEET_*`` override them)."""

    max_work_bytes: int = 512 * 1024
    """Bytes of one Work's JSON. OCM users hit etcd's 1.5 MiB object limit with big works; a
    clear 413 at 512 KiB leaves room for status and keeps one push to an agent small."""

    max_document_bytes: int = 1024 * 1024
    """Bytes of any other fleet document sent to the API (a request body is refused beyond)."""

    changes_kept: int = 10_000
    """Writes kept in the change log for watches. A watch that starts from an older
    resourceVersion gets 410 and lists again; 10,000 writes is minutes of a busy fleet."""

    default_lease_seconds: int = 10
    """Seconds between an agent's lease renewals unless its ManagedCluster says otherwise."""

    watch_timeout_max: float = 300.0
    """Seconds a watch or long poll may last at most (``timeoutSeconds``); clients re-watch."""

    watches_per_caller: int = 16
    """Live watches (SSE and long polls) one caller may hold at once: a console tab or a
    controller needs a handful; more is a leak, answered 503 ``too_many_streams``."""

    watches_total: int = 512
    """Live watches of all callers at once, so watchers cannot exhaust the server's sockets."""

    poll_interval: float = 1.0
    """Seconds between looks at the store's revision while waiting, to see writes by another
    process on the same file (this process's own writes wake waiters at once)."""


_ENV: dict[str, tuple[str, float, float]] = {
    "EDGEFLEET_FLEET_MAX_WORK_BYTES": ("max_work_bytes", 1024, 16 * 1024 * 1024),
    "EDGEFLEET_FLEET_MAX_DOCUMENT_BYTES": ("max_document_bytes", 1024, 16 * 1024 * 1024),
    "EDGEFLEET_FLEET_CHANGES_KEPT": ("changes_kept", 1, 10_000_000),
    "EDGEFLEET_FLEET_WATCH_TIMEOUT_MAX": ("watch_timeout_max", 1, 3600),
}
_INTEGERS = frozenset({"max_work_bytes", "max_document_bytes", "changes_kept"})


def from_environment(env: Mapping[str, str], base: FleetSettings | None = None) -> FleetSettings:
    """``base`` (the defaults) with the ``EDGEFLEET_FLEET_*`` values of ``env`` applied.

    Raises ValueError naming the variable when a value is not a number in range.
    """
    settings = base or FleetSettings()
    changes: dict[str, Any] = {}
    for variable, (name, low, high) in _ENV.items():
        raw = env.get(variable)
        if raw is None or not raw.strip():
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not low <= value <= high:
            raise ValueError(f"{variable}={raw[:40]!r}: expected a number from {low:g} to {high:g}")
        changes[name] = int(value) if name in _INTEGERS else value
    return dataclasses.replace(settings, **changes) if changes else settings


@dataclass(kw_only=True)
class FleetHub:
    """The store, its wake-ups, the settings and the agents' leases of this process."""

    store: FleetStore
    events: FleetEvents
    settings: FleetSettings
    leases: dict[str, Lease] = field(default_factory=dict)
    """Cluster name -> its agent's last lease renewal (written by the ``fleet`` stream)."""

    def put(
        self,
        kind: str,
        name: str,
        *,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        spec: Mapping[str, Any],
        expected_version: int | None = None,
        now: float | None = None,
    ) -> tuple[StoredObject, bool]:
        """Create or replace (``FleetStore.put``), then wake watchers; a Work gets its label."""
        if kind == "Work" and isinstance(spec.get("clusterName"), str):
            labels = {**labels, CLUSTER_LABEL: spec["clusterName"]}
        before = self.store.revision()
        result = self.store.put(
            kind,
            name,
            labels=labels,
            annotations=annotations,
            spec=spec,
            expected_version=expected_version,
            now=time.time() if now is None else now,
        )
        self._notify_if_moved(before)
        return result

    def set_status(
        self,
        kind: str,
        name: str,
        status: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> StoredObject:
        """Replace the status (nothing written when unchanged), then wake watchers."""
        before = self.store.revision()
        obj = self.store.set_status(kind, name, status, expected_version=expected_version)
        self._notify_if_moved(before)
        return obj

    def delete(self, kind: str, name: str, *, expected_version: int | None = None) -> StoredObject:
        """Remove the object (its last state), then wake watchers."""
        obj = self.store.delete(kind, name, expected_version=expected_version)
        self.events.notify()
        return obj

    def _notify_if_moved(self, before: int) -> None:
        if self.store.revision() != before:
            self.events.notify()
