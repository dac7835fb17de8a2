"""The one aiohttp application of the cloud side: health, readiness, metrics and the join API.

Later parts (tunnel endpoint, REST API, kube proxy, console) mount their routes here.
``bootstrap()`` prepares the data dir (CA, serving certificate, store, admin token) before
the application is built; ``store_changes()`` is what a session watcher polls to cut off a
node revoked by the CLI in another process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import prometheus_client
from aiohttp import web

from tunnel_server import __version__, api, audit, console, status, tunnel
from tunnel_server import identity as identity_part
from tunnel_server import twins as twins_part
from tunnel_server.api import sso_api, sso_openapi, users_api, users_openapi
from tunnel_server.app_keys import AUTHORITY_KEY, READY_KEY, REGISTRY_KEY, SETTINGS_KEY, STORE_KEY
from tunnel_server.fleet import autonomy as autonomy_part
from tunnel_server.fleet import (
    cluster_proxy,
    clusters_api,
    clusters_openapi,
    elastic_openapi,
    elastic_view,
)
from tunnel_server.fleet import egress as egress_part
from tunnel_server.fleet import gateway as gateway_part
from tunnel_server.fleet.hub import openapi as fleet_openapi
from tunnel_server.fleet.hub import setup as fleet_hub
from tunnel_server.fleet.hub.controller import setup_controller
from tunnel_server.fleet.hub.gitsource import setup_gitsource
from tunnel_server.fleet.hub.stream import setup_stream
from tunnel_server.identity import tokens
from tunnel_server.identity.pki import CertificateAuthority
from tunnel_server.settings import ServerSettings
from tunnel_server.store import SqliteStore, Store
from tunnel_server.twins import models_api, models_openapi, telemetry_api
from tunnel_server.web import peer_log
from tunnel_server.web.bodies import bounded_bodies

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tunnel_server.kubestore.settings import KubeStoreSettings

log = logging.getLogger("tunnel_server.app")


@dataclass(frozen=True, kw_only=True)
class ServerIdentity:
    """The CA and the store of one data dir, ready to serve."""

    authority: CertificateAuthority
    store: Store
    kube: KubeStoreSettings | None = None
    """Set with the Kubernetes store: the replicas' Leases live beside its objects."""


def bootstrap(
    settings: ServerSettings, *, kube_store: KubeStoreSettings | None = None
) -> ServerIdentity:
    """First start creates the CA, store and admin token; every start refreshes the serving cert.

    With ``kube_store`` the store is the Kubernetes API (docs/ha.md) and the CA is the one
    kept in its Secret, shared by every replica (the first replica to start makes it).
    """
    store: Store
    if kube_store is None:
        authority = CertificateAuthority.load_or_create(settings.data_dir, settings=settings.pki)
        store = SqliteStore.open(settings.data_dir)
    else:
        # Imported here: the client costs about a second of imports a SQLite server never needs.
        from tunnel_server.kubestore.store import KubeStore  # noqa: PLC0415

        store = kube = KubeStore.open(kube_store)
        shared = kube.fetch_ca(settings.data_dir)
        authority = CertificateAuthority.load_or_create(settings.data_dir, settings=settings.pki)
        if not shared and not kube.publish_ca(settings.data_dir):  # another replica's came first
            authority = CertificateAuthority.load(settings.data_dir, settings=settings.pki)
    authority.ensure_serving_certificate(public_name=settings.public_name)
    tokens.ensure_admin_token(store, settings.data_dir, now=time.time())
    store.set_meta("public_url", f"https://{_host_for_url(settings.public_name)}:{settings.port}")
    return ServerIdentity(authority=authority, store=store, kube=kube_store)


def _host_for_url(name: str) -> str:
    return f"[{name}]" if ":" in name else name


async def store_changes(store: Store, *, interval: float) -> AsyncIterator[int]:
    """Yield the store's revision each time it moves (checked every ``interval`` seconds)."""
    seen = store.revision()
    while True:
        await asyncio.sleep(interval)
        current = store.revision()
        if current != seen:
            seen = current
            yield current


async def healthz(_request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: every part that registered a readiness flag reports ready."""
    flags = request.app[READY_KEY]
    waiting = sorted(name for name, ok in flags.items() if not ok)
    replica = _replica_status(request.app)
    if waiting:
        body = {"status": "starting", "waiting_for": waiting, **replica}
        return web.json_response(body, status=503)
    return web.json_response({"status": "ok", **replica})


def _replica_status(app: web.Application) -> dict[str, Any]:
    """With the Kubernetes store: this replica's name, whether it leads, the replicas alive."""
    if "replicas" not in app[READY_KEY]:
        return {}
    # Imported here: only a server on the Kubernetes store has set it up (see create_app).
    from tunnel_server.replicas.service import REPLICAS_KEY  # noqa: PLC0415

    return app[REPLICAS_KEY].status()


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this server's own registry."""
    body = prometheus_client.generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def openapi_paths() -> dict[str, Any]:
    """Every part's routes for ``/api/openapi.json`` besides the API's own (one entry per part)."""
    parts: list[dict[str, Any]] = [
        twins_part.OPENAPI_PATHS,
        clusters_openapi.OPENAPI_PATHS,
        elastic_openapi.OPENAPI_PATHS,
        audit.OPENAPI_PATHS,
        models_openapi.OPENAPI_PATHS,
        users_openapi.OPENAPI_PATHS,
        sso_openapi.OPENAPI_PATHS,
        fleet_openapi.OPENAPI_PATHS,
    ]
    merged: dict[str, Any] = {}
    for paths in parts:
        for path, operations in paths.items():
            if path in merged:
                raise ValueError(f"OpenAPI path {path} is described twice")
            merged[path] = operations
    return merged


def create_app(
    settings: ServerSettings,
    *,
    identity: ServerIdentity | None = None,
    gateway_router: gateway_part.Router | None = None,
) -> web.Application:
    """The application; with ``identity`` also the CA, join API, tunnel, proxy, API, console.

    With ``settings.gateway.listen`` the gateway's listener runs along, routed by
    ``gateway_router`` (default: the fleet's MultiClusterRoute objects, through
    ``fleet/gateway/fleet_router.py``).
    """
    app = web.Application(
        client_max_size=1024 * 1024,
        middlewares=[bounded_bodies],
        handler_args={"logger": peer_log.ServerLog()},
    )
    registry = prometheus_client.CollectorRegistry()
    # The operator's first look (memory, CPU, open files, GC): Linux /proc and the interpreter.
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    info = prometheus_client.Info("tunnel_server_build", "Build of this server", registry=registry)
    info.info({"version": __version__})
    app[SETTINGS_KEY] = settings
    app[REGISTRY_KEY] = registry
    app[READY_KEY] = {"http": True}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if identity is not None:
        app[STORE_KEY] = identity.store
        app[AUTHORITY_KEY] = identity.authority
        identity_part.setup(app, settings=settings.join)
        tunnel.setup(app, tunnel_settings=settings.tunnel)
        twins_part.setup(app)
        models_api.setup(app)
        telemetry_api.setup(app)
        status.setup(app)
        api.setup(app, openapi_paths=openapi_paths())
        audit.setup(app)
        cluster_proxy.setup(app, settings=settings.cluster_proxy)
        clusters_api.setup(app)
        elastic_view.setup(app)
        fleet_hub.setup(app, data_dir=settings.data_dir)
        setup_stream(app)
        setup_gitsource(app)
        setup_controller(app)
        users_api.setup(app)
        console.setup(app)
        sso_api.setup(app, config_path=settings.sso_config)
        if settings.egress.uds_path is not None or settings.egress.listen is not None:
            egress_part.setup(app, settings=settings.egress)
        if settings.autonomy.enabled:
            autonomy_part.setup(app, settings=settings.autonomy)
        if settings.gateway.listen is not None:
            gateway_part.setup(app, settings=settings.gateway, router=gateway_router)
        if identity.kube is not None:
            # Imported here: its Kubernetes client costs a second a SQLite server never needs.
            from tunnel_server.replicas import service as replicas_part  # noqa: PLC0415

            replicas_part.setup(
                app, settings=settings.replicas, kube=identity.kube, port=settings.port
            )
    return app
