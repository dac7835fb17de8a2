"""The JSON shapes of nodes, the fleet overview and warnings (pure functions over records).

``summary`` gathers what is known of one node under internal snake_case names (the clusters
part builds its rows from it too); ``node_row`` is that as the API shows it: camelCase, times
RFC 3339 and named ``...At`` (docs/api.md, "The convention").
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tunnel_server.api.paging import Key
from tunnel_server.api.settings import ApiSettings
from tunnel_server.status.history import NodeLive
from tunnel_server.store import NodeRecord

STATUSES = ("online", "offline", "unknown", "pending", "revoked")
SORT_FIELDS = (
    "name",
    "status",
    "cpuPercent",
    "memoryPercent",
    "diskPercent",
    "agentVersion",
    "certExpiresAt",
    "lastSeenAt",
)
"""Fields of a node row ``GET /api/v1/nodes?sort=`` orders by (``-`` in front: descending)."""

ROW_NAMES = {
    "name": "name",
    "kind": "kind",
    "state": "state",
    "status": "status",
    "connected": "connected",
    "last_seen": "lastSeenAt",
    "last_report": "lastReportAt",
    "status_since": "statusChangedAt",
    "offline_reason": "offlineReason",
    "agent_version": "agentVersion",
    "cert_expires": "certExpiresAt",
    "os": "os",
    "kernel": "kernel",
    "cpu_percent": "cpuPercent",
    "memory_percent": "memoryPercent",
    "disk_percent": "diskPercent",
    "load1": "load1",
    "rtt_ms": "rttMs",
    "uptime_seconds": "uptimeSeconds",
    "warnings": "warnings",
}
"""``summary``'s names -> the API's names of a node row, in the order the row shows them."""


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def status_of(node: NodeRecord, live: NodeLive | None) -> str:
    """The status column: online, offline, unknown (never reported), pending or revoked."""
    if node.state != "approved":
        return node.state
    if live is None or live.last_report is None:
        return "unknown"
    return "online" if live.online else "offline"


def warnings_of(
    node: NodeRecord, live: NodeLive | None, *, now: float, settings: ApiSettings
) -> list[dict[str, str]]:
    """What an operator should look at on this node, most severe first."""
    out: list[dict[str, str]] = []
    if node.state == "pending":
        out.append(
            _warning(
                "pending_approval",
                "info",
                f"waiting for approval: `tunnel-server nodes approve {node.name}`",
            )
        )
    if node.state != "approved":
        return out
    if node.cert_not_after is not None:
        left = node.cert_not_after - now
        if left <= 0:
            out.append(_warning("cert_expired", "critical", "certificate expired: join again"))
        elif left < settings.cert_warn:
            severity = "critical" if left < 86400 else "warning"
            out.append(
                _warning(
                    "cert_expiring",
                    severity,
                    f"certificate expires in {_duration(left)}: check the agent's renewal",
                )
            )
    metrics = live.metrics if live is not None else {}
    disk = _number(metrics.get("disk.percent"))
    if disk is not None and disk >= settings.disk_warn_percent:
        severity = "critical" if disk >= 97 else "warning"
        out.append(_warning("disk_full", severity, f"disk {disk:.0f}% full"))
    memory = _number(metrics.get("memory.percent"))
    if memory is not None and memory >= settings.memory_warn_percent:
        out.append(_warning("memory_high", "warning", f"memory {memory:.0f}% used"))
    if live is not None and not live.online and live.last_report is not None:
        seen = max(live.last_report, node.last_seen or 0.0)
        if now - seen >= settings.not_seen_warn:
            out.append(_warning("not_seen", "warning", f"not seen for {_duration(now - seen)}"))
    order = {"critical": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda w: order[w["severity"]])


def _warning(code: str, severity: str, message: str) -> dict[str, str]:
    return {"code": code, "severity": severity, "message": message}


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{max(seconds, 0) / 60:.0f} minutes"


def summary(
    node: NodeRecord,
    live: NodeLive | None,
    *,
    connected: bool,
    now: float,
    settings: ApiSettings,
) -> dict[str, Any]:
    """One row of the node table."""
    metrics = live.metrics if live is not None else {}
    boot = _number(metrics.get("boot.time"))
    last_report = live.last_report if live is not None else None
    last_seen = max(filter(None, (node.last_seen, last_report)), default=None)
    if connected:
        last_seen = now
    return {
        "name": node.name,
        "kind": node.kind,
        "state": node.state,
        "status": status_of(node, live),
        "connected": connected,
        "last_seen": iso(last_seen),
        "last_report": iso(last_report),
        "status_since": iso(live.changed_at) if live is not None and live.changed_at else None,
        "offline_reason": live.offline_reason if live is not None else None,
        "agent_version": _text(metrics.get("agent.version")) or node.agent_version,
        "cert_expires": iso(node.cert_not_after),
        "os": _text(metrics.get("os.name")),
        "kernel": _text(metrics.get("os.release")),
        "cpu_percent": _number(metrics.get("cpu.percent")),
        "memory_percent": _number(metrics.get("memory.percent")),
        "disk_percent": _number(metrics.get("disk.percent")),
        "load1": _number(metrics.get("load.1")),
        "rtt_ms": _number(metrics.get("tunnel.rtt_ms")),
        "uptime_seconds": None if boot is None else max(0.0, round(now - boot)),
        "warnings": warnings_of(node, live, now=now, settings=settings),
    }


def node_row(
    node: NodeRecord,
    live: NodeLive | None,
    *,
    connected: bool,
    now: float,
    settings: ApiSettings,
) -> dict[str, Any]:
    """One row of the node table as the API shows it (``GET /api/v1/nodes``, events)."""
    facts = summary(node, live, connected=connected, now=now, settings=settings)
    return {api: facts[internal] for internal, api in ROW_NAMES.items()}


def overview(rows: list[dict[str, Any]], *, now: float) -> dict[str, Any]:
    """Counts by status and every warning, most severe first (``rows``: ``node_row``s)."""
    counts = dict.fromkeys(STATUSES, 0)
    warnings: list[dict[str, str]] = []
    for row in rows:
        counts[row["status"]] += 1
        warnings.extend({"node": row["name"], **warning} for warning in row["warnings"])
    order = {"critical": 0, "warning": 1, "info": 2}
    warnings.sort(key=lambda w: (order[w["severity"]], w["node"]))
    return {
        "generatedAt": iso(now),
        "nodes": {"total": len(rows), **counts},
        "warnings": warnings,
    }


def sort_key(field: str, *, descending: bool = False) -> Callable[[dict[str, Any]], Key]:
    """The paging key of a node row sorted by ``field``: rows without a value come last.

    Ascending, ``(missing, value, name)`` puts missing values after the rest; descending (the
    order reversed), ``(present, value, name)`` does. The name makes every key unique.
    """

    def key(row: dict[str, Any]) -> Key:
        value = row.get(field)
        marker = (value is not None) if descending else (value is None)
        return (marker, value, row["name"])

    return key
