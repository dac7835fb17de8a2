"""``GET /api/v1/devices/{id}/telemetry``: a device property's per-minute history.

Query: ``property`` (required; a numeric property, nested members dotted) and
``windowSeconds`` (60..the retention, default 3600). Any role may read; devices are node-level,
so there is no cluster scope. docs/api.md ("Device models and telemetry") has the shape.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from device_models import DeviceModel, PropertySpec, PropertyType
from tunnel_server.api import access
from tunnel_server.api.views import iso
from tunnel_server.app_keys import SETTINGS_KEY, TWINS_KEY
from tunnel_server.twins.service import DEVICE_ID
from tunnel_server.twins.store import DeviceKey
from tunnel_server.twins.telemetry import (
    TELEMETRY_FILE,
    TelemetryHistory,
    TelemetryPoint,
    TelemetrySettings,
)
from tunnel_server.web.errors import ApiError

__all__ = ["DEFAULT_WINDOW", "MIN_WINDOW", "PROPERTY_PATTERN", "TELEMETRY_KEY", "setup"]

TELEMETRY_KEY = web.AppKey("telemetry_history", TelemetryHistory)

_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_NODE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
PROPERTY_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,5}"
"""A property path: identifiers (as in models), dotted for nested members."""
_PROPERTY = re.compile(PROPERTY_PATTERN)
MIN_WINDOW = 60
DEFAULT_WINDOW = 3600
STEP = 60
_NUMBERS = (PropertyType.INT, PropertyType.FLOAT)


def _key(request: web.Request) -> DeviceKey:
    device_id = request.match_info["id"]
    node, sep, device = device_id.rpartition(":")
    if (
        len(device_id) > 200
        or not DEVICE_ID.fullmatch(device)
        or (sep and not _NODE.fullmatch(node))
    ):
        raise ApiError(
            400,
            "bad_device_id",
            "a device id is <node>:<device> (or a device id unique in the fleet)",
        )
    keys = request.app[TWINS_KEY].resolve(device_id)
    if not keys:
        raise ApiError(404, "device_not_found", f"no device {device_id!r}: see GET /api/v1/devices")
    if len(keys) > 1:
        raise ApiError(
            409,
            "ambiguous_device",
            f"{device_id!r} exists on several nodes; name one as <node>:<device>",
            extra={"candidates": [f"{n}:{d}" for n, d in keys]},
        )
    return keys[0]


def _spec(model: DeviceModel | None, path: str) -> PropertySpec | None:
    if model is None:
        return None
    first, *rest = path.split(".")
    spec = model.property(first)
    for name in rest:
        spec = spec.member(name) if spec is not None else None
    return spec


def _window(request: web.Request, retention: float) -> int:
    raw = request.query.get("windowSeconds")
    if raw is None:
        return DEFAULT_WINDOW
    most = int(retention)
    if not raw.isdigit() or not MIN_WINDOW <= int(raw) <= most:
        raise ApiError(
            400,
            "bad_parameter",
            f"query parameter 'windowSeconds' must be an integer {MIN_WINDOW}..{most}",
        )
    return int(raw)


def _point(point: TelemetryPoint) -> dict[str, Any]:
    return {
        "at": iso(point.minute),
        "mean": point.mean,
        "min": point.minimum,
        "max": point.maximum,
        "last": point.last,
        "samples": point.samples,
    }


async def get_telemetry(request: web.Request) -> web.Response:
    access.require(request, "read")
    history = request.app[TELEMETRY_KEY]
    key = _key(request)
    prop = request.query.get("property")
    if prop is None or not _PROPERTY.fullmatch(prop):
        raise ApiError(
            400,
            "bad_parameter",
            "query parameter 'property' must name a numeric property, nested members dotted "
            "(property=temperature, property=schedule.comfort)",
        )
    window = _window(request, history.settings.retention)
    cloud = request.app[TWINS_KEY]
    row = cloud.device(key)
    spec = _spec(cloud.models.get(row.model) if row is not None else None, prop)
    numeric = spec is not None and spec.type in _NUMBERS
    if not numeric and not history.has_series(key, prop):
        raise ApiError(
            404,
            "property_not_found",
            f"device {key[0]}:{key[1]} has no numeric property {prop!r}: see its model "
            "(GET /api/v1/device-models/{model}); only int and float properties have telemetry",
        )
    now = time.time()
    points = history.points(key, prop, since=now - window, until=now)
    body = {
        "device": f"{key[0]}:{key[1]}",
        "property": prop,
        "unit": spec.unit if spec is not None else None,
        "windowSeconds": window,
        "stepSeconds": STEP,
        "startAt": iso(now - window),
        "endAt": iso(now),
        "properties": history.properties(key),
        "points": [_point(point) for point in points],
    }
    return web.json_response(body, headers=_HEADERS)


async def _maintain(history: TelemetryHistory) -> None:
    settings = history.settings
    next_prune = 0.0
    while True:
        await asyncio.sleep(settings.flush_interval)
        history.flush()
        now = time.time()
        if now >= next_prune:
            history.prune(now)
            next_prune = now + settings.prune_interval


def setup(app: web.Application, *, settings: TelemetrySettings | None = None) -> None:
    """The history, its observer on the twins part, its route and its flush task.

    Call after ``twins.setup``.
    """
    if TWINS_KEY not in app:
        raise RuntimeError("telemetry_api.setup(app) must come after twins.setup(app)")
    history = TelemetryHistory(
        app[SETTINGS_KEY].data_dir / TELEMETRY_FILE, settings=settings or TelemetrySettings()
    )
    app[TELEMETRY_KEY] = history
    app[TWINS_KEY].reported_observers.append(history.observe)
    app.router.add_get("/api/v1/devices/{id}/telemetry", get_telemetry)

    async def background(_app: web.Application) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(_maintain(history), name="twins.telemetry-maintain")
            yield
            task.cancel()
        history.close()

    app.cleanup_ctx.append(background)
