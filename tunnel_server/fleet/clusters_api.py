"""``GET /api/v1/clusters`` and ``GET /api/v1/clusters/{name}``: registered clusters' status.

A cluster is a store record of kind ``cluster`` (made by ``edge-agent join`` with a
``--kind cluster`` token) joined with what its cluster agent reports on the ``status`` stream
(the ``cluster.*`` keys of ``edge_agent/cluster/status.py``). Online/offline, last seen and
the lease are exactly the nodes' (``tunnel_server.api.views``): node and cluster names share
one namespace, so the status history keyed by name serves both.

Rules:

* Every call authorizes through ``api.access.require``: one cluster with ``cluster=name``
  (403 before anything is read), the list with ``require(request, "read")`` and then only the
  clusters in the caller's scope (``total`` counts those).
* A name that is a node gets 404 ``cluster_not_found`` saying it is a node.
* ``apiserver_healthy`` is null unless the cluster is online: an agent that does not report
  cannot tell. The counts stay the last reported ones; ``sampled_at`` says when that was.
* Records are re-read when the store's revision moves or every ``RECORD_TTL`` seconds, so a
  console polling the list does not read the whole nodes table each time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tunnel_server.api.access import Caller, require
from tunnel_server.api.params import is_name, list_params
from tunnel_server.api.settings import ApiSettings
from tunnel_server.api.views import STATUSES, iso, summary, warnings_of
from tunnel_server.app_keys import API_SETTINGS_KEY, HISTORY_KEY, SESSIONS_KEY, STORE_KEY
from tunnel_server.status.history import NodeLive
from tunnel_server.store import NodeRecord, Store
from tunnel_server.web.errors import ApiError

__all__ = ["CLUSTERS_KEY", "SORT_FIELDS", "ClusterRecords", "cluster_row", "setup"]

RECORD_TTL = 2.0
"""Seconds a read of the store's cluster records is reused while its revision stands still
(``last_seen`` and ``agent_version`` move without a revision bump), as the node table does."""

SORT_FIELDS = (
    "name",
    "status",
    "version",
    "nodes_ready",
    "pods_total",
    "pods_running",
    "cpu_requested_cores",
    "memory_requested_bytes",
    "last_seen",
)
PHASES = ("pending", "running", "succeeded", "failed", "unknown")
_CLUSTER_WARNINGS = frozenset({"cert_expired", "cert_expiring", "not_seen", "pending_approval"})
"""Node warnings that mean the same for a cluster agent (disk and memory are its pod's)."""


def _int(value: object) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return None


def _float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def cluster_row(
    record: NodeRecord,
    live: NodeLive | None,
    *,
    connected: bool,
    now: float,
    settings: ApiSettings,
) -> dict[str, Any]:
    """One row of the clusters list: the node part's liveness plus the ``cluster.*`` metrics."""
    base = summary(record, live, connected=connected, now=now, settings=settings)
    metrics = live.metrics if live is not None else {}

    def m(key: str) -> object:
        return metrics.get("cluster." + key)

    online = base["status"] == "online"
    healthy = m("apiserver.healthy")
    pods = {phase: _int(m("pods." + phase)) for phase in PHASES}
    known = [count for count in pods.values() if count is not None]
    row: dict[str, Any] = {
        key: base[key]
        for key in (
            "name",
            "state",
            "status",
            "connected",
            "last_seen",
            "last_report",
            "status_since",
            "offline_reason",
            "agent_version",
            "cert_expires",
        )
    }
    version = m("version")
    row |= {
        "version": version if isinstance(version, str) else None,
        "nodes_total": _int(m("nodes.total")),
        "nodes_ready": _int(m("nodes.ready")),
        "pods_total": sum(known) if known else None,
        **{f"pods_{phase}": count for phase, count in pods.items()},
        "cpu_allocatable_cores": _float(m("cpu.allocatable_cores")),
        "cpu_requested_cores": _float(m("cpu.requested_cores")),
        "memory_allocatable_bytes": _int(m("memory.allocatable_bytes")),
        "memory_requested_bytes": _int(m("memory.requested_bytes")),
        "apiserver_healthy": healthy if online and isinstance(healthy, bool) else None,
        "apiserver_latency_ms": _float(m("apiserver.latency_ms")) if online else None,
        "sampled_at": iso(_float(m("updated_at"))),
    }
    row["warnings"] = _warnings(record, live, row, now=now, settings=settings)
    return row


def _warnings(
    record: NodeRecord,
    live: NodeLive | None,
    row: dict[str, Any],
    *,
    now: float,
    settings: ApiSettings,
) -> list[dict[str, str]]:
    out = []
    if row["apiserver_healthy"] is False:
        out.append(
            {
                "code": "apiserver_unhealthy",
                "severity": "critical",
                "message": "the cluster's API server does not answer its agent "
                "(counts are the last ones it reported)",
            }
        )
    total, ready = row["nodes_total"], row["nodes_ready"]
    if row["status"] == "online" and total is not None and ready is not None and ready < total:
        out.append(
            {
                "code": "nodes_not_ready",
                "severity": "warning",
                "message": f"{total - ready} of {total} nodes not ready",
            }
        )
    out += [
        w
        for w in warnings_of(record, live, now=now, settings=settings)
        if w["code"] in _CLUSTER_WARNINGS
    ]
    order = {"critical": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda w: order[w["severity"]])


@dataclass(kw_only=True)
class ClusterRecords:
    """The store's records of kind ``cluster``, re-read only when they may have changed."""

    store: Store
    ttl: float = RECORD_TTL
    _records: dict[str, NodeRecord] = field(default_factory=dict)
    _revision: int = -1
    _read_at: float = -1e18

    def all(self, now: float) -> dict[str, NodeRecord]:
        revision = self.store.revision()
        if revision != self._revision or now - self._read_at >= self.ttl:
            self._records = {
                node.name: node for node in self.store.list_nodes() if node.kind == "cluster"
            }
            self._revision, self._read_at = revision, now
        return self._records


CLUSTERS_KEY: web.AppKey[ClusterRecords] = web.AppKey("cluster_records", ClusterRecords)


def _row(app: web.Application, record: NodeRecord, now: float) -> dict[str, Any]:
    return cluster_row(
        record,
        app[HISTORY_KEY].live(record.name),
        connected=app[SESSIONS_KEY].get(record.name) is not None,
        now=now,
        settings=app[API_SETTINGS_KEY],
    )


def _sorted(rows: list[dict[str, Any]], sort: str | None) -> list[dict[str, Any]]:
    if not sort:
        return rows
    field_name = sort.lstrip("-")
    present = [r for r in rows if r.get(field_name) is not None]
    missing = [r for r in rows if r.get(field_name) is None]
    present.sort(key=lambda r: r["name"])
    present.sort(key=lambda r: r[field_name], reverse=sort.startswith("-"))
    return present + missing  # empty values last, either way


async def list_clusters(request: web.Request) -> web.Response:
    """``GET /api/v1/clusters``: the clusters in the caller's scope, with their status."""
    caller: Caller = require(request, "read")
    params = list_params(
        request,
        max_page=request.app[API_SETTINGS_KEY].max_page,
        statuses=STATUSES,
        sort_fields=SORT_FIELDS,
    )
    now = time.time()
    records = request.app[CLUSTERS_KEY].all(now)
    rows = [
        _row(request.app, record, now)
        for name, record in sorted(records.items())
        if caller.in_scope(name) and params.query in name
    ]
    rows = _sorted([r for r in rows if params.status in (None, r["status"])], params.sort)
    return web.json_response(
        {
            "total": len(rows),
            "offset": params.offset,
            "clusters": rows[params.offset : params.offset + params.limit],
        }
    )


async def get_cluster(request: web.Request) -> web.Response:
    """``GET /api/v1/clusters/{name}``: one cluster with every metric its agent reported."""
    name = request.match_info["name"]
    if not is_name(name):
        raise ApiError(
            400,
            "bad_name",
            "cluster names are 1-63 lower-case letters, digits, '-' or '.', starting and "
            "ending with a letter or digit",
        )
    require(request, "read", cluster=name)
    now = time.time()
    record = request.app[STORE_KEY].get_node(name)
    if record is None or record.kind != "cluster":
        hint = (
            f"{name!r} is a node, not a cluster: see GET /api/v1/nodes/{name}"
            if record is not None
            else f"no cluster named {name!r}: see GET /api/v1/clusters"
        )
        raise ApiError(404, "cluster_not_found", hint)
    app = request.app
    live = app[HISTORY_KEY].live(name)
    lease = None
    if live is not None and live.last_report is not None:
        lease = app[HISTORY_KEY].lease_for(live.interval)
    return web.json_response(
        {
            **_row(app, record, now),
            "created_at": iso(record.created_at),
            "cert_serial": record.cert_serial,
            "report_interval_seconds": live.interval if live is not None else None,
            "lease_seconds": lease,
            "metrics": dict(sorted(live.metrics.items())) if live is not None else {},
        }
    )


def setup(app: web.Application) -> None:
    """Mount the routes; needs the store, the status history and the API (``api.setup``)."""
    app[CLUSTERS_KEY] = ClusterRecords(store=app[STORE_KEY])
    app.router.add_get("/api/v1/clusters", list_clusters)
    app.router.add_get("/api/v1/clusters/{name}", get_cluster)
