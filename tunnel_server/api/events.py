"""Live changes for the console: ``GET /api/v1/events``, server-sent events.

Every ``ApiSettings.event_interval`` the hub collects the nodes whose status changed (a report,
a lease running out, a tunnel session opening or closing, a node approved or revoked) and sends
one ``nodes`` event with their rows and a fresh overview to every subscriber. A new subscriber
first gets a ``snapshot`` with every row. Events::

    event: snapshot   data: {"nodes": [row, ...], "overview": {...}}
    event: nodes      data: {"nodes": [changed rows], "overview": {...}}
    event: expired    data: {"error": "session_expired", "message": ...}   (then the stream ends)
    event: revoked    data: {"error": "session_revoked", "message": ...}   (then the stream ends)

A session's streams end with ``revoked`` as soon as it signs out (``DELETE
/api/v1/sessions/current`` calls ``EventHub.end_session``).

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
from typing import Any

from aiohttp import web

from tunnel_server.api.auth import REVOKED_MESSAGE, authenticate
from tunnel_server.api.settings import ApiSettings
from tunnel_server.api.table import NodeTable
from tunnel_server.api.views import overview
from tunnel_server.web.errors import SECURITY_HEADERS, ApiError

log = logging.getLogger("tunnel_server.api.events")


class EventHub:
    """Collects changed node names and fans batches out to subscriber queues."""

    def __init__(self, *, settings: ApiSettings, table: NodeTable) -> None:
        self.settings = settings
        self._table = table
        self._subscribers: dict[asyncio.Queue[str | None], str | None] = {}
        """Each live stream's queue and the console session it belongs to (None: admin)."""
        self.batches = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, *, session_id: str | None = None) -> asyncio.Queue[str | None]:
        if len(self._subscribers) >= self.settings.max_subscribers:
            raise ApiError(
                503,
                "too_many_streams",
                f"{self.settings.max_subscribers} live streams are open: close a console tab",
                headers={"Retry-After": "5"},
            )
        queue: asyncio.Queue[str | None] = asyncio.Queue(self.settings.subscriber_queue)
        self._subscribers[queue] = session_id
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self._subscribers.pop(queue, None)

    def end_session(self, session_id: str) -> int:
        """End the live streams of a signed-out session with a ``revoked`` event; how many."""
        event = _event("revoked", {"error": "session_revoked", "message": REVOKED_MESSAGE})
        ended = [q for q, owner in self._subscribers.items() if owner == session_id]
        for queue in ended:
            del self._subscribers[queue]
            while not queue.empty():  # batches it has not sent yet no longer matter
                queue.get_nowait()
            queue.put_nowait(event)
            queue.put_nowait(None)
        return len(ended)

    def close_all(self) -> None:
        """End every live stream (server shutting down): they would hold the drain otherwise."""
        for queue in list(self._subscribers):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
        self._subscribers.clear()

    def snapshot(self, now: float) -> str:
        rows = self._table.rows(now)
        return _batch("snapshot", [r.text for r in rows], [r.data for r in rows], now)

    def tick(self, now: float) -> None:
        """One batch: the rows that changed since the last tick, to every subscriber."""
        changed = self._table.refresh(now)
        if not self._subscribers or not changed:
            return
        rows = self._table.rows(now)
        texts = [r.text for r in rows if r.data["name"] in changed]
        event = _batch("nodes", texts, [r.data for r in rows], now)
        self.batches += 1
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.info("dropping a live stream that fell behind")
                self._subscribers.pop(queue, None)
                queue.get_nowait()
                queue.put_nowait(None)  # tells the handler to end the stream

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.event_interval)
            self.tick(time.time())


def _batch(name: str, texts: list[str], every: list[dict[str, Any]], now: float) -> str:
    summary = json.dumps(overview(every, now=now), separators=(",", ":"))
    return f'event: {name}\ndata: {{"nodes":[{",".join(texts)}],"overview":{summary}}}\n\n'


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


HUB_KEY = web.AppKey("event_hub", EventHub)


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/events``: the live stream."""
    caller = authenticate(request)
    hub = request.app[HUB_KEY]
    queue = hub.subscribe(session_id=caller.session_id)
    try:
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream; charset=utf-8",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n" + hub.snapshot(time.time()).encode())
        async for chunk in _stream(queue, hub.settings.keepalive, caller.expires_at):
            await response.write(chunk.encode())
    except (ConnectionResetError, asyncio.CancelledError):
        log.debug("live stream closed by the client")
        raise
    finally:
        hub.unsubscribe(queue)
    return response


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
                body = {
                    "error": "session_expired",
                    "message": "this console session expired: sign in again",
                }
                yield _event("expired", body)
                return
            yield ": keepalive\n\n"
            continue
        if item is None:
            return
        yield item


def setup(app: web.Application, hub: EventHub) -> None:
    app[HUB_KEY] = hub
    app.router.add_get("/api/v1/events", events)

    async def background(_app: web.Application) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(hub.run(), name="api.event-hub")
            yield
            task.cancel()

    app.cleanup_ctx.append(background)

    async def end_streams(_app: web.Application) -> None:
        hub.close_all()

    app.on_shutdown.append(end_streams)
