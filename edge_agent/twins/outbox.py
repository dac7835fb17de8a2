"""The durable outbox: everything the cloud must learn from this agent, oldest first.

Rules:

1. A record is appended in the same SQLite transaction as the state change it reports
   (twin_store.py), before the device gets its answer. A kill -9 at any point loses nothing
   that was answered.
2. `run` hands the oldest records, in order, to the injected `Sender` (the tunnel). A record is
   removed only after `deliver` returned, i.e. the cloud acknowledged the batch. Delivery is
   at least once; twin changes carry ``(origin, seq)`` and the cloud applies each once
   (device_models.apply_change), the other kinds are idempotent by content.
3. A failed delivery is retried with capped exponential backoff and jitter; `kick()` (call it
   when the tunnel reconnects) retries at once.
4. Bounded: at most `max_records`. When full, device reports are refused with ``outbox_full``
   (503) so the device keeps its value and retries, and the agent logs an error once per
   episode and counts every refusal (`Metrics.refused_outbox_full`). Availability changes get
   `availability_headroom` records more; beyond that the device row keeps the latest state with
   an "unsent" flag and it is queued as soon as there is room. Nothing is ever dropped silently.
5. Backlog on /metrics (`OutboxCollector`): records waiting, and how long the oldest has
   waited. The table keeps no timestamps, so the age comes from memory: `notify` (called after
   each commit) notes (newest id, time) at most once per `AGE_RESOLUTION` seconds, and the age
   of the oldest record is measured from the first note that covers its id: exact to within
   that resolution (never younger than it is). Records found at start count from the start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.twins.payloads import Code, RequestError
from edge_agent.twins.twin_store import TwinStore

__all__ = ["Metrics", "Outbox", "OutboxCollector", "OutboxSettings", "Sender"]

log = logging.getLogger("edge_agent.twins.outbox")

AGE_RESOLUTION = 1.0
"""Seconds between two notes of the newest record id: the oldest record's age is exact to
within this, and the notes kept are at most one per second of backlog."""

MAX_AGE_NOTES = 100_000
"""Notes kept at most (27 h of a backlog growing every second); past it the last note covers
the newer records too, so the age errs on the old side, never the young one."""


class Sender(Protocol):
    """Delivers outbox records to the cloud (the lead implements it over the tunnel)."""

    async def deliver(self, batch: list[dict[str, Any]]) -> None:
        """Return once the cloud durably accepted every record of `batch`; raise otherwise.

        Records come oldest first and must be applied in this order. Each is a JSON object
        with ``kind`` and ``outboxId`` (see docs/mqtt.md, "What goes to the cloud").
        """
        ...


@dataclass(frozen=True, kw_only=True)
class OutboxSettings:
    max_records: int = 100_000
    """Records kept for the cloud at most. A record is at most ~100 KB (two 32 KB post-images
    with metadata), usually ~300 B; 100k typical records are ~30 MB of disk and hours of
    reports from 1,000 devices during an outage."""

    availability_headroom: int = 10_000
    """Extra records allowed for availability changes beyond `max_records`, so that a full
    outbox still records devices going offline (one or two records per device)."""

    batch_records: int = 256
    """Records per `deliver` call at most: big enough to amortise a tunnel round trip."""

    batch_bytes: int = 1024 * 1024
    """JSON bytes per `deliver` call at most (one record may exceed it and goes alone)."""

    retry_initial: float = 0.5
    """Seconds before the first retry after a failed delivery."""

    retry_max: float = 30.0
    """Ceiling in seconds of the doubling retry delay; a cloud that comes back is used
    within this time even without `kick()`."""


@dataclass(kw_only=True)
class Metrics:
    """Counters for the local API's /metrics (monotonic unless stated)."""

    delivered_records: int = 0
    delivery_failures: int = 0
    refused_outbox_full: int = 0
    availability_deferred: int = 0
    reports_accepted: int = 0
    reports_rejected: int = 0
    desired_delivered: int = 0
    devices_onboarded: int = 0
    claims_rejected: int = 0
    foreign_messages: int = 0
    """Device messages ignored because another node owns the device (a shared broker)."""
    broker_sessions: int = 0
    """Sessions of the agent on the broker since start: more than one means it was cut off."""


class Outbox:
    def __init__(
        self,
        *,
        store: TwinStore,
        sender: Sender,
        settings: OutboxSettings,
        metrics: Metrics,
        on_room: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._clock = clock
        self._notes: deque[tuple[int, float]] = deque()
        """(newest outbox id, when first seen), ids growing: when each record started waiting."""
        _, newest = store.outbox_bounds()
        if newest >= 0:
            self._notes.append((newest, clock()))  # from before this start: count from now
        self._sender = sender
        self._settings = settings
        self._metrics = metrics
        self._on_room = on_room
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._full = False

    @property
    def size(self) -> int:
        return self._store.outbox_size()

    def check_room(
        self, records: int, *, availability: bool = False, waiting: int | None = None
    ) -> None:
        """Raise RequestError(outbox_full) unless `records` more fit (call before writing).

        `waiting`: the committed records, when the caller looked once for a whole batch
        (nothing commits or delivers while a batch is staged); None looks now.
        """
        cap = self._settings.max_records
        if availability:
            cap += self._settings.availability_headroom
        if waiting is None:
            waiting = self.size
        if waiting + records <= cap:
            if self._full and waiting < self._settings.max_records * 9 // 10:
                self._full = False
                log.warning("outbox has room again: %s records waiting", waiting)
            return
        if not availability:
            self._metrics.refused_outbox_full += 1
        if not self._full:
            self._full = True
            log.error(
                "outbox FULL: %s records wait for the cloud (cap %s); device reports are refused"
                " with outbox_full until the cloud acknowledges",
                waiting,
                cap,
            )
        raise RequestError(
            Code.OUTBOX_FULL,
            f"the agent holds {waiting} records for the cloud (cap {cap}); retry later",
        )

    def notify(self) -> None:
        """New records were committed: deliver them."""
        self._note_newest()
        self._wake.set()

    def _note_newest(self) -> None:
        _, newest = self._store.outbox_bounds()
        if newest < 0:
            return
        now = self._clock()
        if self._notes and newest <= self._notes[-1][0]:
            return
        if self._notes and (
            now - self._notes[-1][1] < AGE_RESOLUTION or len(self._notes) >= MAX_AGE_NOTES
        ):
            # Extend the last note: these records count from its (earlier) time.
            self._notes[-1] = (newest, self._notes[-1][1])
            return
        self._notes.append((newest, now))

    def oldest_age(self) -> float:
        """Seconds the oldest waiting record has waited (0 when none waits); see rule 5."""
        oldest, newest = self._store.outbox_bounds()
        while self._notes and self._notes[0][0] < oldest:
            self._notes.popleft()  # every record of this note was delivered
        if newest < oldest:
            self._notes.clear()
            return 0.0
        if not self._notes:  # committed without notify (not done today): count from now
            self._notes.append((newest, self._clock()))
        return max(0.0, self._clock() - self._notes[0][1])

    def kick(self) -> None:
        """Retry now instead of waiting out the backoff (e.g. the tunnel just reconnected)."""
        self._kick.set()
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever; cancel to stop. Never raises for a failing sender."""
        delay = self._settings.retry_initial
        while True:
            batch = self._store.outbox_peek(
                limit=self._settings.batch_records, max_bytes=self._settings.batch_bytes
            )
            if not batch:
                self._wake.clear()
                if self._on_room is not None:
                    self._on_room()
                if self._store.outbox_size() == 0:
                    await self._wake.wait()
                continue
            records = [{**json.loads(body), "outboxId": row_id} for row_id, body in batch]
            try:
                await self._sender.deliver(records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any sender failure means "retry later"
                self._metrics.delivery_failures += 1
                log.warning(
                    "delivering %s outbox records failed (%s: %s); retry in %.1f s",
                    len(records),
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await self._backoff(delay)
                delay = min(delay * 2, self._settings.retry_max)
                continue
            delay = self._settings.retry_initial
            self._store.outbox_remove_through(batch[-1][0])
            self._metrics.delivered_records += len(records)
            if self._on_room is not None:
                self._on_room()

    async def _backoff(self, delay: float) -> None:
        self._kick.clear()
        jittered = delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not cryptography
        try:
            async with asyncio.timeout(jittered):
                await self._kick.wait()
        except TimeoutError:
            pass


class OutboxCollector(Collector):
    """The outbox on /metrics: backlog, oldest age, deliveries, failures and refusals.

    Register it in the agent's registry: ``registry.register(OutboxCollector(outbox))``.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        outbox, metrics = self._outbox, self._outbox._metrics  # noqa: SLF001 - same module
        yield GaugeMetricFamily(
            "edge_agent_twins_outbox_records",
            "Records waiting for the cloud to acknowledge them (device reports, changes)",
            value=outbox.size,
        )
        yield GaugeMetricFamily(
            "edge_agent_twins_outbox_oldest_age_seconds",
            "How long the oldest waiting record has waited (0 when none waits); records found"
            " at start count from the start",
            value=outbox.oldest_age(),
        )
        yield GaugeMetricFamily(
            "edge_agent_twins_outbox_capacity_records",
            "Records the outbox holds at most before device reports are refused",
            value=outbox._settings.max_records,  # noqa: SLF001 - same module
        )
        yield CounterMetricFamily(
            "edge_agent_twins_outbox_delivered_records",
            "Records the cloud acknowledged",
            value=metrics.delivered_records,
        )
        yield CounterMetricFamily(
            "edge_agent_twins_outbox_delivery_failures",
            "Batches whose delivery failed (retried with backoff)",
            value=metrics.delivery_failures,
        )
        yield CounterMetricFamily(
            "edge_agent_twins_outbox_refused",
            "Device reports refused with outbox_full: the write that could not be queued",
            value=metrics.refused_outbox_full,
        )
