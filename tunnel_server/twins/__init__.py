"""Device twins in the cloud: the twin store, the agents' ``twins`` sync stream, the REST API.

``setup(app)`` (after ``tunnel.setup``) opens the store, registers the ``twins``
agent service and the routes under ``/api/v1/devices``, and exports counters on /metrics.
When the server stops, waiting long-polls are answered at once (``CloudTwinReplica.end_waits``).
``OPENAPI_PATHS`` describes the routes for the server's OpenAPI document.

docs/twins.md describes the API and the sync stream's protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon_support.twin_database import Durability
from tunnel_aio import TunnelStream
from tunnel_server.app_keys import (
    AGENT_SERVICES_KEY,
    DEVICES_KEY,
    REGISTRY_KEY,
    SETTINGS_KEY,
    TWINS_KEY,
    TWINS_SYNC_KEY,
)
from tunnel_server.audit.recorder import AUDIT_LOG_KEY
from tunnel_server.tunnel.sessions import AgentSession
from tunnel_server.twins.api import add_routes, device_summary
from tunnel_server.twins.models import load_models
from tunnel_server.twins.openapi import OPENAPI_PATHS
from tunnel_server.twins.service import CloudTwinReplica
from tunnel_server.twins.settings import CloudTwinsSettings
from tunnel_server.twins.store import TwinStore
from tunnel_server.twins.sync import EdgeTwinLinks, RequestMetrics

__all__ = [
    "OPENAPI_PATHS",
    "SYNC_TARGET",
    "TWINS_KEY",
    "TWINS_SYNC_KEY",
    "CloudTwinReplica",
    "CloudTwinsSettings",
    "Durability",
    "setup",
]

SYNC_TARGET = "twins"
"""The agent-service target name of the sync stream."""


async def _serve_sync(stream: TunnelStream, session: AgentSession, app: web.Application) -> None:
    await app[TWINS_SYNC_KEY].serve(stream, session)


class _Metrics(Collector):
    def __init__(self, cloud: CloudTwinReplica) -> None:
        self._cloud = cloud

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters = self._cloud.counters
        records = CounterMetricFamily(
            "tunnel_server_twins_records", "Outbox records from agents", labels=["result"]
        )
        records.add_metric(["applied"], counters.records_applied)
        records.add_metric(["duplicate"], counters.records_duplicate)
        records.add_metric(["rejected"], counters.records_rejected)
        yield records
        yield CounterMetricFamily(
            "tunnel_server_twins_batches", "Outbox batches committed", value=counters.batches
        )
        changes = CounterMetricFamily(
            "tunnel_server_twins_edge_changes", "Twin changes from agents", labels=["result"]
        )
        changes.add_metric(["applied"], counters.changes_applied)
        changes.add_metric(["duplicate"], counters.changes_duplicate)
        yield changes
        downlink = CounterMetricFamily(
            "tunnel_server_twins_cloud_changes", "Twin changes for agents", labels=["state"]
        )
        downlink.add_metric(["queued"], counters.downlink_queued)
        downlink.add_metric(["acknowledged"], counters.downlink_acked)
        downlink.add_metric(["failed"], counters.downlink_failed)
        yield downlink
        yield GaugeMetricFamily(
            "tunnel_server_twins_long_polls",
            "Twin long-polls waiting now",
            value=self._cloud.waiters,
        )


def setup(app: web.Application, *, settings: CloudTwinsSettings | None = None) -> None:
    """Open the twin store and mount the routes and the ``twins`` agent service.

    Call after ``tunnel.setup`` (which creates the agent-service table) with the
    server's settings, store and registry keys set, as ``create_app`` does.
    """
    if AGENT_SERVICES_KEY not in app:
        raise RuntimeError("twins.setup(app) must come after tunnel.setup(app)")
    settings = settings or CloudTwinsSettings()
    data_dir = app[SETTINGS_KEY].data_dir
    store = TwinStore(
        settings.database or data_dir / "twins.sqlite3",
        durability=settings.durability,
        cache_devices=settings.cache_devices,
        max_dead_letters=settings.max_dead_letters,
    )
    cloud = CloudTwinReplica(
        store=store,
        models=load_models(settings.models_dir or data_dir / "models"),
        settings=settings,
        registry=app[REGISTRY_KEY],
    )
    links = EdgeTwinLinks(cloud)
    app[TWINS_KEY] = cloud
    app[TWINS_SYNC_KEY] = links
    app[AGENT_SERVICES_KEY][SYNC_TARGET] = _serve_sync
    add_routes(app)
    app[REGISTRY_KEY].register(_Metrics(cloud))
    app[REGISTRY_KEY].register(RequestMetrics(links.request_counters))

    async def bind_audit(app: web.Application) -> None:
        # Agents' desired requests and edge desired writes are audited in the log the API's
        # writes go to; the audit part is set up after this one, so it is bound at start.
        links.audit = app.get(AUDIT_LOG_KEY)

    app.on_startup.append(bind_audit)

    def node_devices(node: str) -> list[dict[str, Any]]:
        """The node page's device table: the first ``page_limit`` devices of ``node``."""
        rows = store.list_devices(node=node, after=None, limit=settings.page_limit)
        return [device_summary(row) for row in rows]

    app[DEVICES_KEY] = node_devices

    async def end_long_polls(_app: web.Application) -> None:
        # on_shutdown runs before aiohttp drains the open requests: a long-poll waiting 30 s
        # would hold the drain (and SIGTERM) otherwise. Like the live events' end_streams.
        cloud.end_waits()

    app.on_shutdown.append(end_long_polls)

    async def close(_app: web.Application) -> None:
        store.close()

    app.on_cleanup.append(close)
