# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Answers while the upstream is unreachable, and the heartbeat sync after reconnect.

* GET: the cached object; 404 if a complete LIST of its namespace (or of everything) is
  cached and does not hold it; otherwise 503 (we do not know).
* LIST: any cached complete LIST whose scope contains the query's scope answers it, with the
  query's label and field selectors applied here, in API-server order, with ``limit`` and
  ``continue`` (tokens in the API server's own format, so paging may cross the cut).
* Heartbeats (Lease updates; node status update/patch) are applied to the cached object,
  answered 200 and kept as *pending*; ``sync_loop`` sends them upstream after reconnect.
  They keep the upstream resourceVersion: a made-up one could collide with a real one later.
  A Lease PUT with a protobuf body (kubelet's default) is decoded by ``protowire`` and
  answered in JSON; a client that accepts only protobuf gets the 503.
* TokenRequests seen online are answered with the kept token until it expires (``tokens``).
* Every other write gets a 503 Status saying the node is offline. Never a fake success.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from edge_agent.kubecache import tokens
from edge_agent.kubecache.health import State
from edge_agent.kubecache.keys import NO_NAMESPACE, Resource, Verb, sort_key
from edge_agent.kubecache.protowire import decode_lease
from edge_agent.kubecache.selectors import SelectorError
from edge_agent.kubecache.store import (
    CacheStore,
    Change,
    Coverage,
    RawPage,
    Scope,
    SnapshotExpiredError,
    meta_of,
    rv_of,
)
from edge_agent.kubecache.wire import (
    PROTOBUF,
    PatchError,
    Representation,
    apply_patch,
    offline_status,
    status_object,
)

if TYPE_CHECKING:
    from edge_agent.kubecache.proxy import Call, KubeProxy

log = logging.getLogger("edge_agent.kubecache.offline")

RETRY_AFTER = 10
"""Seconds suggested in the Status body (``details.retryAfterSeconds``) for a retry.

Deliberately no ``Retry-After`` *header*: client-go retries a 503 that carries one up to ten
times, so `kubectl create` on an offline node would hang for over a minute before saying why.
Without the header it fails at once with the Status message, and controllers retry on their
own backoff anyway."""
_MAX_SYNC_ATTEMPTS = 3


def _json(obj: object, *, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(obj, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _reject(proxy: KubeProxy, call: Call, what: str) -> web.Response:
    proxy.metrics.requests.labels(verb=call.info.verb.value, source="offline_rejected").inc()
    return _json(offline_status(what, retry_after=RETRY_AFTER), status=503)


def is_heartbeat(call: Call) -> bool:
    """Writes a node must keep making to stay Ready: its Lease and its status."""
    resource = call.info.resource
    if resource is None or call.info.verb not in {Verb.UPDATE, Verb.PATCH}:
        return False
    lease = resource.group == "coordination.k8s.io" and resource.resource == "leases"
    node_status = resource.group == "" and resource.resource == "nodes"
    return (lease and not call.info.subresource) or (
        node_status and call.info.subresource == "status"
    )


async def answer(proxy: KubeProxy, call: Call) -> web.StreamResponse:  # noqa: PLR0911 - one answer per case, flat reads best
    await proxy.flush_writes()  # answers already sent upstream are in the cache first
    if not call.info.is_resource:
        return await _answer_raw(proxy, call)
    if call.info.verb in {Verb.GET, Verb.LIST}:
        if not (call.cached_agent and call.representation is not Representation.OPAQUE):
            return _reject(proxy, call, f"{call.component} answers are not cached in this format")
        if call.info.subresource not in {"", "status"}:
            return _reject(proxy, call, f"subresource {call.info.subresource!r} is not cached")
        if call.info.verb is Verb.GET:
            return await _get(proxy, call)
        return await _list(proxy, call)
    if is_heartbeat(call) and call.cached_agent:
        return await _heartbeat(proxy, call)
    if tokens.is_token_request(call) and call.cached_agent:
        return await _token(proxy, call)
    return _reject(proxy, call, f"this {call.info.verb.value} was not sent")


async def _get(proxy: KubeProxy, call: Call) -> web.StreamResponse:
    """The object as the newest view holding its name recorded it; 404 if that view lacks it."""
    info = call.info
    found = await proxy.store.run(
        "get", lambda s: s.lookup(call.component, call.resource, info.namespace, info.name)
    )
    known, obj = found if found is not None else (False, None)
    if not known:
        return _reject(proxy, call, f"{info.name!r} is not in the cache to answer from")
    proxy.metrics.requests.labels(verb="get", source="cache").inc()
    if obj is not None:
        return _json(obj)
    message = f'{call.resource.resource} "{info.name}" not found'
    details = {"name": info.name, "group": call.resource.group, "kind": call.resource.resource}
    return _json(status_object(404, "NotFound", message, details=details), status=404)


def _decode_continue(token: str) -> tuple[str, str]:
    """(the key after which a page starts, the snapshot's rv) from a continue token.

    Ours and the API server's share its format (k8s.io/apiserver ``storage.DecodeContinue``):
    unpadded URL-safe base64 of ``{"v":"meta.k8s.io/v1","rv":N,"start":K}``. Since v1.36 the
    server's start key begins with ``/`` (``"/pod-014\u0000"``); it is taken either way.
    """
    try:
        data = json.loads(base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_"))
    except (ValueError, binascii.Error) as exc:
        raise SelectorError(f"invalid continue token: {exc}") from None
    start = data.get("start") if isinstance(data, dict) else None
    if not isinstance(start, str) or not start:
        raise SelectorError("invalid continue token: no start key")
    if not isinstance(data, dict) or data.get("v") != "meta.k8s.io/v1":
        raise SelectorError("invalid continue token: unknown version")
    rv = data.get("rv")
    return start.removeprefix("/"), str(rv) if isinstance(rv, int | str) else ""


def _encode_continue(rv: str, last_key: str) -> str:
    """A token the API server takes as its own (no ``=`` padding: it rejects that with 400)."""
    body = {
        "v": "meta.k8s.io/v1",
        "rv": int(rv) if rv.isdigit() else rv,
        "start": "/" + last_key + "\x00",
    }
    text = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def _relative_key(scope: Scope, obj: dict[str, Any]) -> str:
    meta = meta_of(obj)
    name = str(meta.get("name", ""))
    return name if scope.namespace else sort_key(str(meta.get("namespace", "")), name)


def render_list(
    scope: Scope, coverage: Coverage, items: list[dict[str, Any]], *, limit: int, start: str
) -> dict[str, Any]:
    """The LIST body the API server would give for this query at ``coverage.rv``."""
    if start:
        items = [o for o in items if _relative_key(scope, o) >= start]
    metadata: dict[str, Any] = {"resourceVersion": coverage.rv}
    if limit > 0 and len(items) > limit:
        rest = len(items) - limit
        items = items[:limit]
        metadata["continue"] = _encode_continue(coverage.rv, _relative_key(scope, items[-1]))
        if not scope.labels.requirements and not scope.fields.requirements:
            metadata["remainingItemCount"] = rest
    if not coverage.items_have_kind:
        items = [{k: v for k, v in o.items() if k not in {"kind", "apiVersion"}} for o in items]
    return {
        "kind": coverage.list_kind,
        "apiVersion": coverage.api_version,
        "metadata": metadata,
        "items": items,
    }


async def _list(proxy: KubeProxy, call: Call) -> web.StreamResponse:
    """One page of the newest view covering the query, read as one snapshot.

    A continued LIST (ours or the API server's token) is served only from a view whose
    snapshot equals the token's; otherwise 410 Expired, as the API server answers for a
    compacted token, and clients re-list. Never a page of another snapshot (duplicates).
    """
    query = call.request.query
    try:
        scope = proxy.scope_of(call)
        start, at = _decode_continue(query["continue"]) if query.get("continue") else ("", "")
        limit = int(query.get("limit", "0") or "0")
    except (SelectorError, ValueError) as exc:
        return _json(status_object(400, "BadRequest", str(exc)), status=400)
    try:
        found = await proxy.store.run(
            "list",
            lambda s: s.snapshot(scope, start=start, limit=max(limit, 0), at=at or ""),
        )
    except SnapshotExpiredError:
        proxy.metrics.requests.labels(verb="list", source="cache").inc()
        message = (
            "The provided continue parameter is too old to display a consistent list result "
            "from the edge cache. You can start a new list without the continue parameter."
        )
        return _json(status_object(410, "Expired", message), status=410)
    if found is None:
        return _reject(proxy, call, "no complete list covering this query is cached")
    coverage, page = found
    proxy.metrics.requests.labels(verb="list", source="cache").inc()
    return web.Response(body=render_raw_list(coverage, page), content_type="application/json")


def render_raw_list(coverage: Coverage, page: RawPage) -> bytes:
    """The LIST body the API server would give, spliced from the stored JSON texts.

    Stored objects carry ``kind`` and ``apiVersion`` first; built-in lists leave them out of
    their items, so that prefix is cut off the text (an object stored another way is decoded
    and re-encoded instead).
    """
    metadata: dict[str, Any] = {"resourceVersion": coverage.rv}
    if page.more:
        metadata["continue"] = _encode_continue(coverage.rv, page.last_key)
        if page.remaining > 0:
            metadata["remainingItemCount"] = page.remaining
    items = page.items
    if not coverage.items_have_kind:
        kind = coverage.list_kind.removesuffix("List")
        head = (
            json.dumps(
                {"kind": kind, "apiVersion": coverage.api_version}, separators=(",", ":")
            ).encode()[:-1]
            + b","
        )
        items = [_without_kind(text, head) for text in items]
    envelope = json.dumps(
        {"kind": coverage.list_kind, "apiVersion": coverage.api_version, "metadata": metadata},
        separators=(",", ":"),
    ).encode()
    return b"".join((envelope[:-1], b',"items":[', b",".join(items), b"]}"))


def _without_kind(text: bytes, head: bytes) -> bytes:
    if text.startswith(head):
        return b"{" + text[len(head) :]
    obj = json.loads(text)
    if isinstance(obj, dict):
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
    return json.dumps(obj, separators=(",", ":")).encode()


def _locally_applied(
    verb: Verb, current: dict[str, Any], sent: object, content_type: str
) -> dict[str, Any]:
    if verb is Verb.PATCH:
        return apply_patch(current, sent, content_type)
    if content_type.split(";", 1)[0].strip() == "application/json" and isinstance(sent, dict):
        return sent
    raise PatchError(f"body type {content_type!r} is not applied offline")


def _lease_from_protobuf(call: Call, current: dict[str, Any]) -> dict[str, Any]:
    """The Lease a protobuf PUT asks for, as JSON: the cached object with the body's spec.

    Only what a renewal changes is taken from the body (``spec``, and ``resourceVersion`` for
    the conflict check); the sync after reconnect sends only ``spec`` too. A body that also
    changes labels or annotations, or names another object, is refused (nothing is changed).
    """
    resource = call.resource
    if not (
        resource.group == "coordination.k8s.io"
        and resource.resource == "leases"
        and call.info.verb is Verb.UPDATE
    ):
        raise PatchError("protobuf bodies are applied offline only to Lease updates")
    body = decode_lease(call.body)
    meta = meta_of(current)
    if body.name not in {"", call.info.name} or body.namespace not in {"", call.info.namespace}:
        raise PatchError(f"the body names {body.namespace}/{body.name}")
    if body.labels != (meta.get("labels") or {}) or body.annotations != (
        meta.get("annotations") or {}
    ):
        raise PatchError("labels or annotations changed, which is not applied offline")
    return {
        **current,
        "metadata": {**meta, "resourceVersion": body.resource_version},
        "spec": body.spec,
    }


def _pending_key(call: Call) -> str:
    namespace = call.info.namespace or NO_NAMESPACE
    sub = call.info.subresource or "_"
    return f"p/{call.component}/{call.resource.key}/{namespace}/{call.info.name}/{sub}"


async def _heartbeat(proxy: KubeProxy, call: Call) -> web.StreamResponse:
    info = call.info
    current = await proxy.store.run(
        "get", lambda s: s.get(call.component, call.resource, info.namespace, info.name)
    )
    if not isinstance(current, dict):
        return _reject(proxy, call, f"{info.name!r} is not cached, so this heartbeat was not kept")
    if call.representation is Representation.OPAQUE:
        return _reject(proxy, call, "the client accepts only protobuf, which is not made offline")
    content_type = call.request.headers.get("Content-Type", "application/json")
    try:
        if content_type.split(";", 1)[0].strip().lower() == PROTOBUF:
            updated = _lease_from_protobuf(call, current)
            sent: object = updated
        else:
            sent = json.loads(call.body)
            updated = _locally_applied(info.verb, current, sent, content_type)
    except (ValueError, PatchError) as exc:  # ProtoError is a ValueError
        return _reject(proxy, call, f"the body could not be applied locally ({exc})")
    wanted_rv = (
        rv_of(updated)
        if info.verb is Verb.UPDATE
        else str(meta_of(sent).get("resourceVersion", "") if isinstance(sent, dict) else "")
    )
    if wanted_rv and wanted_rv != rv_of(current):
        message = (
            f'Operation cannot be fulfilled on {call.resource.resource} "{info.name}": '
            "the object has been modified; please apply your changes to the latest version"
        )
        return _json(status_object(409, "Conflict", message), status=409)
    result = dict(current)
    if info.subresource == "status":
        result["status"] = updated.get("status", current.get("status"))
    else:
        result = {**updated, "metadata": {**meta_of(updated), "resourceVersion": rv_of(current)}}
        result.setdefault("kind", current.get("kind"))
        result.setdefault("apiVersion", current.get("apiVersion"))
    record = {
        "component": call.component,
        "resource": call.resource.key,
        "namespace": info.namespace,
        "name": info.name,
        "subresource": info.subresource,
        "object": result,
    }
    key = _pending_key(call)

    def keep(store: CacheStore) -> None:
        store.put(call.component, call.resource, result, force=True)
        store.set_pending(key, record)

    await proxy.store.run("heartbeat", keep)
    proxy.store.publish(call.component, call.resource.key, Change(type="MODIFIED", obj=result))
    proxy.metrics.requests.labels(verb=info.verb.value, source="local_heartbeat").inc()
    return _json(result)


async def _token(proxy: KubeProxy, call: Call) -> web.StreamResponse:
    """A TokenRequest seen online, answered with the API server's token until it expires."""
    if call.representation is not Representation.JSON:
        return _reject(proxy, call, "the client accepts only protobuf, which is not made offline")
    key = tokens.request_key(call)
    answer = None if key is None else await tokens.cached_answer(proxy, key)
    if answer is None:
        return _reject(proxy, call, "no unexpired token for this request is cached")
    proxy.metrics.requests.labels(verb=call.info.verb.value, source="cache").inc()
    return _json(answer, status=201)


# ---------------------------------------------------------------- raw (discovery) answers


def _raw_key(call: Call) -> str:
    accept = call.request.headers.get("Accept", "")
    digest = hashlib.sha256(f"{call.request.path_qs}\n{accept}".encode()).hexdigest()
    return f"r/{digest}"


async def remember_raw(proxy: KubeProxy, call: Call, content_type: str, data: bytes) -> None:
    """Keep a discovery or version answer, so kubectl finds its way offline."""
    if "json" not in content_type:
        return
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return
    record = {"content_type": content_type, "body": text}
    key = _raw_key(call)
    await proxy.store.run("put_raw", lambda s: s.put_raw(key, record))


async def _answer_raw(proxy: KubeProxy, call: Call) -> web.StreamResponse:
    if call.info.verb is Verb.GET:
        key = _raw_key(call)
        record = await proxy.store.run("get_raw", lambda s: s.get_raw(key))
        if isinstance(record, dict):
            proxy.metrics.requests.labels(verb="get", source="cache").inc()
            return web.Response(
                body=str(record["body"]).encode(),
                headers={"Content-Type": str(record["content_type"])},
            )
    return _reject(proxy, call, f"{call.request.path} is not cached")


# ---------------------------------------------------------------- sync after reconnect


async def sync_loop(proxy: KubeProxy) -> None:
    """Whenever the upstream comes back, send the heartbeats answered locally meanwhile."""
    while True:
        await proxy.health.wait_for(State.ONLINE)
        await sync_pending(proxy)
        await proxy.health.wait_for(State.OFFLINE)


async def sync_pending(proxy: KubeProxy) -> int:
    """Send every pending heartbeat upstream; returns how many were sent."""
    pending = await proxy.store.run("pending", lambda s: s.pending()) or {}
    sent = 0
    for key, record in sorted(pending.items()):
        try:
            ok = await _sync_one(proxy, record)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("heartbeat sync stopped, upstream unreachable: %s", exc)
            proxy.metrics.synced.labels(result="unreachable").inc()
            return sent
        proxy.metrics.synced.labels(result="ok" if ok else "dropped").inc()
        await _clear(proxy, key, record)
        sent += ok
    if sent:
        log.info("sent %s locally answered heartbeats upstream", sent)
    return sent


async def _keep_synced(
    proxy: KubeProxy, component: str, resource: Resource, obj: dict[str, Any]
) -> None:
    await proxy.store.run("put", lambda s: s.put(component, resource, obj))


async def _clear(proxy: KubeProxy, key: str, record: dict[str, Any]) -> None:
    await proxy.store.run("clear_pending", lambda s: s.clear_pending(key, record))


async def _sync_one(proxy: KubeProxy, record: dict[str, Any]) -> bool:
    resource = Resource.from_key(str(record["resource"]))
    namespace, name = str(record["namespace"]), str(record["name"])
    subresource = str(record["subresource"])
    local = record["object"]
    url = proxy.upstream_url(resource.path(namespace, name))
    session = proxy.upstream.session
    timeout = aiohttp.ClientTimeout(total=proxy.settings.request_timeout)
    for _ in range(_MAX_SYNC_ATTEMPTS):
        async with session.get(url, timeout=timeout) as response:
            if response.status == 404:
                log.warning(
                    "%s %s/%s is gone upstream; dropping its heartbeat",
                    resource.key,
                    namespace,
                    name,
                )
                return False
            response.raise_for_status()
            current = await response.json()
        if subresource == "status":
            merged = {**current, "status": local.get("status", {})}
        else:
            merged = {**current, "spec": local.get("spec", {})}
        target = url + ("/status" if subresource == "status" else "")
        async with session.put(target, json=merged, timeout=timeout) as response:
            if response.status == 409:
                continue
            response.raise_for_status()
            stored = await response.json()
        await _keep_synced(proxy, str(record["component"]), resource, stored)
        return True
    log.warning("heartbeat for %s %s/%s kept conflicting; dropped", resource.key, namespace, name)
    return False
