"""REST routes of device twins: list and show devices, read and patch twins.

- Every call needs ``Authorization: Bearer <token>`` (the admin token, a user token or a console
  session), checked by the REST API's ``access.require``: reads need any role, writes (PATCH
  of desired, move) operator or admin (docs/security.md). Devices are node-level: no scope.
- A device's id is ``<node>:<device>``: device ids are unique per node, not across the fleet,
  and a node can only ever write its own devices. A bare device id is accepted when exactly
  one node has it.
- ``PATCH .../twin`` takes ``{"desired": <merge patch>}``; a ``$version`` inside ``desired``
  makes the write conditional (409 when it is not the current version). Reported is the
  edge's and cannot be written here.
- ``POST .../move`` takes ``{"node": <target>}`` and moves the device to another node on its
  broker (202; the handover happens on the site, docs/twins.md "Moving a device").
- Errors are ``{"error": <stable code>, "message": ..., "problems": [{"path", "reason"}]}``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from device_models import (
    DeviceModelsError,
    JsonObject,
    LimitExceededError,
    Section,
    ValidationError,
    VersionConflictError,
)
from tunnel_server.api import access
from tunnel_server.app_keys import TWINS_KEY
from tunnel_server.twins.service import (
    DEVICE_ID,
    CloudTwinReplica,
    DeviceRemovedError,
    ModelUnknownError,
    MovePendingError,
    QueueFullError,
    SameNodeError,
    UnknownDeviceError,
)
from tunnel_server.twins.store import DeviceKey, DeviceRow
from tunnel_server.web.bodies import read_json_object
from tunnel_server.web.errors import ApiError

__all__ = ["TWINS_KEY", "add_routes", "device_json", "twin_json"]

log = logging.getLogger("tunnel_server.twins.api")

_NODE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_PATCH_TYPES = frozenset({"application/json", "application/merge-patch+json"})
_BODY_DEPTH = 16


def _ok(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, headers=_SECURITY_HEADERS)


def _cloud(request: web.Request) -> CloudTwinReplica:
    return request.app[TWINS_KEY]


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
    keys = _cloud(request).resolve(device_id)
    if not keys:
        raise ApiError(404, "device_not_found", f"no device {device_id!r}: see GET /api/v1/devices")
    if len(keys) > 1:
        candidates = [f"{node}:{device}" for node, device in keys]
        raise ApiError(
            409,
            "ambiguous_device",
            f"{device_id!r} exists on several nodes; name one as <node>:<device>",
            extra={"candidates": [*candidates]},
        )
    return keys[0]


def _row(request: web.Request, key: DeviceKey) -> DeviceRow:
    row = _cloud(request).device(key)
    if row is None:
        raise ApiError(404, "device_not_found", f"no device {key[0]}:{key[1]}")
    return row


def device_json(row: DeviceRow, *, pending: int, move_to: str | None = None) -> JsonObject:
    twin = row.replica.twin
    return {
        "id": row.id,
        "node": row.node,
        "device": row.device,
        "model": row.model,
        "modelVersion": row.model_version,
        "state": str(row.state),
        "createdAt": row.created,
        "updatedAt": row.updated,
        "availability": row.availability,
        "availabilityAt": row.availability_at,
        "desiredVersion": twin.desired.version,
        "reportedVersion": twin.reported.version,
        "pendingDesired": pending,
        "edgeOrigin": row.edge_origin,
        "lastRejected": row.last_rejected,
        "syncError": row.sync_error,
        "moveTo": move_to,
    }


def twin_json(row: DeviceRow) -> JsonObject:
    twin = row.replica.twin
    document = twin.to_json()
    return {
        "id": row.id,
        "desired": document["desired"],
        "reported": document["reported"],
        "delta": twin.delta(),
    }


# ---------------------------------------------------------------------- handlers


async def _guarded(
    request: web.Request,
    handler: Any,  # noqa: ANN401 - any handler
    verb: access.Verb = "read",
) -> web.StreamResponse:
    try:
        access.require(request, verb)  # as everywhere in /api
        response: web.StreamResponse = await handler(request)
    except ApiError as error:  # BodyError too
        return error.response()
    return response


async def list_devices(request: web.Request) -> web.StreamResponse:
    return await _guarded(request, _list_devices)


async def _list_devices(request: web.Request) -> web.Response:
    cloud = _cloud(request)
    node = request.query.get("node")
    if node is not None and not _NODE.fullmatch(node):
        raise ApiError(400, "bad_query", "node must be a node name")
    limit = _int_query(request, "limit", default=100, low=1, high=cloud.settings.page_limit)
    after: DeviceKey | None = None
    if (text := request.query.get("after")) is not None:
        after_node, sep, after_device = text.rpartition(":")
        if not sep or len(text) > 200:
            raise ApiError(400, "bad_query", "after must be a <node>:<device> id from 'next'")
        after = (after_node, after_device)
    rows = cloud.store.list_devices(node=node, after=after, limit=limit + 1)
    more = len(rows) > limit
    items = [{"id": f"{row['node']}:{row['device']}", **row} for row in rows[:limit]]
    next_id = items[-1]["id"] if more and items else None
    return _ok({"items": items, "next": next_id})


async def get_device(request: web.Request) -> web.StreamResponse:
    return await _guarded(request, _get_device)


async def _get_device(request: web.Request) -> web.Response:
    key = _key(request)
    row = _row(request, key)
    store = _cloud(request).store
    pending = store.downlink_count(key[0], key[1])
    return _ok(device_json(row, pending=pending, move_to=store.pending_move(key)))


async def get_twin(request: web.Request) -> web.StreamResponse:
    return await _guarded(request, _get_twin)


async def _get_twin(request: web.Request) -> web.Response:
    cloud = _cloud(request)
    key = _key(request)
    wait = _float_query(request, "wait", high=cloud.settings.max_wait)
    waits = [
        (section, _int_query(request, f"{section}Version", default=-1, low=0, high=2**62))
        for section in (Section.DESIRED, Section.REPORTED)
    ]
    wanted = {section: version for section, version in waits if version >= 0}
    if wait > 0 and wanted:
        try:
            await cloud.wait_version(key, wanted, within=wait)
        except QueueFullError as error:
            raise ApiError(503, "busy", str(error), headers={"Retry-After": "1"}) from None
    response = _ok(twin_json(_row(request, key)))
    if cloud.stopping:
        # Ended early by the shutdown: the twin as it is, and no next request on this link.
        response.force_close()
    return response


async def patch_twin(request: web.Request) -> web.StreamResponse:
    return await _guarded(request, _patch_twin, "write")


async def _patch_twin(request: web.Request) -> web.Response:
    cloud = _cloud(request)
    key = _key(request)
    body = await _read_body(request, cloud.settings.max_body_bytes)
    unknown = sorted(name[:64] for name in body if name != "desired")
    if "reported" in body:
        raise ApiError(
            400, "read_only_section", "reported belongs to the device (the edge); patch desired"
        )
    if unknown or not isinstance(body.get("desired"), dict):
        raise ApiError(
            400,
            "bad_request",
            'the body is {"desired": <JSON merge patch>} with an optional "$version" inside',
        )
    patch = dict(body["desired"])
    expected = patch.pop("$version", None)
    if "$version" in body["desired"] and (
        isinstance(expected, bool) or not isinstance(expected, int) or expected < 0
    ):
        # null too: a client that sent a version meant a conditional write, never "any".
        raise ApiError(400, "bad_request", "desired.$version must be an integer >= 0")
    try:
        row = cloud.write(key, Section.DESIRED, patch, expected_version=expected)
    except (
        DeviceModelsError,
        UnknownDeviceError,
        DeviceRemovedError,
        ModelUnknownError,
        QueueFullError,
    ) as error:
        raise _write_error(error, key) from None
    log.info(
        "twins: desired of %s patched to $version %s", row.id, row.replica.twin.desired.version
    )
    return _ok(twin_json(row))


async def move_device(request: web.Request) -> web.StreamResponse:
    return await _guarded(request, _move_device, "write")


async def _move_device(request: web.Request) -> web.Response:
    cloud = _cloud(request)
    key = _key(request)
    body = await _read_body(request, cloud.settings.max_body_bytes)
    target = body.get("node")
    if set(body) != {"node"} or not isinstance(target, str) or not _NODE.fullmatch(target):
        raise ApiError(400, "bad_request", 'the body is {"node": <the node to move it to>}')
    try:
        cloud.move(key, target)
    except SameNodeError as error:
        raise ApiError(409, "same_node", str(error)) from None
    except MovePendingError as error:
        raise ApiError(409, "move_pending", str(error)) from None
    except (UnknownDeviceError, DeviceRemovedError, QueueFullError) as error:
        raise _write_error(error, key) from None
    row = _row(request, key)
    pending = cloud.store.downlink_count(key[0], key[1])
    answer = device_json(row, pending=pending, move_to=target)
    return web.json_response(answer, status=202, headers=_SECURITY_HEADERS)


# ---------------------------------------------------------------------- helpers


def _write_error(error: Exception, key: DeviceKey) -> ApiError:  # noqa: PLR0911 - one flat table
    """The answer for a refused write."""
    if isinstance(error, VersionConflictError):
        return ApiError(
            409,
            "version_conflict",
            f"desired is at $version {error.actual}, not {error.expected}: read it and retry",
            problems=error.problems,
            extra={"currentVersion": error.actual},
        )
    if isinstance(error, ValidationError):
        return ApiError(400, "invalid_value", error.summary, problems=error.problems)
    if isinstance(error, LimitExceededError):
        return ApiError(413, "too_large", error.summary, problems=error.problems)
    if isinstance(error, DeviceModelsError):
        return ApiError(400, "bad_request", error.summary, problems=error.problems)
    if isinstance(error, UnknownDeviceError):
        return ApiError(404, "device_not_found", f"no device {key[0]}:{key[1]}")
    if isinstance(error, DeviceRemovedError):
        return ApiError(409, "device_removed", f"{error}: it must be onboarded again")
    if isinstance(error, ModelUnknownError):
        return ApiError(
            422,
            "model_unknown",
            f"model {error} is not loaded in the cloud, so the patch cannot be validated: add"
            " its YAML to the server's models folder",
        )
    return ApiError(503, "queue_full", f"{error}; retry later", headers={"Retry-After": "30"})


async def _read_body(request: web.Request, limit: int) -> dict[str, Any]:
    content_type = request.content_type
    if request.headers.get("Content-Type") and content_type not in _PATCH_TYPES:
        raise ApiError(
            415, "unsupported_media_type", "send application/json or application/merge-patch+json"
        )
    return await read_json_object(request, limit=limit, max_depth=_BODY_DEPTH)


def _int_query(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, "bad_query", f"{name} must be an integer in {low}..{high}")
    return int(text)


def _float_query(request: web.Request, name: str, *, high: float) -> float:
    text = request.query.get(name)
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= high:
        raise ApiError(400, "bad_query", f"{name} must be seconds in 0..{high}")
    return value


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/devices", list_devices)
    app.router.add_get("/api/v1/devices/{id}", get_device)
    app.router.add_get("/api/v1/devices/{id}/twin", get_twin)
    app.router.add_patch("/api/v1/devices/{id}/twin", patch_twin)
    app.router.add_post("/api/v1/devices/{id}/move", move_device)
