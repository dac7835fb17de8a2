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

import logging

from aiohttp import ClientConnectionResetError, web

from edge_agent.kubecache import discovery, heartbeats, tokens
from edge_agent.kubecache.answers import json_answer, reject
from edge_agent.kubecache.call import Call
from edge_agent.kubecache.keys import Verb
from edge_agent.kubecache.listing import decode_continue, list_head, render_raw_list
from edge_agent.kubecache.shared import Shared
from edge_agent.kubecache.store import Scope, SnapshotChangedError, SnapshotExpiredError
from edge_agent.kubecache.wire import Representation, status_object
from fleet_model.labels import SelectorError

log = logging.getLogger("edge_agent.kubecache.offline")

STREAM_CHUNK_BYTES = 256 * 1024
"""Stored JSON read per disk-thread hop for a streamed LIST: the answer's memory bound
(about one chunk, never the list), and few enough hops (about 50 for 5,000 pods) that the
thread switches cost little."""


async def answer(shared: Shared, call: Call) -> web.StreamResponse:  # noqa: PLR0911 - one answer per case, flat reads best
    await shared.flush_writes()  # answers already sent upstream are in the cache first
    if not call.info.is_resource:
        return await discovery.answer(shared, call)
    if call.info.verb in {Verb.GET, Verb.LIST}:
        if not (call.cached_agent and call.representation is not Representation.OPAQUE):
            return reject(shared, call, f"{call.component} answers are not cached in this format")
        if call.info.subresource not in {"", "status"}:
            return reject(shared, call, f"subresource {call.info.subresource!r} is not cached")
        if call.info.verb is Verb.GET:
            return await _get(shared, call)
        return await _list(shared, call)
    if heartbeats.is_heartbeat(call) and call.cached_agent:
        return await heartbeats.answer(shared, call)
    if tokens.is_token_request(call) and call.cached_agent:
        return await tokens.answer(shared, call)
    return reject(shared, call, f"this {call.info.verb.value} was not sent")


async def _get(shared: Shared, call: Call) -> web.StreamResponse:
    """The object as the newest view holding its name recorded it; 404 if that view lacks it."""
    info = call.info
    found = await shared.store.run(
        "get", lambda s: s.lookup(call.component, call.resource, info.namespace, info.name)
    )
    known, obj = found if found is not None else (False, None)
    if not known:
        return reject(shared, call, f"{info.name!r} is not in the cache to answer from")
    shared.metrics.requests.labels(verb="get", source="cache").inc()
    if obj is not None:
        return json_answer(obj)
    message = f'{call.resource.resource} "{info.name}" not found'
    details = {"name": info.name, "group": call.resource.group, "kind": call.resource.resource}
    return json_answer(status_object(404, "NotFound", message, details=details), status=404)


async def _list(shared: Shared, call: Call) -> web.StreamResponse:
    """One page of the newest view covering the query, read as one snapshot.

    A continued LIST (ours or the API server's token) is served only from a view whose
    snapshot equals the token's; otherwise 410 Expired, as the API server answers for a
    compacted token, and clients re-list. Never a page of another snapshot (duplicates).
    """
    query = call.request.query
    try:
        scope = shared.scope_of(call)
        start, at = decode_continue(query["continue"]) if query.get("continue") else ("", "")
        limit = int(query.get("limit", "0") or "0")
    except (SelectorError, ValueError) as exc:
        return json_answer(status_object(400, "BadRequest", str(exc)), status=400)
    if limit <= 0:
        return await _stream_list(shared, call, scope, start=start, at=at)
    try:
        found = await shared.store.run(
            "list",
            lambda s: s.snapshot(scope, start=start, limit=max(limit, 0), at=at or ""),
        )
    except SnapshotExpiredError:
        return _expired(shared)
    if found is None:
        return reject(shared, call, "no complete list covering this query is cached")
    coverage, page = found
    shared.metrics.requests.labels(verb="list", source="cache").inc()
    return web.Response(body=render_raw_list(coverage, page), content_type="application/json")


def _expired(shared: Shared) -> web.Response:
    shared.metrics.requests.labels(verb="list", source="cache").inc()
    message = (
        "The provided continue parameter is too old to display a consistent list result "
        "from the edge cache. You can start a new list without the continue parameter."
    )
    return json_answer(status_object(410, "Expired", message), status=410)


async def _stream_list(
    shared: Shared, call: Call, scope: Scope, *, start: str, at: str
) -> web.StreamResponse:
    """An unpaged LIST written as it is read: envelope, then items chunk by chunk.

    Holds one chunk (``STREAM_CHUNK_BYTES`` of stored texts) at a time, never the whole
    list; each chunk is read on the disk thread after the previous one was written and
    drained (``StreamResponse.write`` waits while the socket's buffer is full), so a slow
    client is paced, not buffered. If the view changes before the last chunk (the link came
    back and a write-through moved it) or the disk fails, the connection is aborted
    mid-body: a truncated chunked body the client reports as an error and re-lists, never a
    list mixing two snapshots.
    """
    try:
        reader = await shared.store.run("list", lambda s: s.open_list(scope, start=start, at=at))
    except SnapshotExpiredError:
        return _expired(shared)
    if reader is None:
        return reject(shared, call, "no complete list covering this query is cached")
    shared.metrics.requests.labels(verb="list", source="cache").inc()
    head, strip = list_head(reader.coverage)
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await response.prepare(call.request)
    separator = b""
    try:
        await response.write(head)
        while True:
            try:
                chunk = await shared.store.run(
                    "list", lambda s: s.read_list(reader, STREAM_CHUNK_BYTES)
                )
            except SnapshotChangedError:
                chunk = None
            if chunk is None:  # changed, or the disk failed: cut the answer (see above)
                log.warning(
                    "offline LIST of %s cut: its view changed or the disk failed", scope.key
                )
                transport = call.request.transport
                if transport is not None:
                    transport.abort()
                return response
            if not chunk:
                break
            await response.write(separator + b",".join(strip(text) for text in chunk))
            separator = b","
        await response.write(b"]}")
        await response.write_eof()
    except (ConnectionResetError, ClientConnectionResetError):
        log.debug("client left during an offline LIST of %s", scope.key)
    return response
