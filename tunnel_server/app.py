"""The one aiohttp application of the cloud side: health, readiness and metrics endpoints.

Later parts (tunnel endpoint, REST API, kube proxy, console) mount their routes here.
"""

from __future__ import annotations

import logging

import prometheus_client
from aiohttp import web

from tunnel_server import __version__
from tunnel_server.settings import ServerSettings

log = logging.getLogger("tunnel_server.app")

SETTINGS_KEY = web.AppKey("settings", ServerSettings)
REGISTRY_KEY = web.AppKey("registry", prometheus_client.CollectorRegistry)
READY_KEY = web.AppKey("ready", dict[str, bool])


async def healthz(_request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: every part that registered a readiness flag reports ready."""
    flags = request.app[READY_KEY]
    waiting = sorted(name for name, ok in flags.items() if not ok)
    if waiting:
        return web.json_response({"status": "starting", "waiting_for": waiting}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this server's own registry."""
    body = prometheus_client.generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def create_app(settings: ServerSettings) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    registry = prometheus_client.CollectorRegistry()
    info = prometheus_client.Info("tunnel_server_build", "Build of this server", registry=registry)
    info.info({"version": __version__})
    app[SETTINGS_KEY] = settings
    app[REGISTRY_KEY] = registry
    app[READY_KEY] = {"http": True}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
