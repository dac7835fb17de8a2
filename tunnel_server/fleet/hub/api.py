"""Fleet objects in the REST API: ``/api/v1/fleet/{plural}[/{name}[/status]]``, with watches.

``GET /api/v1/fleet/{plural}`` lists (``labelSelector``, ``limit``, ``continue``; the list's
``metadata.resourceVersion`` is where a watch starts) or, with ``watch=true``, streams the
changes after ``resourceVersion`` as server-sent events (``event: ADDED|MODIFIED|DELETED``,
``id: <revision>``, ``data: <document>``). ``GET …/{name}`` answers one object with
``ETag: "<resourceVersion>"``; with ``waitForChange=true&resourceVersion=N`` it is a long poll
that answers as soon as the object is no longer at N. ``PUT`` creates or replaces a whole
document, ``PATCH`` merges a JSON merge patch (RFC 7386) into metadata.labels/annotations and
spec, ``DELETE`` answers the last state, ``PUT …/status`` replaces the status (admins: the hub
and the agents write status through their own paths).

Rules (docs/fleet/api.md has the whole story):

* Authorization first (``api.access.require``), then the kind: any role reads; operators and
  admins write Placement, Work and WorkSet; ManagedCluster, ManagedClusterSet and GitSource are
  admins' (``_ADMIN_KINDS``). A cluster-scoped caller sees only ManagedClusters and Works of its
  clusters (others are absent from lists and watches, 404 when named; objects of other kinds
  span clusters, so it sees none of them) and writes only Works of its clusters (403).
* Bodies are read bounded (``FleetSettings.max_document_bytes``) before they are parsed, nested
  at most ``MAX_DEPTH`` levels, then checked by ``fleet_model.documents.validate_document``:
  every problem comes back at once as ``problems: [{path, reason}]`` (400 ``invalid_document``).
  A Work's compact JSON over ``max_work_bytes`` is 413 ``work_too_large``.
* Preconditions: ``If-Match: "<rv>"`` (412 ``precondition_failed``, with ``currentVersion``) and
  ``metadata.resourceVersion`` in the body (409 ``conflict``, Kubernetes' answer). The store
  checks them in the same transaction as the write.
* Watches and long polls count against ``watches_per_caller`` and ``watches_total`` (503
  ``too_many_streams`` beyond) and end at ``timeoutSeconds`` (at most ``watch_timeout_max``),
  at the caller's credential expiry, or when the server stops; a client watches again from the
  last ``id``. A start older than the kept change log is 410 ``expired`` (list again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from device_models import Problem
from fleet_model.cluster import Taint, taint_json, taints_on_write
from fleet_model.cluster import parse_spec as parse_cluster_spec
from fleet_model.documents import KINDS, PLURALS, validate_document
from fleet_model.labels import LabelSelector, SelectorError, parse_label_selector
from fleet_model.problems import SpecError, is_name
from tunnel_server.api import auth
from tunnel_server.api.access import Caller, require
from tunnel_server.api.paging import page
from tunnel_server.api.preconditions import etag, if_match
from tunnel_server.app_keys import FLEET_HUB_KEY
from tunnel_server.fleet.hub.hub import FleetHub
from tunnel_server.fleet.hub.store import (
    Change,
    ChangesExpiredError,
    ConflictError,
    ObjectNotFoundError,
    StoredObject,
)
from tunnel_server.web.bodies import decode_json_object, read_bounded
from tunnel_server.web.errors import SECURITY_HEADERS, ApiError, problem

__all__ = ["MAX_DEPTH", "WatchLimits", "add_routes", "event_for", "merge_patch"]

log = logging.getLogger("tunnel_server.fleet.hub.api")

PREFIX = "/api/v1/fleet"
MAX_DEPTH = 64
"""JSON nesting of a fleet document: a Work carries whole Kubernetes manifests (a pod template's
affinity rules alone are ~17 levels deep inside a Work); 64 keeps ``json.loads`` far from
Python's recursion limit."""
LONG_POLL_DEFAULT = 30.0
"""Seconds a long poll waits without ``timeoutSeconds``: under common proxies' idle timeouts."""
KEEPALIVE = 15.0
"""Seconds between comment lines on a quiet watch, so proxies keep the connection open."""
GONE_CHECK = 1.0
CREDENTIAL_CHECK = 2.0
"""Seconds between rechecks of an idle watcher's credential (it is also checked before every
batch of events): a revoked user, a rotated admin token or a deleted user token ends its open
watches with a ``revoked`` event, and no event is sent after it."""
"""Seconds between looks at a quiet watch's connection: a client that left frees its slot
(``watches_per_caller``) within this, not at the next keepalive write."""
_ADMIN_KINDS = frozenset({"ManagedCluster", "ManagedClusterSet", "GitSource"})
_SCOPED_KINDS = frozenset({"ManagedCluster", "Work"})
"""Kinds whose objects belong to one cluster: the ones a cluster-scoped caller may see."""
_RESOURCE_VERSION = re.compile(r"^[0-9]{1,18}$")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_MERGE_PATCH = "application/merge-patch+json"
_PATCH_TYPES = frozenset({_MERGE_PATCH, "application/json"})
_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})


@dataclass(kw_only=True)
class WatchLimits:
    """Live watches and long polls, per caller name and in all."""

    per_caller: int
    total: int
    live: Counter[str]


_WATCHES_KEY: web.AppKey[WatchLimits] = web.AppKey("fleet_watches", WatchLimits)
_CLOSING_KEY: web.AppKey[asyncio.Event] = web.AppKey("fleet_closing", asyncio.Event)


# Request parts ---------------------------------------------------------------------------------


def _kind(request: web.Request) -> str:
    plural = request.match_info["plural"]
    kind = PLURALS.get(plural)
    if kind is None:
        raise ApiError(
            404,
            "unknown_kind",
            f"no fleet kind is called {plural[:60]!r}: use one of {', '.join(sorted(PLURALS))}",
        )
    return kind


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not is_name(name):
        raise ApiError(
            400,
            "bad_name",
            "fleet object names are DNS-1123 subdomains: 1-253 lower-case letters, digits, "
            "'-' and '.', starting and ending with a letter or digit",
        )
    return name


def _flag(request: web.Request, key: str) -> bool:
    raw = request.query.get(key)
    if raw is None:
        return False
    value = _BOOLEANS.get(raw.lower())
    if value is None:
        raise ApiError(400, "bad_parameter", f"query parameter {key!r} must be true or false")
    return value


def _version_param(request: web.Request) -> int | None:
    raw = request.query.get("resourceVersion")
    if raw is None or raw == "":
        return None
    if not _RESOURCE_VERSION.match(raw):
        raise ApiError(
            400,
            "bad_parameter",
            "query parameter 'resourceVersion' must be a resourceVersion: a non-negative "
            "integer of at most 18 digits, e.g. from a list's metadata.resourceVersion",
        )
    return int(raw)


def _timeout(request: web.Request, hub: FleetHub, *, default: float | None = None) -> float:
    """``timeoutSeconds`` (1..300), at most ``watch_timeout_max``; ``default`` (or that) else."""
    raw = request.query.get("timeoutSeconds")
    limit = hub.settings.watch_timeout_max
    if raw is None:
        return min(default, limit) if default is not None else limit
    if not raw.isdigit() or not 1 <= int(raw) <= 300:
        raise ApiError(
            400, "bad_parameter", "query parameter 'timeoutSeconds' must be an integer 1..300"
        )
    return min(float(raw), limit)


def _selector(request: web.Request) -> LabelSelector | None:
    raw = request.query.get("labelSelector")
    if raw is None or raw == "":
        return None
    if len(raw) > 2048 or not all(" " <= c <= "~" for c in raw):
        raise ApiError(
            400,
            "bad_parameter",
            "query parameter 'labelSelector' is at most 2048 printable ASCII characters",
        )
    try:
        return parse_label_selector(raw, max_length=2048)
    except SelectorError as error:
        raise ApiError(400, "bad_parameter", f"labelSelector: {error}") from None


def _hub(request: web.Request) -> FleetHub:
    return request.app[FLEET_HUB_KEY]


# Who sees and writes what ----------------------------------------------------------------------


def _cluster_of(obj: StoredObject) -> str | None:
    """The cluster a ManagedCluster or Work belongs to (None for other kinds)."""
    if obj.kind == "ManagedCluster":
        return obj.name
    if obj.kind == "Work":
        return _work_cluster(obj.spec)
    return None


def _work_cluster(spec: Mapping[str, Any]) -> str | None:
    cluster = spec.get("clusterName")
    return cluster if isinstance(cluster, str) else None


def _sees(caller: Caller, obj: StoredObject) -> bool:
    if caller.clusters is None:
        return True
    cluster = _cluster_of(obj)
    return cluster is not None and caller.in_scope(cluster)


def _require_write(request: web.Request) -> tuple[Caller, str]:
    """The caller and the kind, if its role may write that kind (403 naming the role needed).

    The role is checked before the kind is looked at, so a viewer learns nothing of kinds.
    A cluster-scoped caller writes only Works.
    """
    caller = require(request, "write")
    kind = _kind(request)
    if kind in _ADMIN_KINDS:
        caller = require(request, "admin")
    if caller.clusters is not None and kind != "Work":
        raise ApiError(
            403,
            "forbidden",
            f"user {caller.name!r} is limited to clusters "
            f"{', '.join(sorted(caller.clusters)) or '(none)'}, so it may write only Works of "
            f"those clusters, not a {kind} (which spans clusters); ask an admin",
        )
    return caller, kind


def _check_cluster_scope(request: web.Request, caller: Caller, cluster: str | None) -> None:
    if caller.clusters is None:
        return
    if cluster is None or not caller.in_scope(cluster):
        require(request, "write", cluster=cluster or "(none)")


def _read(request: web.Request, caller: Caller, kind: str, name: str) -> StoredObject:
    obj = _hub(request).store.get(kind, name)
    if obj is None or not _sees(caller, obj):
        raise _not_found(kind, name)
    return obj


def _not_found(kind: str, name: str) -> ApiError:
    return ApiError(
        404,
        "object_not_found",
        f"no {kind} named {name!r}: see GET {PREFIX}/{KINDS[kind].plural}",
    )


# Answers ---------------------------------------------------------------------------------------


def _answer(obj: StoredObject, *, status: int = 200) -> web.Response:
    headers = {"ETag": etag(obj.resource_version)}
    if status == 201:
        headers["Location"] = f"{PREFIX}/{KINDS[obj.kind].plural}/{obj.name}"
    return web.json_response(obj.document(), status=status, headers=headers)


def _invalid(error: SpecError) -> ApiError:
    problems = tuple(Problem(path=path, reason=message) for path, message in error.problems[:100])
    first = "; ".join(f"{p.path or '/'}: {p.reason}" for p in problems[:3])
    return ApiError(
        400,
        "invalid_document",
        f"the document is not valid ({len(error.problems)} problem(s)): {first}",
        problems=problems,
    )


def _conflict(error: ConflictError) -> ApiError:
    return ApiError(
        409,
        "conflict",
        f"{error}: the object changed since it was read; read it again (GET) and retry with "
        "its metadata.resourceVersion",
        extra={"currentVersion": None if error.current is None else str(error.current)},
    )


def _precondition_failed(current: int | None, tags: list[str]) -> ApiError:
    return ApiError(
        412,
        "precondition_failed",
        f"the object is at {etag(current) if current is not None else 'nothing'}, not "
        f"{', '.join(tags)[:200]}; read it again (GET) and retry with its new ETag",
        extra={"currentVersion": current},
    )


def _if_match_version(request: web.Request, current: StoredObject | None) -> int | None:
    """The version ``If-Match`` pins (412 now if the object is elsewhere); None without one."""
    tags = if_match(request)
    if tags is None:
        return None
    at = None if current is None else current.resource_version
    if at is not None and (tags == ["*"] or etag(at) in tags):
        return at
    raise _precondition_failed(at, tags)


async def _body(request: web.Request, hub: FleetHub) -> dict[str, Any]:
    limit = max(hub.settings.max_document_bytes, hub.settings.max_work_bytes)
    raw = await read_bounded(request, limit=limit)
    return decode_json_object(raw, max_depth=MAX_DEPTH)


def _check_size(kind: str, document: Mapping[str, Any], hub: FleetHub) -> None:
    if kind != "Work":
        return
    size = len(json.dumps(document, separators=(",", ":")).encode())
    limit = hub.settings.max_work_bytes
    if size > limit:
        raise ApiError(
            413,
            "work_too_large",
            f"this Work is {size} bytes of JSON, over the limit of {limit} bytes: split its "
            "manifests over several Works (or raise EDGEFLEET_FLEET_MAX_WORK_BYTES)",
            extra={"sizeBytes": size, "limitBytes": limit},
        )


def _check_name(document: Mapping[str, Any], name: str) -> None:
    metadata = document.get("metadata")
    given = metadata.get("name") if isinstance(metadata, dict) else None
    if isinstance(given, str) and given != name:
        raise ApiError(
            400,
            "name_mismatch",
            f"metadata.name {given[:80]!r} is not the name in the URL ({name!r}): a PUT or "
            "PATCH writes the object its URL names",
            problems=(Problem(path="/metadata/name", reason="must equal the name in the URL"),),
        )


# Routes ----------------------------------------------------------------------------------------


async def list_objects(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/fleet/{plural}``: a page of objects, or a watch with ``watch=true``."""
    caller = require(request, "read")
    kind = _kind(request)
    selector = _selector(request)
    hub = _hub(request)
    _version_param(request)  # checked even where unused: a wrong value is a mistake to report
    _timeout(request, hub)
    if _flag(request, "watch"):
        return await _watch(request, caller, kind, selector)
    revision = hub.store.revision()
    visible = [obj for obj in hub.store.list(kind, selector=selector) if _sees(caller, obj)]
    body = page(
        request,
        visible,
        key=lambda obj: (obj.name,),
        render=lambda obj: obj.document(),
    )
    body["metadata"]["resourceVersion"] = str(revision)
    return web.json_response(body)


async def get_object(request: web.Request) -> web.Response:
    """``GET …/{name}``: one object with its ETag; ``waitForChange=true`` long-polls."""
    caller = require(request, "read")
    kind = _kind(request)
    name = _name(request)
    if kind == "ManagedCluster":
        require(request, "read", cluster=name)
    hub = _hub(request)
    version = _version_param(request)
    timeout = _timeout(request, hub, default=LONG_POLL_DEFAULT)
    if not _flag(request, "waitForChange"):
        return _answer(_read(request, caller, kind, name))
    if version is None:
        raise ApiError(
            400,
            "bad_parameter",
            "waitForChange=true needs resourceVersion: the version the caller has",
        )
    async with _watch_slot(request, caller):
        deadline = time.monotonic() + timeout
        closing = request.app[_CLOSING_KEY]
        while True:
            obj = hub.store.get(kind, name)
            left = deadline - time.monotonic()
            if obj is None or obj.resource_version != version or left <= 0 or closing.is_set():
                break
            await hub.events.wait_past(hub.store.revision(), left)
    if obj is None or not _sees(caller, obj):
        raise _not_found(kind, name)
    return _answer(obj)


async def put_object(request: web.Request) -> web.Response:
    """``PUT …/{name}``: create or replace the whole document (its status is kept)."""
    caller, kind = _require_write(request)
    name = _name(request)
    if kind == "ManagedCluster":
        require(request, "admin", cluster=name)
    hub = _hub(request)
    document = await _body(request, hub)
    _check_name(document, name)
    try:
        parsed = validate_document(document, kind=kind)
    except SpecError as error:
        raise _invalid(error) from None
    current = hub.store.get(kind, name)
    if current is not None and not _sees(caller, current):
        _check_cluster_scope(request, caller, _cluster_of(current))
    if kind == "Work":
        _check_cluster_scope(request, caller, _work_cluster(parsed.spec))
    stored = {k: v for k, v in document.items() if k != "status"}
    _check_size(kind, stored, hub)
    pinned = _if_match_version(request, current)
    return _write(
        hub,
        kind,
        name,
        labels=parsed.labels,
        annotations=parsed.annotations,
        spec=parsed.spec,
        pinned=pinned,
        expected=parsed.resource_version,
    )


def _write(
    hub: FleetHub,
    kind: str,
    name: str,
    *,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    spec: Mapping[str, Any],
    pinned: int | None,
    expected: int | None,
) -> web.Response:
    """Write with the If-Match pin (412) and the body's resourceVersion (409) as preconditions."""
    if pinned is not None and expected is not None and pinned != expected:
        raise _conflict(ConflictError(kind, name, expected=expected, current=pinned))
    now = time.time()
    if kind == "ManagedCluster":
        spec = _admin_cluster_spec(hub, name, spec, now=now)
    try:
        obj, created = hub.put(
            kind,
            name,
            labels=labels,
            annotations=annotations,
            spec=spec,
            expected_version=pinned if pinned is not None else expected,
            now=now,
        )
    except ConflictError as error:
        if pinned is not None:
            raise _precondition_failed(error.current, [etag(pinned)]) from None
        raise _conflict(error) from None
    log.info(
        "fleet object %s",
        "created" if created else "replaced",
        extra={"kv": {"kind": kind, "name": name, "resource_version": obj.resource_version}},
    )
    return _answer(obj, status=201 if created else 200)


def _admin_cluster_spec(
    hub: FleetHub, name: str, spec: Mapping[str, Any], *, now: float
) -> Mapping[str, Any]:
    """A ManagedCluster's spec as an admin's PUT or PATCH stores it (``taints_on_write``).

    The built-in taints stay exactly as the hub's health rules left them (an ``apply -f`` of a
    file without them must neither untaint an unreachable cluster nor restart the
    tolerationSeconds counted from their ``timeAdded``), and the admin's taints get their
    ``timeAdded``. No await between this read and the write: nothing else writes in between.
    """
    written = parse_cluster_spec(dict(spec)).taints  # validated already: it parses
    current = hub.store.get("ManagedCluster", name)
    stored: tuple[Taint, ...] = ()
    if current is not None:
        try:
            stored = parse_cluster_spec(dict(current.spec)).taints
        except SpecError:  # a stored spec that no longer parses keeps no taints
            stored = ()
    taints = taints_on_write(written, stored=stored, now=now)
    if not taints and "taints" not in spec:
        return spec
    return {**spec, "taints": [taint_json(t) for t in taints]}


def merge_patch(target: Any, patch: Any) -> Any:  # noqa: ANN401 - JSON values
    """RFC 7386: ``patch`` merged into ``target`` (null removes a key; a non-object replaces)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


async def patch_object(request: web.Request) -> web.Response:
    """``PATCH …/{name}``: a JSON merge patch of metadata.labels/annotations and spec."""
    caller, kind = _require_write(request)
    name = _name(request)
    if kind == "ManagedCluster":
        require(request, "admin", cluster=name)
    content_type = request.content_type
    if content_type not in _PATCH_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"PATCH takes a JSON merge patch (Content-Type: {_MERGE_PATCH}), not "
            f"{content_type[:80]!r}",
        )
    hub = _hub(request)
    patch = await _body(request, hub)
    unknown = sorted(set(patch) - _TOP_LEVEL)
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"a fleet merge patch has metadata, spec (and status, which is ignored); not "
            f"{', '.join(repr(k[:40]) for k in unknown[:10])}",
            problems=tuple(
                Problem(path="/" + k[:40], reason="unknown field") for k in unknown[:10]
            ),
        )
    _check_name(patch, name)
    current = _read(request, caller, kind, name)
    pinned = _if_match_version(request, current)
    merged = merge_patch(
        {k: v for k, v in current.document().items() if k != "status"},
        {k: v for k, v in patch.items() if k != "status"},
    )
    if not isinstance(merged.get("metadata"), dict):
        merged["metadata"] = {}
    merged["metadata"]["name"] = name  # server-set fields stay the server's
    for field in ("uid", "generation", "creationTimestamp"):
        merged["metadata"].pop(field, None)
    given = patch.get("metadata")
    precondition = given.get("resourceVersion") if isinstance(given, dict) else None
    merged["metadata"]["resourceVersion"] = precondition
    try:
        parsed = validate_document(merged, kind=kind)
    except SpecError as error:
        raise _invalid(error) from None
    if kind == "Work":
        _check_cluster_scope(request, caller, _work_cluster(parsed.spec))
    _check_size(kind, merged, hub)
    return _write(
        hub,
        kind,
        name,
        labels=parsed.labels,
        annotations=parsed.annotations,
        spec=parsed.spec,
        # Without a precondition of the caller's, the merge still only lands on what it read.
        pinned=pinned,
        expected=parsed.resource_version
        if parsed.resource_version is not None
        else (None if pinned is not None else current.resource_version),
    )


async def delete_object(request: web.Request) -> web.Response:
    """``DELETE …/{name}``: remove the object; 200 with its last state."""
    caller, kind = _require_write(request)
    name = _name(request)
    if kind == "ManagedCluster":
        require(request, "admin", cluster=name)
    hub = _hub(request)
    current = _read(request, caller, kind, name)
    pinned = _if_match_version(request, current)
    try:
        obj = hub.delete(kind, name, expected_version=pinned)
    except ObjectNotFoundError:
        raise _not_found(kind, name) from None
    except ConflictError as error:
        raise _precondition_failed(error.current, [etag(error.expected)]) from None
    log.info("fleet object deleted", extra={"kv": {"kind": kind, "name": name}})
    return _answer(obj)


async def put_status(request: web.Request) -> web.Response:
    """``PUT …/{name}/status``: replace the status (admins); ``{status: {...}}`` or a document."""
    require(request, "admin")
    kind = _kind(request)
    name = _name(request)
    hub = _hub(request)
    body = await _body(request, hub)
    _check_name(body, name)
    status = body.get("status")
    if not isinstance(status, dict):
        raise ApiError(
            400,
            "invalid_document",
            "the body must hold the new status as an object under 'status'",
            problems=(Problem(path="/status", reason="must be an object"),),
        )
    metadata = body.get("metadata")
    raw_version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    expected = None
    if raw_version not in (None, ""):
        if not isinstance(raw_version, str) or not _RESOURCE_VERSION.match(raw_version):
            raise ApiError(
                400,
                "invalid_document",
                "metadata.resourceVersion must be the string of a non-negative integer",
                problems=(Problem(path="/metadata/resourceVersion", reason="not a version"),),
            )
        expected = int(raw_version)
    current = hub.store.get(kind, name)
    if current is None:
        raise _not_found(kind, name)
    pinned = _if_match_version(request, current)
    try:
        obj = hub.set_status(
            kind, name, status, expected_version=pinned if pinned is not None else expected
        )
    except ObjectNotFoundError:
        raise _not_found(kind, name) from None
    except ConflictError as error:
        if pinned is not None:
            raise _precondition_failed(error.current, [etag(pinned)]) from None
        raise _conflict(error) from None
    return _answer(obj)


# Watches ---------------------------------------------------------------------------------------


class _WatchSlot:
    """One live watch or long poll of a caller, refused with 503 beyond the limits."""

    def __init__(self, request: web.Request, caller: Caller) -> None:
        self.limits = request.app[_WATCHES_KEY]
        self.who = caller.name

    async def __aenter__(self) -> None:
        live = self.limits.live
        if live[self.who] >= self.limits.per_caller or live.total() >= self.limits.total:
            raise ApiError(
                503,
                "too_many_streams",
                f"too many live fleet watches (at most {self.limits.per_caller} per user and "
                f"{self.limits.total} in all): close one, or retry later",
                headers={"Retry-After": "5"},
            )
        live[self.who] += 1

    async def __aexit__(self, *_exc: object) -> None:
        self.limits.live[self.who] -= 1
        if self.limits.live[self.who] <= 0:
            del self.limits.live[self.who]


def _watch_slot(request: web.Request, caller: Caller) -> _WatchSlot:
    return _WatchSlot(request, caller)


def _event(change_type: str, obj: StoredObject) -> bytes:
    data = json.dumps(obj.document(), separators=(",", ":"))
    return f"event: {change_type}\nid: {obj.resource_version}\ndata: {data}\n\n".encode()


async def _watch(
    request: web.Request, caller: Caller, kind: str, selector: LabelSelector | None
) -> web.StreamResponse:
    hub = _hub(request)
    start = _version_param(request)
    timeout = _timeout(request, hub)
    if caller.expires_at is not None:
        timeout = max(0.0, min(timeout, caller.expires_at - time.time()))

    def visible(obj: StoredObject) -> bool:
        return _sees(caller, obj) and (selector is None or selector.matches(obj.labels))

    # What the client holds: a start without a version gets every object first (as ADDED).
    snapshot: list[StoredObject] = []
    if start is None:
        start = hub.store.revision()
        snapshot = [obj for obj in hub.store.list(kind) if visible(obj)]
    try:
        hub.store.changes_since(start, kind=kind)
    except ChangesExpiredError as error:
        raise _expired(error) from None
    async with _watch_slot(request, caller):
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream; charset=utf-8",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        try:
            await response.write(b"retry: 2000\n\n")
            for obj in snapshot:
                await response.write(_event("ADDED", obj))
            follow = _follow(
                request,
                kind=kind,
                start=start,
                seconds=timeout,
                visible=visible,
                credential=auth.bearer(request),
            )
            async for chunk in follow:
                await response.write(chunk)
        except (ConnectionResetError, asyncio.CancelledError):
            log.debug("fleet watch closed by the client")
            raise
    return response


def _expired(error: ChangesExpiredError) -> ApiError:
    return ApiError(
        410,
        "expired",
        f"{error}: list again (its metadata.resourceVersion) and watch from there",
    )


async def _follow(
    request: web.Request,
    *,
    kind: str,
    start: int,
    seconds: float,
    visible: Callable[[StoredObject], bool],
    credential: str,
) -> AsyncIterator[bytes]:
    """The watch's events after ``start`` for ``seconds``, until the server stops, or 410.

    Ends with a ``revoked`` event (a problem document, as the live event stream's) once
    ``credential`` stops working: a watch must not outlive the right to read.
    """
    hub = _hub(request)
    closing = request.app[_CLOSING_KEY]
    deadline = time.monotonic() + seconds
    quiet_since = time.monotonic()
    credential_check = _CredentialCheck(request.app, credential)
    seen = start
    while not closing.is_set():
        current = hub.store.revision()  # every write up to it is in the log read next
        changes = _changes_or_410(hub, seen, kind)
        if not isinstance(changes, bytes):
            # Before anything is sent (and now and then when idle): no event after a revocation.
            changes = credential_check.refusal(due=bool(changes)) or changes
        if isinstance(changes, bytes):
            yield changes
            return
        for change in changes:
            seen = change.revision
            event = event_for(change, visible)
            if event is not None:
                yield event
                quiet_since = time.monotonic()
        seen = max(seen, current)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        moved = await hub.events.wait_past(seen, min(left, GONE_CHECK))
        if moved > seen:
            continue
        transport = request.transport
        if transport is None or transport.is_closing():
            return  # the client left: free its slot now, not at the next keepalive
        if time.monotonic() - quiet_since >= KEEPALIVE and deadline - time.monotonic() > 0:
            quiet_since = time.monotonic()
            yield b": keepalive\n\n"


def _changes_or_410(hub: FleetHub, seen: int, kind: str) -> list[Change] | bytes:
    """The changes past ``seen``, or the ERROR event (410) when the log no longer has them."""
    try:
        return hub.store.changes_since(seen, kind=kind)
    except ChangesExpiredError as error:  # fell behind the kept log while writing
        body = problem(410, "expired", str(_expired(error)))
        return f"event: ERROR\ndata: {json.dumps(body)}\n\n".encode()


class _CredentialCheck:
    """Rechecks a watcher's bearer value every ``CREDENTIAL_CHECK`` seconds."""

    def __init__(self, app: web.Application, credential: str) -> None:
        self._app = app
        self._credential = credential
        self._checked_at = time.monotonic()

    def refusal(self, *, due: bool) -> bytes | None:
        """The ``revoked`` event that ends the watch if its credential stopped working.

        Checked when ``due`` (events are about to be sent) or ``CREDENTIAL_CHECK`` seconds
        after the last check.
        """
        if not due and time.monotonic() - self._checked_at < CREDENTIAL_CHECK:
            return None
        self._checked_at = time.monotonic()
        try:
            auth.identify(self._app, self._credential, now=time.time())
        except ApiError as refused:
            log.info("ending a fleet watch: %s", refused.code)
            body = problem(401, refused.code, refused.message)
            return f"event: revoked\ndata: {json.dumps(body)}\n\n".encode()
        return None


def event_for(change: Change, visible: Callable[[StoredObject], bool]) -> bytes | None:
    """The event a filtered watch sends for ``change`` (None: nothing).

    An object entering the filter is ADDED for that watch, one leaving it (or deleted) DELETED,
    one outside it before and after sends nothing. An object that left the filter is sent with
    its labels and cluster from before the change: a scoped caller never sees the cluster
    outside its scope that a Work moved to.
    """
    obj = change.object
    now = change.type != "DELETED" and visible(obj)
    was = obj
    if change.type == "MODIFIED" and change.labels_before is not None:
        spec = dict(obj.spec)
        if change.cluster_before is None:
            spec.pop("clusterName", None)
        else:
            spec["clusterName"] = change.cluster_before
        was = replace(obj, labels=change.labels_before, spec=spec)
    before = change.type != "ADDED" and visible(was)
    if now:
        return _event("MODIFIED" if before else "ADDED", obj)
    return _event("DELETED", was) if before else None


def add_routes(app: web.Application, *, hub: FleetHub) -> None:
    """Mount the routes; the watch limits and the shutdown signal live in the app."""
    app[_WATCHES_KEY] = WatchLimits(
        per_caller=hub.settings.watches_per_caller,
        total=hub.settings.watches_total,
        live=Counter(),
    )
    app[_CLOSING_KEY] = asyncio.Event()
    app.router.add_get(PREFIX + "/{plural}", list_objects)
    app.router.add_get(PREFIX + "/{plural}/{name}", get_object)
    app.router.add_put(PREFIX + "/{plural}/{name}", put_object)
    app.router.add_patch(PREFIX + "/{plural}/{name}", patch_object)
    app.router.add_delete(PREFIX + "/{plural}/{name}", delete_object)
    app.router.add_put(PREFIX + "/{plural}/{name}/status", put_status)

    async def end_watches(_app: web.Application) -> None:
        app[_CLOSING_KEY].set()
        hub.events.notify()

    app.on_shutdown.append(end_watches)
