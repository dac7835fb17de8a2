"""The agent's own API on loopback: /healthz, /readyz, /metrics, /status, twins.

With device twins enabled it also gives a read-only view of the edge's twins: ``GET /twins``
(device ids) and ``GET /twins/{device}`` (the edge replica of one twin).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Protocol

import prometheus_client
import psutil
from aiohttp import web

from edge_agent import __version__

StatusSource = Callable[[], dict[str, object]]


class TwinReader(Protocol):
    """Read-only access to the edge's twins (the twins part implements it)."""

    def device_ids(self) -> list[str]: ...

    def twin(self, device_id: str) -> dict[str, object] | None: ...


REGISTRY_KEY = web.AppKey("registry", prometheus_client.CollectorRegistry)
SOURCES_KEY = web.AppKey("status_sources", dict[str, StatusSource])
STARTED_KEY = web.AppKey("started", float)
READY_KEY = web.AppKey("ready", dict[str, bool])
TWINS_KEY = web.AppKey("twins", TwinReader)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    waiting = sorted(name for name, ok in request.app[READY_KEY].items() if not ok)
    if waiting:
        return web.json_response({"status": "starting", "waiting_for": waiting}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = prometheus_client.generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    """What an operator on the box wants first: version, uptime, and the machine's load."""
    memory = psutil.virtual_memory()
    return web.json_response(
        {
            "version": __version__,
            "hostname": platform.node(),
            "agent_uptime_seconds": round(time.monotonic() - request.app[STARTED_KEY], 1),
            "boot_time": psutil.boot_time(),
            "cpu_count": psutil.cpu_count(),
            "load_average": list(psutil.getloadavg()),
            "memory": {"total_bytes": memory.total, "available_bytes": memory.available},
            "ready": request.app[READY_KEY],
            **{name: source() for name, source in request.app[SOURCES_KEY].items()},
        }
    )


async def list_twins(request: web.Request) -> web.Response:
    """The ids of the devices this agent serves."""
    return web.json_response({"devices": request.app[TWINS_KEY].device_ids()})


async def get_twin(request: web.Request) -> web.Response:
    """The edge replica of one device's twin: desired, reported (with versions, metadata)."""
    device = request.match_info["device"]
    twin = request.app[TWINS_KEY].twin(device)
    if twin is None:
        return web.json_response(
            {"error": "device_not_found", "message": f"this agent serves no device {device!r}"},
            status=404,
        )
    return web.json_response(twin)


def create_app(
    *,
    registry: prometheus_client.CollectorRegistry | None = None,
    sources: dict[str, StatusSource] | None = None,
    twins: TwinReader | None = None,
) -> web.Application:
    """The local API.

    ``sources`` add sections to /status (for example ``tunnel``); ``twins`` adds the read-only
    twin routes.
    """
    app = web.Application(client_max_size=64 * 1024)
    registry = registry or prometheus_client.CollectorRegistry()
    prometheus_client.Info("edge_agent_build", "Build of this agent", registry=registry).info(
        {"version": __version__}
    )
    app[REGISTRY_KEY] = registry
    app[SOURCES_KEY] = dict(sources or {})
    app[STARTED_KEY] = time.monotonic()
    app[READY_KEY] = {"local_api": True}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    if twins is not None:
        app[TWINS_KEY] = twins
        app.router.add_get("/twins", list_twins)
        app.router.add_get("/twins/{device}", get_twin)
    return app
