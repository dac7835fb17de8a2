# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Heartbeats while offline: a node's Lease and status answered locally, synced on return.

Lease update/patch (JSON, or kubelet's protobuf PUT decoded by ``protowire``) and node
``status`` update/patch are applied to the cached object, answered 200 and kept as
*pending*; they keep the upstream resourceVersion (a made-up one could collide with a real
one later). :func:`sync_loop` sends them upstream after reconnect, on the current upstream
object (Lease: ``spec``; node: ``status``), retrying on 409.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
from aiohttp import web

from edge_agent.kubecache.answers import json_answer, reject
from edge_agent.kubecache.call import Call
from edge_agent.kubecache.health import State
from edge_agent.kubecache.keys import NO_NAMESPACE, Resource, Verb
from edge_agent.kubecache.protowire import decode_lease
from edge_agent.kubecache.shared import Shared
from edge_agent.kubecache.store import CacheStore, Change, meta_of, rv_of
from edge_agent.kubecache.wire import (
    PROTOBUF,
    PatchError,
    Representation,
    apply_patch,
    status_object,
)

log = logging.getLogger("edge_agent.kubecache.heartbeats")

_MAX_SYNC_ATTEMPTS = 3


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


async def answer(shared: Shared, call: Call) -> web.StreamResponse:
    info = call.info
    current = await shared.store.run(
        "get", lambda s: s.get(call.component, call.resource, info.namespace, info.name)
    )
    if not isinstance(current, dict):
        return reject(shared, call, f"{info.name!r} is not cached, so this heartbeat was not kept")
    if call.representation is Representation.OPAQUE:
        return reject(shared, call, "the client accepts only protobuf, which is not made offline")
    content_type = call.request.headers.get("Content-Type", "application/json")
    try:
        if content_type.split(";", 1)[0].strip().lower() == PROTOBUF:
            updated = _lease_from_protobuf(call, current)
            sent: object = updated
        else:
            sent = json.loads(call.body)
            updated = _locally_applied(info.verb, current, sent, content_type)
    except (ValueError, PatchError) as exc:  # ProtoError is a ValueError
        return reject(shared, call, f"the body could not be applied locally ({exc})")
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
        return json_answer(status_object(409, "Conflict", message), status=409)
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

    await shared.store.run("heartbeat", keep)
    shared.store.publish(call.component, call.resource.key, Change(type="MODIFIED", obj=result))
    shared.metrics.requests.labels(verb=info.verb.value, source="local_heartbeat").inc()
    return json_answer(result)


# ---------------------------------------------------------------- sync after reconnect


async def sync_loop(shared: Shared) -> None:
    """Whenever the upstream comes back, send the heartbeats answered locally meanwhile."""
    while True:
        await shared.health.wait_for(State.ONLINE)
        await sync_pending(shared)
        await shared.health.wait_for(State.OFFLINE)


async def sync_pending(shared: Shared) -> int:
    """Send every pending heartbeat upstream; returns how many were sent."""
    pending = await shared.store.run("pending", lambda s: s.pending()) or {}
    sent = 0
    for key, record in sorted(pending.items()):
        try:
            ok = await _sync_one(shared, record)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("heartbeat sync stopped, upstream unreachable: %s", exc)
            shared.metrics.synced.labels(result="unreachable").inc()
            return sent
        shared.metrics.synced.labels(result="ok" if ok else "dropped").inc()
        await _clear(shared, key, record)
        sent += ok
    if sent:
        log.info("sent %s locally answered heartbeats upstream", sent)
    return sent


async def _keep_synced(
    shared: Shared, component: str, resource: Resource, obj: dict[str, Any]
) -> None:
    await shared.store.run("put", lambda s: s.put(component, resource, obj))


async def _clear(shared: Shared, key: str, record: dict[str, Any]) -> None:
    await shared.store.run("clear_pending", lambda s: s.clear_pending(key, record))


async def _sync_one(shared: Shared, record: dict[str, Any]) -> bool:
    resource = Resource.from_key(str(record["resource"]))
    namespace, name = str(record["namespace"]), str(record["name"])
    subresource = str(record["subresource"])
    local = record["object"]
    url = shared.upstream_url(resource.path(namespace, name))
    session = shared.upstream.session
    timeout = shared.request_timeout()
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
        await _keep_synced(shared, str(record["component"]), resource, stored)
        return True
    log.warning("heartbeat for %s %s/%s kept conflicting; dropped", resource.key, namespace, name)
    return False
