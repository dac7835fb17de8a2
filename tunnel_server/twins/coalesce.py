"""When to write a device's twin to a remote store: coalesced per device, bounded, acked after.

The rules of "What is coalesced" in docs/ha.md ("Twins in the Kubernetes API"), as a pure
object (no I/O, no clock of its own, no event loop) that a store on the Kubernetes API is to
drive; nothing uses it yet (the SQLite store commits every batch at once):

- ``add(key, batch)``: a batch's records touched ``key``. The device is written at most once
  per ``interval`` seconds: its first pending record starts the clock, and every record that
  arrives before the write goes into that one write. It is due at once when its pending
  records reach ``max_pending``.
- ``due(now)``: the devices to write now, oldest deadline first, as many as the token bucket
  (``rate`` writes per second, ``burst``) allows; a device that waits for a token keeps
  gathering records (the bound on etcd's write rate, whatever the fleet's report rate).
- ``written(key)``: its write is stored; the batches every one of whose devices is now
  written are returned, in the order they came, to be acknowledged to the edge. A batch
  that touched no device is returned by ``add_empty`` at once if nothing before it waits.
- ``failed(key, now)``: the write failed; the device is due again after ``interval``, its
  records still pending (with any that came meanwhile), its batches still unacknowledged.
- One write per device at a time: records that arrive while its write is in flight gather
  for the next one (a later generation), and their batches wait for that one.

Batches are acknowledged in order: a later batch whose devices are written waits for an
earlier one still pending (the edge's outbox is one FIFO).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

K = TypeVar("K")


@dataclass
class _Pending:
    since: float
    generation: int
    records: int = 0


class Coalescer(Generic[K]):
    """Per-device pending writes, their deadlines, the token bucket and the batches' acks."""

    def __init__(self, *, interval: float, max_pending: int, rate: float, burst: int) -> None:
        if interval < 0 or max_pending < 1 or rate <= 0 or burst < 1:
            raise ValueError("interval >= 0, max_pending >= 1, rate > 0 and burst >= 1")
        self.interval = interval
        self.max_pending = max_pending
        self.rate = rate
        self.burst = burst
        self._pending: dict[K, _Pending] = {}
        """Records gathering for the device's next write."""
        self._writing: dict[K, int] = {}
        """The generation of the device's write in flight (one at a time per device)."""
        self._generations = 0
        self._batches: OrderedDict[int, dict[K, int]] = OrderedDict()
        """Per batch, in the edge's order: each device it touched and the generation of the
        write that will hold its records."""
        self._tokens = float(burst)
        self._refilled: float | None = None

    @property
    def pending(self) -> int:
        """Devices with records not yet written (gathering or being written)."""
        return len(set(self._pending) | set(self._writing))

    def add(self, key: K, batch: int, *, now: float, records: int = 1) -> None:
        """``records`` of ``batch`` touched ``key`` (batches are added in the edge's order)."""
        held = self._pending.get(key)
        if held is None:
            self._generations += 1
            held = self._pending[key] = _Pending(since=now, generation=self._generations)
        held.records += records
        self._batches.setdefault(batch, {})[key] = held.generation

    def add_empty(self, batch: int) -> list[int]:
        """A batch that touched no device (only duplicates): the batches to ack now."""
        self._batches.setdefault(batch, {})
        return self._ready()

    def next_deadline(self) -> float | None:
        """When the earliest gathering device is due (ignoring the bucket), or None."""
        return min((p.since + self.interval for p in self._pending.values()), default=None)

    def due(self, now: float) -> list[K]:
        """The devices to write now, oldest first, within the bucket; each is then in flight."""
        self._refill(now)
        ready = sorted(
            (p.since, p.generation, key)
            for key, p in self._pending.items()
            if key not in self._writing
            and (p.records >= self.max_pending or now >= p.since + self.interval)
        )
        out: list[K] = []
        for _, generation, key in ready:
            if self._tokens < 1:
                break
            self._tokens -= 1
            del self._pending[key]
            self._writing[key] = generation
            out.append(key)
        return out

    def written(self, key: K) -> list[int]:
        """``key``'s write in flight is stored: the batches to acknowledge now, in order."""
        generation = self._writing.pop(key, None)
        if generation is not None:
            for keys in self._batches.values():
                if keys.get(key, generation + 1) <= generation:
                    del keys[key]
        return self._ready()

    def failed(self, key: K, *, now: float) -> None:
        """``key``'s write failed: its records gather again, due one interval from now."""
        generation = self._writing.pop(key, None)
        if generation is None:
            return
        held = self._pending.get(key)
        if held is None:
            self._pending[key] = _Pending(since=now, generation=generation, records=1)
            return
        held.since = now
        for keys in self._batches.values():
            if keys.get(key) == generation:
                keys[key] = held.generation

    def _ready(self) -> list[int]:
        done: list[int] = []
        while self._batches:
            batch_id, keys = next(iter(self._batches.items()))
            if keys:
                break
            del self._batches[batch_id]
            done.append(batch_id)
        return done

    def _refill(self, now: float) -> None:
        if self._refilled is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
