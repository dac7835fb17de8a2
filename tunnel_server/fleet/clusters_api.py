"""Registered clusters in the REST API: status (list, one) and the double opt-in actions.

``GET /api/v1/clusters``, ``GET /api/v1/clusters/{name}``,
``POST /api/v1/clusters/{name}/approve|deny|revoke``.

A cluster is a store record of kind ``cluster`` (made by ``edge-agent join`` with a
``--kind cluster`` token) joined with what its cluster agent reports on the ``status`` stream
(the ``cluster.*`` keys of ``edge_agent/cluster/status.py``). Online/offline, last seen and
the lease are exactly the nodes' (``tunnel_server.api.views``): node and cluster names share
one namespace, so the status history keyed by name serves both.

Rules:

* Every call authorizes through ``api.access.require`` first: one cluster with
  ``cluster=name`` (403 before anything is read), the list with ``require(request, "read")``
  and then only the clusters in the caller's scope; the actions need ``write`` in scope.
* A name that is a node gets 404 ``cluster_not_found`` saying it is a node.
* ``apiserverHealthy`` is null unless the cluster is online: an agent that does not report
  cannot tell. The counts stay the last reported ones; ``sampledAt`` says when that was.
* approve/deny only while pending (409 ``wrong_state`` else); deny and revoke leave the record
  ``revoked`` (revoke is idempotent, as the nodes' is). Revoke closes the agent's tunnel
  session in this process at once (the store watcher of every replica would within its poll
  interval, as for ``tunnel-server nodes revoke`` from another process).
* Records are re-read when the store's revision moves or every ``RECORD_TTL`` seconds, so a
  console polling the list does not read the whole nodes table each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from device_models import Problem
from tunnel_protocol import ErrorCode
from tunnel_server.api.access import Caller, require
from tunnel_server.api.paging import Key, page, sort_items
from tunnel_server.api.params import MAX_QUERY, choice, is_name
from tunnel_server.api.settings import ApiSettings
from tunnel_server.api.views import STATUSES, iso, summary, warnings_of
from tunnel_server.app_keys import (
    API_SETTINGS_KEY,
    CLUSTER_MANIFEST_KEY,
    HISTORY_KEY,
    SESSIONS_KEY,
    STORE_KEY,
)
from tunnel_server.fleet import manifest
from tunnel_server.replicas import opener
from tunnel_server.status.history import NodeLive
from tunnel_server.store import NodeRecord, NodeState, NotFoundError, Store
from tunnel_server.web.bodies import decode_json_object, read_bounded
from tunnel_server.web.errors import ApiError

__all__ = [
    "CLUSTERS_KEY",
    "SORT_FIELDS",
    "ClusterRecords",
    "cluster_row",
    "cut_off",
    "render_manifest",
    "setup",
]

log = logging.getLogger("tunnel_server.fleet.clusters")

RECORD_TTL = 2.0
"""Seconds a read of the store's cluster records is reused while its revision stands still
(``last_seen`` and ``agent_version`` move without a revision bump), as the node table does."""

SORT_FIELDS = (
    "name",
    "status",
    "version",
    "nodesReady",
    "podsTotal",
    "podsRunning",
    "cpuRequestedCores",
    "memoryRequestedBytes",
    "lastSeenAt",
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
    """One item of the clusters list: the node part's liveness plus the ``cluster.*`` metrics."""
    base = summary(record, live, connected=connected, now=now, settings=settings)
    metrics = live.metrics if live is not None else {}

    def m(key: str) -> object:
        return metrics.get("cluster." + key)

    online = base["status"] == "online"
    healthy = m("apiserver.healthy")
    pods = {phase: _int(m("pods." + phase)) for phase in PHASES}
    known = [count for count in pods.values() if count is not None]
    version = m("version")
    row: dict[str, Any] = {
        "name": base["name"],
        "state": base["state"],
        "status": base["status"],
        "connected": base["connected"],
        "lastSeenAt": base["last_seen"],
        "lastReportAt": base["last_report"],
        "statusChangedAt": base["status_since"],
        "offlineReason": base["offline_reason"],
        "agentVersion": base["agent_version"],
        "certExpiresAt": base["cert_expires"],
        "version": version if isinstance(version, str) else None,
        "nodesTotal": _int(m("nodes.total")),
        "nodesReady": _int(m("nodes.ready")),
        "podsTotal": sum(known) if known else None,
        **{f"pods{phase.title()}": count for phase, count in pods.items()},
        "cpuAllocatableCores": _float(m("cpu.allocatable_cores")),
        "cpuRequestedCores": _float(m("cpu.requested_cores")),
        "memoryAllocatableBytes": _int(m("memory.allocatable_bytes")),
        "memoryRequestedBytes": _int(m("memory.requested_bytes")),
        "apiserverHealthy": healthy if online and isinstance(healthy, bool) else None,
        "apiserverLatencyMs": _float(m("apiserver.latency_ms")) if online else None,
        "sampledAt": iso(_float(m("updated_at"))),
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
    if row["apiserverHealthy"] is False:
        out.append(
            {
                "code": "apiserver_unhealthy",
                "severity": "critical",
                "message": "the cluster's API server does not answer its agent "
                "(counts are the last ones it reported)",
            }
        )
    total, ready = row["nodesTotal"], row["nodesReady"]
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
        connected=opener.connected(app, record.name),
        now=now,
        settings=app[API_SETTINGS_KEY],
    )


def _sort_key(sort: str | None) -> tuple[Callable[[dict[str, Any]], Key], bool]:
    """The paging key of ``sort`` (empty values last either way, then by name) and its order."""
    if not sort:
        return (lambda row: (row["name"],)), False
    field_name = sort.lstrip("-")
    if sort.startswith("-"):
        return (lambda row: (row[field_name] is not None, row[field_name], row["name"])), True
    return (lambda row: (row[field_name] is None, row[field_name], row["name"])), False


async def list_clusters(request: web.Request) -> web.Response:
    """``GET /api/v1/clusters``: the clusters in the caller's scope, with their status."""
    caller: Caller = require(request, "read")
    status = choice(request, "status", STATUSES)
    sort = choice(request, "sort", SORT_FIELDS + tuple("-" + f for f in SORT_FIELDS))
    query = request.query.get("q", "")
    if len(query) > MAX_QUERY:
        raise ApiError(
            400, "bad_parameter", f"query parameter 'q' is at most {MAX_QUERY} characters"
        )
    now = time.time()
    records = request.app[CLUSTERS_KEY].all(now)
    rows = [
        _row(request.app, record, now)
        for name, record in records.items()
        if caller.in_scope(name) and query.lower() in name
    ]
    key, reverse = _sort_key(sort)
    chosen = sort_items(
        [r for r in rows if status in (None, r["status"])], key=key, reverse=reverse
    )
    return web.json_response(
        page(request, chosen, key=key, render=lambda row: row, reverse=reverse)
    )


def _cluster_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not is_name(name):
        raise ApiError(
            400,
            "bad_name",
            "cluster names are 1-63 lower-case letters, digits, '-' or '.', starting and "
            "ending with a letter or digit",
        )
    return name


def _record(request: web.Request, name: str) -> NodeRecord:
    record = request.app[STORE_KEY].get_node(name)
    if record is None or record.kind != "cluster":
        hint = (
            f"{name!r} is a node, not a cluster: see GET /api/v1/nodes/{name}"
            if record is not None
            else f"no cluster named {name!r}: see GET /api/v1/clusters"
        )
        raise ApiError(404, "cluster_not_found", hint)
    return record


def _detail(app: web.Application, record: NodeRecord) -> dict[str, Any]:
    live = app[HISTORY_KEY].live(record.name)
    lease = None
    if live is not None and live.last_report is not None:
        lease = app[HISTORY_KEY].lease_for(live.interval)
    return {
        **_row(app, record, time.time()),
        "createdAt": iso(record.created_at),
        "certSerial": record.cert_serial,
        "reportIntervalSeconds": live.interval if live is not None else None,
        "leaseSeconds": lease,
        "metrics": dict(sorted(live.metrics.items())) if live is not None else {},
    }


async def get_cluster(request: web.Request) -> web.Response:
    """``GET /api/v1/clusters/{name}``: one cluster with every metric its agent reported."""
    name = _cluster_name(request)
    require(request, "read", cluster=name)
    return web.json_response(_detail(request.app, _record(request, name)))


async def _no_body(request: web.Request) -> None:
    """Actions take no fields: nothing, or ``{}``; anything else is a 400 naming it."""
    raw = await read_bounded(request, limit=request.app[API_SETTINGS_KEY].max_body_bytes)
    if not raw.strip():
        return
    data = decode_json_object(raw)
    if data:
        names = sorted(data)
        raise ApiError(
            400,
            "unknown_field",
            f"unknown field(s) {', '.join(repr(n[:40]) for n in names[:10])}: this action "
            "takes no fields; send no body or {}",
            problems=tuple(Problem(path="/" + n[:40], reason="unknown field") for n in names[:10]),
        )


_ACTIONS: dict[str, tuple[tuple[NodeState, ...], NodeState]] = {
    "approve": (("pending",), "approved"),
    "deny": (("pending",), "revoked"),
    "revoke": (("pending", "approved", "revoked"), "revoked"),
}
"""Each action: the states it may start from, and the state it leaves the cluster in. revoke is
idempotent, as the nodes' is: a retried or double-clicked revoke is no error."""


def cut_off(app: web.Application, name: str) -> bool:
    """Close ``name``'s tunnel session now (the store watcher would within its poll)."""
    session = app[SESSIONS_KEY].get(name)
    if session is None:
        return False
    session.connection.close(ErrorCode.CANCEL, "this cluster was revoked: join again")
    return True


async def cluster_action(request: web.Request) -> web.Response:
    """``POST /api/v1/clusters/{name}/approve|deny|revoke``: double opt-in and cut-off."""
    name = _cluster_name(request)
    verb = request.path.rsplit("/", 1)[1]
    caller = require(request, "write", cluster=name)
    await _no_body(request)
    record = _record(request, name)
    allowed, target = _ACTIONS[verb]
    if record.state not in allowed:
        raise ApiError(
            409,
            "wrong_state",
            f"cluster {name!r} is {record.state}, so it cannot be {verb}d: "
            + (
                f"only a pending cluster is {verb}d; revoke it with POST "
                f"/api/v1/clusters/{name}/revoke"
                if record.state == "approved"
                else "a revoked cluster joins again with a new token (POST /api/v1/tokens "
                f'{{"kind": "cluster", "name": "{name}"}})'
            ),
            extra={"state": record.state},
        )
    try:
        updated = request.app[STORE_KEY].set_node_state(name, target)
    except NotFoundError:
        raise ApiError(404, "cluster_not_found", f"cluster {name!r} was removed just now") from None
    cut = cut_off(request.app, name) if target == "revoked" else False
    log.info(
        "cluster %s",
        verb,
        extra={"kv": {"cluster": name, "by": caller.name, "was": record.state, "cut_off": cut}},
    )
    return web.json_response(_detail(request.app, updated))


def render_manifest(
    *, name: str, token: str, server: str, ca_hash: str, image: str | None = None
) -> str:
    """``app[CLUSTER_MANIFEST_KEY]``: the cluster agent's install manifest, as the API returns it.

    A value that cannot go into it (an image reference, the server URL) is a 400 naming it.
    """
    join = manifest.ClusterJoin(
        name=name,
        server=server,
        ca_hash=ca_hash,
        token=token,
        image=image or manifest.DEFAULT_IMAGE,
    )
    try:
        return manifest.render(join)
    except manifest.ManifestError as exc:
        raise ApiError(400, "bad_request", f"cannot make the install manifest: {exc}") from None


def setup(app: web.Application) -> None:
    """Mount the routes; needs the store, the status history and the API (``api.setup``)."""
    app[CLUSTERS_KEY] = ClusterRecords(store=app[STORE_KEY])
    app[CLUSTER_MANIFEST_KEY] = render_manifest
    app.router.add_get("/api/v1/clusters", list_clusters)
    app.router.add_get("/api/v1/clusters/{name}", get_cluster)
    for verb in _ACTIONS:  # one route each, as the OpenAPI document lists them
        app.router.add_post(f"/api/v1/clusters/{{name}}/{verb}", cluster_action)
