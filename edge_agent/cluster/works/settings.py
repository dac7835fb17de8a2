"""Settings of the work applier (``[cluster.works]``): each field says its unit and why."""

from __future__ import annotations

import re
from dataclasses import dataclass

FIELD_MANAGER = "edgefleet-work"
"""The server-side apply field manager of every work (a manifestConfig may name another)."""


@dataclass(frozen=True, kw_only=True)
class WorkSettings:
    """How the cluster agent applies the hub's works to its member cluster."""

    impersonate: str = ""
    """Apply works as this user (and group of the same name), by impersonation, so the member's
    RBAC bounds what a work may do (``edgefleet:work``, bound by the cluster's admin to the role
    works should have; docs/fleet/agent-works.md). Empty: as the agent's own service account."""

    resync_seconds: float = 10.0
    """Seconds between re-applies of every held work: a hand edit in the member is put back
    and statusFeedback scraped this often (OCM scrapes every 30 s, floor 5 s; our works are
    few per cluster and server-side apply of an unchanged object writes nothing)."""

    degraded_after_seconds: float = 60.0
    """Seconds a Deployment/StatefulSet/DaemonSet/Job may stay short of its desired state
    before the manifest is Degraded: a rollout of a few pods takes tens of seconds."""

    max_manifests: int = 500
    """Manifests per work: a 512 KiB work of small objects holds a few hundred."""

    max_manifest_bytes: int = 512 * 1024
    """Bytes of one manifest's JSON: a whole work is bounded at 512 KiB by the hub."""

    max_work_bytes: int = 1024 * 1024
    """Bytes of one work document the applier keeps (the hub's bound plus its status)."""

    max_status_bytes: int = 768 * 1024
    """Bytes of one work's status JSON: it travels in one ``fleet`` stream message (1 MiB);
    beyond it the statusFeedback values are left out (conditions stay) and said so."""

    max_works: int = 2048
    """Works held at once: one cluster rarely runs more than a few dozen; the hub sends at
    most 2,048 per cluster (the fleet stream's bound), so a lower setting refuses some."""

    concurrency: int = 4
    """Works applied at the same time (each manifest of a work is applied in order): bounds
    the load on the member API server when many works change at once."""

    crd_wait_seconds: float = 10.0
    """Seconds to wait, within one apply, for a CustomResourceDefinition of the same work to
    be served before its custom resources are reported UnknownKind (the next resync retries)."""

    discovery_refresh_seconds: float = 1.0
    """Least seconds between two discovery reads of one group version on a kind not found:
    a CRD applied a moment ago shows up, without a read per unknown manifest."""


_USER = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.:@]{0,127}$")


class WorkSettingsError(ValueError):
    """A ``[cluster.works]`` value out of range or unknown; the message names it."""


_RANGES: dict[str, tuple[float, float]] = {
    "resync_seconds": (1.0, 3600.0),
    "degraded_after_seconds": (0.0, 86400.0),
    "max_manifests": (1, 10_000),
    "max_manifest_bytes": (1024, 16 * 1024 * 1024),
    "max_work_bytes": (1024, 64 * 1024 * 1024),
    "max_status_bytes": (16 * 1024, 1024 * 1024),
    "max_works": (1, 100_000),
    "concurrency": (1, 64),
    "crd_wait_seconds": (0.0, 600.0),
    "discovery_refresh_seconds": (0.0, 3600.0),
}


def work_settings(raw: object, where: str = "[cluster.works]") -> WorkSettings:
    """``WorkSettings`` from a config table; WorkSettingsError names a bad key and its range."""
    if not isinstance(raw, dict):
        raise WorkSettingsError(f"{where}: expected a table")
    values: dict[str, float | int | str] = {}
    for key, value in raw.items():
        if key == "impersonate":
            if not isinstance(value, str) or not _USER.match(value):
                raise WorkSettingsError(f"{where}.impersonate: expected a user name, got {value!r}")
            values[key] = value
            continue
        if key not in _RANGES:
            known = ", ".join(sorted([*_RANGES, "impersonate"]))
            raise WorkSettingsError(f"{where}.{key}: unknown key (known: {known})")
        low, high = _RANGES[key]
        integral = isinstance(getattr(WorkSettings(), key), int)
        allowed = (int,) if integral else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed) or not low <= value <= high:
            kind = "an integer" if integral else "a number"
            raise WorkSettingsError(
                f"{where}.{key}: expected {kind} from {low:g} to {high:g}, got {value!r}"
            )
        values[key] = value if integral else float(value)
    return WorkSettings(**values)  # type: ignore[arg-type]
