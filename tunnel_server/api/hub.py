"""The event hub behind ``GET /api/v1/events``: changed nodes, batched, fanned out to queues.

See ``tunnel_server.api.events`` for the stream and its events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from tunnel_server.api.settings import ApiSettings
from tunnel_server.api.signer import REVOKED_MESSAGE
from tunnel_server.api.table import NodeTable
from tunnel_server.api.views import overview
from tunnel_server.web.errors import ApiError, problem

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
        event = sse_event("revoked", problem(401, "session_revoked", REVOKED_MESSAGE))
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
        """One batch: the rows that changed since the last tick, to every subscriber.

        With no subscriber the table is left alone: its changes pile up as names (bounded by
        the nodes) and are built when a stream, a list or a subscriber asks. Refreshing it for
        nobody re-read every node record every ``record_ttl`` and rebuilt every row every
        ``full_refresh``: 12 % of the server's CPU in a 3,000-agent reconnect storm.
        """
        if not self._subscribers:
            return
        changed = self._table.refresh(now)
        if not changed:
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


def sse_event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
