"""Live changes for the console: ``GET /api/v1/events``, server-sent events.

Every ``ApiSettings.event_interval`` the hub collects the nodes whose status changed (a report,
a lease running out, a tunnel session opening or closing, a node approved or revoked) and sends
one ``nodes`` event with their rows and a fresh overview to every subscriber. A new subscriber
first gets a ``snapshot`` with every row. Events::

    event: snapshot   data: {"nodes": [row, ...], "overview": {...}}
    event: nodes      data: {"nodes": [changed rows], "overview": {...}}
    event: expired    data: problem document, reason session_expired   (then the stream ends)
    event: revoked    data: problem document, reason session_revoked   (then the stream ends)

Rows are ``views.node_row``s (camelCase, RFC 3339 times), as ``GET /api/v1/nodes`` lists them;
the last two carry an RFC 9457 problem document (``web.errors.problem``), as a 401 would.

A session's streams end with ``revoked`` as soon as it signs out (``DELETE
/api/v1/sessions/current`` calls ``EventHub.end_session``). Any stream whose credential stops
working ends with ``revoked`` too (its ``reason`` says why: ``user_revoked``, ...): when the store's
revision moves (a user revoked by ``tunnel-server users revoke`` in another process), every
live stream's credential is checked again (and at once when this process rotates the admin
token). Every role may read the stream.

A subscriber whose queue is full (a stalled browser) is dropped; the console reconnects and
gets a new snapshot. Browsers' ``EventSource`` cannot send an Authorization header, so the
console reads this stream with ``fetch``; the token never goes into a URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from tunnel_server.api import access, auth
from tunnel_server.api.caller import Caller
from tunnel_server.api.hub import EventHub, sse_event
from tunnel_server.api.table import NodeTable
from tunnel_server.api.views import overview
from tunnel_server.app_keys import EVENT_STREAMS_KEY, HUB_KEY, SETTINGS_KEY, STORE_KEY, TABLE_KEY
from tunnel_server.web.errors import SECURITY_HEADERS, ApiError, problem

log = logging.getLogger("tunnel_server.api.events")


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/events``: the live stream."""
    caller = access.require(request, "read")
    hub = request.app[HUB_KEY]
    queue = hub.subscribe(session_id=caller.session_id)
    streams = request.app[EVENT_STREAMS_KEY]
    streams[queue] = auth.bearer(request)
    try:
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream; charset=utf-8",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        table = request.app[TABLE_KEY]
        snapshot = _for_caller(hub.snapshot(time.time()), caller, table)
        await response.write(b"retry: 2000\n\n" + snapshot.encode())
        async for chunk in _stream(queue, hub.settings.keepalive, caller.expires_at):
            await response.write(_for_caller(chunk, caller, table).encode())
    except (ConnectionResetError, asyncio.CancelledError):
        log.debug("live stream closed by the client")
        raise
    finally:
        hub.unsubscribe(queue)
        streams.pop(queue, None)
    return response


def _for_caller(chunk: str, caller: Caller, table: NodeTable) -> str:
    """A batch as a scoped caller may see it: without the rows of clusters outside its scope.

    Batches are built once for every subscriber; only a scoped caller's copy is parsed and
    rebuilt (its overview from the rows it may see), so unscoped streams cost nothing more.
    """
    if caller.clusters is None or not chunk.startswith(("event: snapshot\n", "event: nodes\n")):
        return chunk
    head, _, data = chunk.partition("\ndata: ")
    batch = json.loads(data)
    now = time.time()
    rows = [row for row in batch["nodes"] if access.sees_row(caller, row)]
    every = [row.data for row in table.rows(now) if access.sees_row(caller, row.data)]
    body = {"nodes": rows, "overview": overview(every, now=now)}
    return f"{head}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


async def _stream(
    queue: asyncio.Queue[str | None], keepalive: float, expires_at: float | None
) -> AsyncIterator[str]:
    while True:
        timeout = keepalive
        if expires_at is not None:
            timeout = min(timeout, max(0.0, expires_at - time.time()))
        try:
            async with asyncio.timeout(timeout):
                item = await queue.get()
        except TimeoutError:
            if expires_at is not None and time.time() >= expires_at:
                body = problem(
                    401, "session_expired", "this console session expired: sign in again"
                )
                yield sse_event("expired", body)
                return
            yield ": keepalive\n\n"
            continue
        if item is None:
            return
        yield item


def recheck_streams(app: web.Application) -> int:
    """End the live streams whose credential stopped working, with ``revoked``; how many.

    Run when the store's revision moves (a user revoked in another process), and at once by
    a route of this process that ends credentials (the admin token rotated).
    """
    hub = app[HUB_KEY]
    streams = app[EVENT_STREAMS_KEY]
    now = time.time()
    ended = 0
    for queue, token in list(streams.items()):
        try:
            auth.identify(app, token, now=now)
        except ApiError as refused:
            log.info("ending a live stream: %s", refused.code)
            hub.unsubscribe(queue)
            del streams[queue]
            while not queue.empty():  # batches it has not sent yet no longer matter
                queue.get_nowait()
            queue.put_nowait(sse_event("revoked", problem(401, refused.code, refused.message)))
            queue.put_nowait(None)
            ended += 1
    return ended


async def _recheck_credentials(app: web.Application) -> None:
    """End the streams whose credential stopped working, each time the store's revision moves."""
    store = app[STORE_KEY]
    interval = app[SETTINGS_KEY].store_poll_interval
    seen = store.revision()
    while True:
        await asyncio.sleep(interval)
        current = store.revision()
        if current == seen:
            continue
        seen = current
        recheck_streams(app)


def setup(app: web.Application, hub: EventHub) -> None:
    app[HUB_KEY] = hub
    app[EVENT_STREAMS_KEY] = {}
    app.router.add_get("/api/v1/events", events)

    async def background(_app: web.Application) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(hub.run(), name="api.event-hub"),
                group.create_task(_recheck_credentials(app), name="api.event-credentials"),
            ]
            yield
            for task in tasks:
                task.cancel()

    app.cleanup_ctx.append(background)

    async def end_streams(_app: web.Application) -> None:
        hub.close_all()

    app.on_shutdown.append(end_streams)
