"""Who did what through the API (the audit log), and what happened to each node (its events).

- ``recorder``: the middleware that gives every ``/api/`` answer a request id and appends one
  record per API write (refusals too) to ``log_store`` and one line to the server log;
- ``log_store``: the audit table in ``audit.db``, pruned by age and count (``settings``);
- ``api`` / ``openapi``: ``GET /api/v1/audit`` and ``GET /api/v1/nodes/{name}/events``;
- the node events themselves live in ``tunnel_server.status.node_events`` (the tunnel and the
  join API note into them through ``app_keys.NODE_EVENTS_KEY``).

``setup(app)`` needs the store, the tunnel and the API set up first. docs/audit.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator

import prometheus_client
from aiohttp import web

from tunnel_server.app_keys import NODE_EVENTS_KEY, REGISTRY_KEY, SETTINGS_KEY, STORE_KEY
from tunnel_server.audit import api
from tunnel_server.audit.log_store import AuditLog
from tunnel_server.audit.openapi import OPENAPI_PATHS
from tunnel_server.audit.recorder import (
    AUDIT_FAILURES_KEY,
    AUDIT_LOG_KEY,
    add_request_id,
    audit_writes,
)
from tunnel_server.audit.settings import AuditSettings, from_environment
from tunnel_server.status.node_events import NodeEvents, NodeEventSettings

__all__ = ["OPENAPI_PATHS", "AuditSettings", "setup"]

log = logging.getLogger("tunnel_server.audit")


async def _prune_audit(audit: AuditLog) -> None:
    while True:
        try:
            await audit.prune(now=time.time())
        except sqlite3.Error as error:  # a full disk must not stop the server; try again later
            log.warning("audit log not pruned", extra={"kv": {"error": error}})
        await asyncio.sleep(audit.settings.prune_interval)


async def _follow_store(events: NodeEvents, *, interval: float) -> None:
    """Note approvals, denials, revocations and renewals made through any path (the store)."""
    next_prune = 0.0
    while True:
        now = time.time()
        events.sync(now=now)
        events.flush()
        if now >= next_prune:
            try:
                events.prune(now=now)
            except sqlite3.Error as error:
                log.warning("node events not pruned", extra={"kv": {"error": error}})
            next_prune = now + events.settings.prune_interval
        await asyncio.sleep(interval)


def setup(
    app: web.Application,
    *,
    settings: AuditSettings | None = None,
    event_settings: NodeEventSettings | None = None,
) -> None:
    """Open both files, put the middleware first, mount the routes, start the pruners."""
    server = app[SETTINGS_KEY]
    settings = from_environment(os.environ, settings)
    audit = AuditLog.open(server.data_dir, settings=settings)
    events = NodeEvents.open(
        server.data_dir, store=app[STORE_KEY], settings=event_settings or NodeEventSettings()
    )
    events.sync(now=time.time())  # the baseline: what the store holds at start
    app[AUDIT_LOG_KEY] = audit
    app[NODE_EVENTS_KEY] = events
    app[AUDIT_FAILURES_KEY] = prometheus_client.Counter(
        "tunnel_server_audit_write_failures",
        "API writes whose audit record could not be stored (the log line was still written)",
        registry=app[REGISTRY_KEY],
    )
    # Outermost: it must see the final answer of api_errors and bounded_bodies.
    app.middlewares.insert(0, audit_writes)
    app.on_response_prepare.append(add_request_id)
    api.add_routes(app)
    log.info(
        "audit log open",
        extra={"kv": {"max_age": settings.max_age, "max_rows": settings.max_rows}},
    )

    async def background(_app: web.Application) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(_prune_audit(audit), name="audit.prune"),
                group.create_task(
                    _follow_store(events, interval=server.store_poll_interval),
                    name="node-events.follow-store",
                ),
            ]
            yield
            for task in tasks:
                task.cancel()
        audit.close()
        events.close()

    app.cleanup_ctx.append(background)
