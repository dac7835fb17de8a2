"""REST routes of devices: list, show, register, remove, revoke, move; read and patch twins.

- Every call needs ``Authorization: Bearer <token>`` (the admin token, a user token or a console
  session), checked by the REST API's ``access.require``: reads need any role, writes
  (PATCH of desired, register, remove, revoke, move) operator or admin (docs/security.md).
  Devices are node-level: no cluster scope.
- A device's id is ``<node>:<device>``: device ids are unique per node, not across the fleet,
  and a node can only ever write its own devices. A bare device id is accepted when exactly
  one node has it.
- ``GET .../twin`` answers ``ETag: "<desired $version>"``; ``PATCH .../twin`` takes
  ``{"desired": <merge patch>}`` and honours ``If-Match`` (412 ``precondition_failed``); a
  ``$version`` inside ``desired`` makes the write conditional too (409 ``version_conflict``).
  Reported is the edge's and cannot be written here.
- Register, remove and revoke go to the node's agent as commands over its sync stream and
  wait for its answer (docs/twins.md, "Device lifecycle"): the node must be connected.
- Errors are RFC 9457 problem documents (``web.errors``); lists are ``api.paging``'s shape.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from typing import Any

from aiohttp import web

from device_models import (
    DeviceModelsError,
    JsonObject,
    LimitExceededError,
    Problem,
    Section,
    ValidationError,
    VersionConflictError,
)
from tunnel_server.api import access
from tunnel_server.api.paging import encode_continue, list_body, page_params
from tunnel_server.api.preconditions import check_if_match, etag
from tunnel_server.api.views import iso
from tunnel_server.app_keys import TWINS_KEY, TWINS_SYNC_KEY
from tunnel_server.twins.service import (
    DEVICE_ID,
    CloudTwinReplica,
    CommandOutcome,
    DeviceRemovedError,
    ModelUnknownError,
    MovePendingError,
    QueueFullError,
    SameNodeError,
    UnknownDeviceError,
)
from tunnel_server.twins.store import DeviceKey, DeviceRow, DeviceState
from tunnel_server.web.bodies import read_json_object
from tunnel_server.web.errors import ApiError

__all__ = ["TWINS_KEY", "add_routes", "device_json", "device_summary", "twin_json"]

log = logging.getLogger("tunnel_server.twins.api")

_NODE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
_MODEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_PATCH_TYPES = frozenset({"application/json", "application/merge-patch+json"})
_BODY_DEPTH = 16
_STATES = frozenset(str(state) for state in DeviceState)
_TWIN_CHOICES = ("keep", "delete")
CLAIM_SECRET_BYTES = 24
"""Random bytes of a registered device's claim secret (192 bits, 32 base64url characters)."""


def _ok(
    body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers={**_SECURITY_HEADERS, **(headers or {})})


def _cloud(request: web.Request) -> CloudTwinReplica:
    return request.app[TWINS_KEY]


def _parse_id(device_id: str) -> None:
    node, sep, device = device_id.rpartition(":")
    if (
        len(device_id) > 200
        or not DEVICE_ID.fullmatch(device)
        or (sep and not _NODE.fullmatch(node))
    ):
        raise ApiError(
            400,
            "bad_device_id",
            "a device id is <node>:<device> (or a device id unique in the fleet), e.g."
            " edge-7:thermostat-3",
        )


def _key(request: web.Request) -> DeviceKey:
    device_id = request.match_info["id"]
    _parse_id(device_id)
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


def _rejected_json(rejected: JsonObject | None) -> JsonObject | None:
    if rejected is None:
        return None
    out = {key: value for key, value in rejected.items() if key != "at"}
    at = rejected.get("at")
    out["rejectedAt"] = iso(float(at)) if isinstance(at, int | float) else None
    return out


def device_json(row: DeviceRow, *, pending: int, move_to: str | None = None) -> JsonObject:
    twin = row.replica.twin
    return {
        "id": row.id,
        "node": row.node,
        "device": row.device,
        "model": row.model,
        "modelVersion": row.model_version,
        "state": str(row.state),
        "createdAt": iso(row.created),
        "updatedAt": iso(row.updated),
        "availability": row.availability,
        "availabilityAt": iso(row.availability_at),
        "desiredVersion": twin.desired.version,
        "reportedVersion": twin.reported.version,
        "pendingDesired": pending,
        "edgeOrigin": row.edge_origin,
        "lastRejected": _rejected_json(row.last_rejected),
        "syncError": row.sync_error,
        "moveTo": move_to,
    }


def device_summary(row: dict[str, Any]) -> JsonObject:
    """A list item: ``TwinStore.list_devices``' row with its id and RFC 3339 times."""
    return {
        "id": f"{row['node']}:{row['device']}",
        **row,
        "createdAt": iso(row["createdAt"]),
        "updatedAt": iso(row["updatedAt"]),
        "availabilityAt": iso(row["availabilityAt"]),
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


def _twin_response(row: DeviceRow) -> web.Response:
    return _ok(twin_json(row), headers={"ETag": etag(row.replica.twin.desired.version)})


# ---------------------------------------------------------------------- handlers


async def list_devices(request: web.Request) -> web.Response:
    access.require(request, "read")
    cloud = _cloud(request)
    filters = {name: request.query.get(name) for name in ("node", "model", "state")}
    if filters["node"] is not None and not _NODE.fullmatch(filters["node"]):
        raise ApiError(400, "bad_parameter", "node must be a node name, e.g. ?node=edge-7")
    if filters["model"] is not None and not _MODEL.fullmatch(filters["model"]):
        raise ApiError(400, "bad_parameter", "model must be a model name, e.g. ?model=thermostat")
    if filters["state"] is not None and filters["state"] not in _STATES:
        raise ApiError(400, "bad_parameter", f"state must be one of {', '.join(sorted(_STATES))}")
    params = page_params(request, max_limit=cloud.settings.page_limit)
    after: DeviceKey | None = None
    if params.after is not None:
        if len(params.after) != 2 or not all(isinstance(part, str) for part in params.after):
            raise ApiError(400, "bad_continue", "the 'continue' token is not from this list")
        after = (str(params.after[0]), str(params.after[1]))
    rows = cloud.store.list_devices(after=after, limit=params.limit, **filters)
    token = None
    remaining = None
    if len(rows) == params.limit and rows:
        last = (str(rows[-1]["node"]), str(rows[-1]["device"]))
        remaining = cloud.store.count_listed(after=last, **filters)
        if remaining:
            token = encode_continue(last, scope=params.scope)
    return _ok(list_body([device_summary(row) for row in rows], token=token, remaining=remaining))


async def get_device(request: web.Request) -> web.Response:
    access.require(request, "read")
    key = _key(request)
    row = _row(request, key)
    store = _cloud(request).store
    pending = store.downlink_count(key[0], key[1])
    return _ok(device_json(row, pending=pending, move_to=store.pending_move(key)))


async def get_twin(request: web.Request) -> web.Response:
    access.require(request, "read")
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
            raise ApiError(
                503,
                "too_many_waits",
                f"{error}: poll without ?wait, or retry in a second",
                headers={"Retry-After": "1"},
            ) from None
    response = _twin_response(_row(request, key))
    if cloud.stopping:
        # Ended early by the shutdown: the twin as it is, and no next request on this link.
        response.force_close()
    return response


async def patch_twin(request: web.Request) -> web.Response:
    access.require(request, "write")
    cloud = _cloud(request)
    key = _key(request)
    body = await _read_body(request, cloud.settings.max_body_bytes)
    if "reported" in body:
        raise ApiError(
            400, "read_only_section", "reported belongs to the device (the edge); patch desired"
        )
    _only_fields(body, {"desired"})
    if not isinstance(body.get("desired"), dict):
        raise ApiError(
            400,
            "bad_request",
            'the body is {"desired": <JSON merge patch>} with an optional "$version" inside',
            problems=(Problem(path="/desired", reason="must be a JSON object"),),
        )
    patch = dict(body["desired"])
    expected = patch.pop("$version", None)
    if "$version" in body["desired"] and (
        isinstance(expected, bool) or not isinstance(expected, int) or expected < 0
    ):
        # null too: a client that sent a version meant a conditional write, never "any".
        raise ApiError(400, "bad_request", "desired.$version must be an integer >= 0")
    # No await between the check and the write: If-Match holds for the write it guards.
    check_if_match(request, _row(request, key).replica.twin.desired.version)
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
    return _twin_response(row)


async def move_device(request: web.Request) -> web.Response:
    access.require(request, "write")
    cloud = _cloud(request)
    key = _key(request)
    body = await _read_body(request, cloud.settings.max_body_bytes)
    _only_fields(body, {"node"})
    target = body.get("node")
    if not isinstance(target, str) or not _NODE.fullmatch(target):
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
    return _ok(device_json(row, pending=pending, move_to=target), status=202)


async def register_device(request: web.Request) -> web.Response:
    """``{node, device, model}``: the node's agent expects the device; its claim secret, once."""
    access.require(request, "write")
    cloud = _cloud(request)
    body = await _read_body(request, cloud.settings.max_body_bytes)
    _only_fields(body, {"node", "device", "model"})
    node, device, model = body.get("node"), body.get("device"), body.get("model")
    problems = []
    if not isinstance(node, str) or not _NODE.fullmatch(node):
        problems.append(Problem(path="/node", reason="must be a node name, e.g. edge-7"))
    if not isinstance(device, str) or not DEVICE_ID.fullmatch(device):
        problems.append(
            Problem(
                path="/device",
                reason="must be 1 to 64 of A-Z a-z 0-9 . _ - (letter or digit first)",
            )
        )
    if not isinstance(model, str) or not _MODEL.fullmatch(model):
        problems.append(Problem(path="/model", reason="must be a model name, e.g. thermostat"))
    if problems or not (
        isinstance(node, str) and isinstance(device, str) and isinstance(model, str)
    ):
        raise ApiError(
            400,
            "bad_request",
            'the body is {"node": <node>, "device": <device id>, "model": <model name>}',
            problems=tuple(problems),
        )
    key = (node, device)
    existing = cloud.device(key)
    if existing is not None and existing.state is DeviceState.ACTIVE:
        raise ApiError(
            409,
            "duplicate_id",
            f"device {node}:{device} is onboarded already: remove it first"
            f" (DELETE /api/v1/devices/{node}:{device}) to register it again",
        )
    secret = secrets.token_urlsafe(CLAIM_SECRET_BYTES)
    command: JsonObject = {
        "op": "register",
        "model": model,
        # Only the digest travels and is queued: the secret is shown to this caller alone.
        "secretSha256": hashlib.sha256(secret.encode()).hexdigest(),
    }
    await _run_command(request, key, command, what="register")
    log.info("twins: registered device %s:%s (model %s) for claiming", node, device, model)
    answer = {
        "id": f"{node}:{device}",
        "node": node,
        "device": device,
        "model": model,
        "claimSecret": secret,
        "registeredAt": iso(time.time()),
    }
    return _ok(answer, status=201, headers={"Location": f"/api/v1/devices/{node}:{device}"})


async def remove_device(request: web.Request) -> web.Response:
    """``?twin=keep|delete``: the device's broker credential goes, and its registration."""
    access.require(request, "write")
    choice = request.query.get("twin", "keep")
    if choice not in _TWIN_CHOICES:
        raise ApiError(400, "bad_parameter", "twin must be keep or delete, e.g. ?twin=delete")
    key = _lifecycle_key(request)
    await _remove(request, key, op="remove", delete_twin=choice == "delete")
    return web.Response(status=204, headers=_SECURITY_HEADERS)


async def revoke_device(request: web.Request) -> web.Response:
    """``{twin: keep|delete}``: its credential goes at once and its id may not claim again."""
    access.require(request, "write")
    cloud = _cloud(request)
    # No body at all means the default, {"twin": "keep"}.
    body = await _read_body(request, cloud.settings.max_body_bytes) if request.body_exists else {}
    _only_fields(body, {"twin"})
    choice = body.get("twin", "keep")
    if choice not in _TWIN_CHOICES:
        raise ApiError(
            400,
            "bad_request",
            'the body is {"twin": "keep"} or {"twin": "delete"}',
            problems=(Problem(path="/twin", reason="must be keep or delete"),),
        )
    key = _lifecycle_key(request)
    await _remove(request, key, op="revoke", delete_twin=choice == "delete")
    answer = {
        "id": f"{key[0]}:{key[1]}",
        "node": key[0],
        "device": key[1],
        "state": str(DeviceState.REVOKED),
        "twin": "deleted" if choice == "delete" else "kept",
    }
    return _ok(answer)


# ---------------------------------------------------------------------- helpers


def _lifecycle_key(request: web.Request) -> DeviceKey:
    """A known device, or ``<node>:<device>`` of one only registered (no twin yet)."""
    device_id = request.match_info["id"]
    _parse_id(device_id)
    node, sep, device = device_id.rpartition(":")
    if sep and _cloud(request).device((node, device)) is None:
        return (node, device)  # the agent says whether it has it (404 device_not_found)
    return _key(request)


async def _remove(request: web.Request, key: DeviceKey, *, op: str, delete_twin: bool) -> None:
    cloud = _cloud(request)
    known = cloud.device(key) is not None
    try:
        await _run_command(request, key, {"op": op}, what=op)
    except ApiError as error:
        # The agent forgot it already (an earlier removal that timed out, a lost database):
        # the cloud's part still has to happen.
        if not (known and error.code == "device_not_found"):
            raise
    state = DeviceState.REVOKED if op == "revoke" else DeviceState.REMOVED
    cloud.finish_removal(key, state=state, delete_twin=delete_twin)
    log.info(
        "twins: %s device %s:%s (twin %s)", op, key[0], key[1], "deleted" if delete_twin else "kept"
    )


async def _run_command(
    request: web.Request, key: DeviceKey, command: JsonObject, *, what: str
) -> None:
    cloud = _cloud(request)
    node = key[0]
    if not request.app[TWINS_SYNC_KEY].connected(node):
        raise ApiError(
            409,
            "node_offline",
            f"node {node} is not connected (no twins sync stream), so its agent cannot {what} "
            f"the device now: retry once it is online (GET /api/v1/nodes/{node})",
        )
    try:
        row_id = cloud.command(key, command)
    except QueueFullError as error:
        raise ApiError(
            503, "queue_full", f"{error}; retry later", headers={"Retry-After": "30"}
        ) from None
    outcome = await cloud.wait_command(row_id, within=cloud.settings.command_timeout)
    if outcome is None:
        raise ApiError(
            504,
            "node_timeout",
            f"the agent of node {node} did not answer within {cloud.settings.command_timeout:g} s;"
            " nothing was confirmed: check the device (GET /api/v1/devices/{id}) and retry",
        )
    if not outcome.ok:
        raise _command_error(outcome, key)


_COMMAND_ERRORS = {
    "device_not_found": 404,
    "model_unknown": 422,
    "duplicate_id": 409,
    "bad_request": 400,
    "unavailable": 503,
}


def _command_error(outcome: CommandOutcome, key: DeviceKey) -> ApiError:
    status = _COMMAND_ERRORS.get(outcome.error, 502)
    reason = outcome.error if outcome.error in _COMMAND_ERRORS else "agent_error"
    return ApiError(status, reason, f"the agent of node {key[0]} refused: {outcome.message}")


def _only_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(name[:64] for name in body if name not in allowed)
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"unknown field(s) {', '.join(unknown)}: send only {', '.join(sorted(allowed))}",
            problems=tuple(Problem(path=f"/{name}", reason="unknown field") for name in unknown),
        )


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
        return ApiError(
            409, "device_removed", f"{error}: it must be registered and onboarded again"
        )
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
        raise ApiError(400, "bad_parameter", f"{name} must be an integer in {low}..{high}")
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
        raise ApiError(400, "bad_parameter", f"{name} must be seconds in 0..{high:g}")
    return value


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/devices", list_devices)
    app.router.add_post("/api/v1/devices", register_device)
    app.router.add_get("/api/v1/devices/{id}", get_device)
    app.router.add_delete("/api/v1/devices/{id}", remove_device)
    app.router.add_get("/api/v1/devices/{id}/twin", get_twin)
    app.router.add_patch("/api/v1/devices/{id}/twin", patch_twin)
    app.router.add_post("/api/v1/devices/{id}/move", move_device)
    app.router.add_post("/api/v1/devices/{id}/revoke", revoke_device)
