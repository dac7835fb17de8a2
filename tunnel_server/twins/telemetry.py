"""Telemetry history: the numeric values devices report, per property and minute.

Rules (docs/device-models.md, "Telemetry history"):

* Fed by ``CloudTwinReplica.reported_observers``: every reported change the cloud applies calls
  ``observe(key, values, at)`` with what changed. Numeric leaves (int or float, not bool,
  finite) become samples of the property, nested members dotted (``schedule.comfort``); other
  values are not series. ``at`` is when the edge took the report (the change's time), so a
  report held in the outbox during an outage lands at its minute; it is clamped to the
  server's clock (a node whose clock runs ahead does not write the future) and a sample older
  than the retention is dropped.
* Downsampled like node status (``status/history.py``): one row per (device, property, minute)
  with the count, mean, min, max and last value of that minute's samples. Writes are batched:
  samples land in memory and are flushed once a second in one transaction.
* Bounded: ``max_series`` series in all (new ones past it are dropped, logged once a minute),
  ``max_properties`` per report, ``retention`` of history (rows older are pruned). Disk is at most
  ``max_series * retention / 60`` rows of ~60 bytes: 10,000 series for 25 h is 15 M rows, ~1 GB;
  memory is the set of known series plus one accumulator per series and minute between flushes.
* Its own SQLite file (``telemetry.sqlite3``): history never takes the twin store's lock, and
  the file can be deleted to start afresh.

Times are UNIX seconds supplied by the caller; only ``observe`` reads the clock it was given.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TELEMETRY_FILE",
    "TelemetryHistory",
    "TelemetryPoint",
    "TelemetrySettings",
    "numeric_leaves",
]

log = logging.getLogger("tunnel_server.twins.telemetry")

TELEMETRY_FILE = "telemetry.sqlite3"
SCHEMA_VERSION = 1
DeviceKey = tuple[str, str]


@dataclass(frozen=True, kw_only=True)
class TelemetrySettings:
    retention: float = 25 * 3600.0
    """Seconds of per-minute history kept: 25 h, so a 24 h chart is always full (as for nodes)."""

    max_series: int = 10_000
    """Series (device, property) in all: bounds disk (~1 GB at 25 h) and the in-memory index."""

    max_properties: int = 64
    """Numeric leaves taken from one report (a model has at most 256 properties, few numbers)."""

    max_depth: int = 6
    """Object levels walked for nested members (models nest 5)."""

    flush_interval: float = 1.0
    """Seconds between batched writes: a device reporting every second costs no disk write each."""

    prune_interval: float = 300.0
    """Seconds between deletions of rows older than the retention."""

    max_future: float = 60.0
    """Seconds a report's time may be ahead of the server's clock before it is clamped to now."""


@dataclass(frozen=True, kw_only=True)
class TelemetryPoint:
    minute: int
    samples: int
    mean: float
    minimum: float
    maximum: float
    last: float


@dataclass
class _Minute:
    samples: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    last: float = 0.0
    last_at: float = -math.inf

    def add(self, value: float, at: float) -> None:
        self.samples += 1
        self.total += value
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
        if at >= self.last_at:
            self.last, self.last_at = value, at


def numeric_leaves(
    values: Mapping[str, object], *, max_depth: int, limit: int, prefix: str = ""
) -> Iterator[tuple[str, float]]:
    """``(dotted path, value)`` of every finite int/float leaf, at most ``limit`` of them."""
    count = 0
    stack: list[tuple[str, Mapping[str, object], int]] = [(prefix, values, 1)]
    while stack:
        path, mapping, depth = stack.pop()
        for key, value in mapping.items():
            here = f"{path}.{key}" if path else key
            if isinstance(value, dict):
                if depth < max_depth:
                    stack.append((here, value, depth + 1))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                number = float(value)
                if math.isfinite(number):
                    yield here, number
                    count += 1
                    if count >= limit:
                        return


_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    node TEXT NOT NULL,
    device TEXT NOT NULL,
    property TEXT NOT NULL,
    minute INTEGER NOT NULL,
    n INTEGER NOT NULL,
    total REAL NOT NULL,
    minimum REAL NOT NULL,
    maximum REAL NOT NULL,
    last REAL NOT NULL,
    PRIMARY KEY (node, device, property, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_by_minute ON points (minute);
"""

_UPSERT = (
    "INSERT INTO points (node, device, property, minute, n, total, minimum, maximum, last)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node, device, property, minute) DO UPDATE"
    " SET n = n + excluded.n, total = total + excluded.total,"
    " minimum = MIN(minimum, excluded.minimum), maximum = MAX(maximum, excluded.maximum),"
    " last = excluded.last"
)


class TelemetryHistory:
    """Per-minute telemetry of every device property, over one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        settings: TelemetrySettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{path} has telemetry schema {version}, newer than this server: delete it"
                " (it holds only telemetry history)"
            )
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._series: set[tuple[str, str, str]] = {
            (node, device, prop)
            for node, device, prop in self._db.execute(
                "SELECT DISTINCT node, device, property FROM points"
            )
        }
        self._pending: dict[tuple[str, str, str, int], _Minute] = {}
        self._dropped = 0
        self._warned_at = -math.inf

    @property
    def series_count(self) -> int:
        return len(self._series)

    def observe(self, key: DeviceKey, values: Mapping[str, object], at: float) -> None:
        """A reported change of ``key``: its numeric values become samples at ``at``."""
        settings = self.settings
        now = self._clock()
        if not math.isfinite(at) or at > now + settings.max_future:
            at = now
        if at < now - settings.retention:
            return
        minute = int(at // 60) * 60
        for prop, value in numeric_leaves(
            values, max_depth=settings.max_depth, limit=settings.max_properties
        ):
            series = (key[0], key[1], prop)
            if series not in self._series:
                if len(self._series) >= settings.max_series:
                    self._drop(now)
                    continue
                self._series.add(series)
            self._pending.setdefault((*series, minute), _Minute()).add(value, at)

    def _drop(self, now: float) -> None:
        self._dropped += 1
        if now - self._warned_at >= 60:
            self._warned_at = now
            log.warning(
                "telemetry: %s series already (the bound); %s samples of new series dropped",
                self.settings.max_series,
                self._dropped,
            )

    def properties(self, key: DeviceKey) -> list[str]:
        """The device's properties that have a series."""
        return sorted(p for node, device, p in self._series if (node, device) == key)

    def has_series(self, key: DeviceKey, prop: str) -> bool:
        return (key[0], key[1], prop) in self._series

    def points(
        self, key: DeviceKey, prop: str, *, since: float, until: float
    ) -> list[TelemetryPoint]:
        """Per-minute points with ``since <= minute <= until``, oldest first."""
        self.flush()
        rows = self._db.execute(
            "SELECT minute, n, total, minimum, maximum, last FROM points"
            " WHERE node = ? AND device = ? AND property = ? AND minute >= ? AND minute <= ?"
            " ORDER BY minute",
            (key[0], key[1], prop, int(since // 60) * 60, until),
        ).fetchall()
        return [
            TelemetryPoint(
                minute=minute, samples=n, mean=total / n, minimum=lo, maximum=hi, last=last
            )
            for minute, n, total, lo, hi, last in rows
            if n
        ]

    def flush(self) -> int:
        """Write the pending minutes in one transaction; the rows written."""
        if not self._pending:
            return 0
        rows = [
            (node, device, prop, minute, m.samples, m.total, m.minimum, m.maximum, m.last)
            for (node, device, prop, minute), m in self._pending.items()
        ]
        self._pending.clear()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(_UPSERT, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return len(rows)

    def prune(self, now: float) -> int:
        """Delete rows older than the retention (and forget series left empty)."""
        cutoff = int((now - self.settings.retention) // 60) * 60
        deleted = int(self._db.execute("DELETE FROM points WHERE minute < ?", (cutoff,)).rowcount)
        if deleted:
            self._series = {
                (node, device, prop)
                for node, device, prop in self._db.execute(
                    "SELECT DISTINCT node, device, property FROM points"
                )
            } | {(n, d, p) for n, d, p, _m in self._pending}
            log.info("telemetry: pruned %s rows before %s", deleted, cutoff)
        return deleted

    def close(self) -> None:
        self.flush()
        self._db.close()
