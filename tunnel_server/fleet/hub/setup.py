"""``setup(app)``: the hub-managed fleet's store, wake-ups and REST API in the application.

Opens ``<data>/fleet.db`` — or, when the server's store is the Kubernetes store (``--store
kubernetes``), the fleet's custom resources in the same namespace (``store_kube``: every replica
sees the same objects) —, puts the ``FleetHub`` at ``app[FLEET_HUB_KEY]`` (every part of the
fleet hub writes through it), mounts ``/api/v1/fleet/...`` and closes the store on cleanup.
With the Kubernetes store, a change another replica made wakes this one's ``FleetEvents`` (the
store's watch thread hands ``notify`` to the loop), and the fleet's singletons (controller,
GitSource syncer, autonomy controller) run on the leader only (``replicas.keys.singleton``).
The routes' OpenAPI paths are ``openapi.OPENAPI_PATHS``, listed with every part's in
``tunnel_server.app.openapi_paths``.
``FleetSettings`` come from the caller, with ``EDGEFLEET_FLEET_*`` variables applied on top.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aiohttp import web

from tunnel_server.app_keys import FLEET_HUB_KEY, STORE_KEY
from tunnel_server.fleet.hub import api
from tunnel_server.fleet.hub.hub import FleetHub, FleetSettings, from_environment
from tunnel_server.fleet.hub.leases import Lease
from tunnel_server.fleet.hub.store import FleetEvents
from tunnel_server.fleet.hub.store_sqlite import SqliteFleetStore
from tunnel_server.kubestore.settings import KubeStoreSettings

__all__ = [
    "FleetHub",
    "FleetSettings",
    "Lease",
    "kube_settings",
    "open_hub",
    "open_kube_hub",
    "setup",
]

log = logging.getLogger("tunnel_server.fleet.hub")


def open_hub(data_dir: Path, settings: FleetSettings) -> FleetHub:
    """The hub on ``<data_dir>/fleet.db`` (created 0600 on first use)."""
    store = SqliteFleetStore.open(data_dir, changes_kept=settings.changes_kept)
    events = FleetEvents(store.revision, poll_interval=settings.poll_interval)
    return FleetHub(store=store, events=events, settings=settings)


def open_kube_hub(kube: KubeStoreSettings, settings: FleetSettings) -> FleetHub:
    """The hub on the fleet's custom resources in ``kube.namespace`` (``store_kube``)."""
    # Imported here: the client costs about a second of imports a SQLite server never needs.
    from tunnel_server.fleet.hub.store_kube import KubeFleetStore  # noqa: PLC0415

    store = KubeFleetStore.open(kube, changes_kept=settings.changes_kept)
    events = FleetEvents(store.revision, poll_interval=settings.poll_interval)
    return FleetHub(store=store, events=events, settings=settings)


def kube_settings(app: web.Application) -> KubeStoreSettings | None:
    """The Kubernetes store's settings when the server's store is the Kubernetes one."""
    found = getattr(app.get(STORE_KEY), "settings", None)
    return found if isinstance(found, KubeStoreSettings) else None


def setup(
    app: web.Application, *, data_dir: Path, settings: FleetSettings | None = None
) -> FleetHub:
    """Open the store, put the hub, mount the routes; the store closes on cleanup."""
    settings = from_environment(os.environ, settings)
    kube = kube_settings(app)
    hub = open_hub(data_dir, settings) if kube is None else open_kube_hub(kube, settings)
    app[FLEET_HUB_KEY] = hub
    api.add_routes(app, hub=hub)
    log.info(
        "fleet store open",
        extra={"kv": {"revision": hub.store.revision(), "changes_kept": settings.changes_kept}},
    )

    async def wake_on_watch(_app: web.Application) -> None:
        # Another replica's write arrives on the store's watch thread: notify on the loop's.
        loop = asyncio.get_running_loop()
        if hasattr(hub.store, "on_change"):
            hub.store.on_change = lambda: loop.call_soon_threadsafe(hub.events.notify)

    async def close(_app: web.Application) -> None:
        hub.store.close()

    app.on_startup.append(wake_on_watch)

    app.on_cleanup.append(close)
    return hub
