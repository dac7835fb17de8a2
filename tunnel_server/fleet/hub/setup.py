"""``setup(app)``: the hub-managed fleet's store, wake-ups and REST API in the application.

Opens ``<data>/fleet.db``, puts the ``FleetHub`` at ``app[FLEET_HUB_KEY]`` (every part of the
fleet hub writes through it), mounts ``/api/v1/fleet/...`` and closes the store on cleanup.
The routes' OpenAPI paths are ``openapi.OPENAPI_PATHS``, listed with every part's in
``tunnel_server.app.openapi_paths``.
``FleetSettings`` come from the caller, with ``EDGEFLEET_FLEET_*`` variables applied on top.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from aiohttp import web

from tunnel_server.app_keys import FLEET_HUB_KEY
from tunnel_server.fleet.hub import api
from tunnel_server.fleet.hub.hub import FleetHub, FleetSettings, from_environment
from tunnel_server.fleet.hub.leases import Lease
from tunnel_server.fleet.hub.store import FleetEvents
from tunnel_server.fleet.hub.store_sqlite import SqliteFleetStore

__all__ = ["FleetHub", "FleetSettings", "Lease", "open_hub", "setup"]

log = logging.getLogger("tunnel_server.fleet.hub")


def open_hub(data_dir: Path, settings: FleetSettings) -> FleetHub:
    """The hub on ``<data_dir>/fleet.db`` (created 0600 on first use)."""
    store = SqliteFleetStore.open(data_dir, changes_kept=settings.changes_kept)
    events = FleetEvents(store.revision, poll_interval=settings.poll_interval)
    return FleetHub(store=store, events=events, settings=settings)


def setup(
    app: web.Application, *, data_dir: Path, settings: FleetSettings | None = None
) -> FleetHub:
    """Open the store, put the hub, mount the routes; the store closes on cleanup."""
    settings = from_environment(os.environ, settings)
    hub = open_hub(data_dir, settings)
    app[FLEET_HUB_KEY] = hub
    api.add_routes(app, hub=hub)
    log.info(
        "fleet store open",
        extra={"kv": {"revision": hub.store.revision(), "changes_kept": settings.changes_kept}},
    )

    async def close(_app: web.Application) -> None:
        hub.store.close()

    app.on_cleanup.append(close)
    return hub
