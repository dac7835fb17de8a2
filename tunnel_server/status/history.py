"""Node status on the cloud side: the latest report of every node, its history, and a lease.

Rules:

* A node is **online** while its lease is fresh: every report renews it for
  ``lease_multiplier * interval`` seconds, where ``interval`` is the reporting interval the agent
  states in each report (floored at ``min_lease``). With the defaults (10 s reports, 3 of them) a
  node whose reports stop is marked offline 30 s after its last report, like OCM's lease (5 N) or
  Karmada's 40 s grace, but shorter because a report costs us little.
* A node whose status stream ends (its tunnel session closed: the agent stopped, crashed or
  lost its link and the socket noticed) is marked offline **at once**, with that reason.
* The latest metrics are a flat map ``"group.key" -> scalar``; a full report replaces it, a
  delta report merges into it (and ``removed`` keys are dropped).
* History keeps one row per node and minute (the mean of that minute's samples of CPU, memory,
  disk, load, network and tunnel RTT) for ``history_retention`` (25 h: a 24 h chart is always
  full). Writes are batched: reports land in memory and are flushed to SQLite once a second in
  one transaction, so 1,000 nodes reporting every 10 s cost ~1 write transaction per second.
* The data lives in its own SQLite file (``status.db`` beside ``store.db``): status writes never
  take the lock the security-relevant store needs, and the file can be deleted to start afresh.

Times are UNIX seconds supplied by the caller; this module reads no clock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger("tunnel_server.status_history")

STATUS_FILE = "status.db"
SCHEMA_VERSION = 1
Scalar = str | int | float | bool | None
Metrics = dict[str, Scalar]

SERIES: dict[str, str] = {
    "cpu": "cpu.percent",
    "memory": "memory.percent",
    "disk": "disk.percent",
    "load1": "load.1",
    "rx_bps": "net.rx_bps",
    "tx_bps": "net.tx_bps",
    "rtt_ms": "tunnel.rtt_ms",
}
"""History column -> the metric it samples. The charts draw these."""


@dataclass(frozen=True, kw_only=True)
class StatusSettings:
    """How long status is kept and when a node counts as offline."""

    lease_multiplier: float = 3.0
    """A report renews the lease for this many reporting intervals: two lost reports are
    forgiven, the third marks the node offline (30 s with 10 s reports)."""

    min_lease: float = 5.0
    """Seconds: the shortest lease, whatever interval an agent states, so a misconfigured agent
    reporting every 0.1 s does not flap between online and offline."""

    default_interval: float = 10.0
    """Seconds assumed when a report states no interval: the agent's default."""

    history_retention: float = 25 * 3600.0
    """Seconds of per-minute history kept: 25 h, so a 24 h chart is always full."""

    flush_interval: float = 1.0
    """Seconds between batched writes to SQLite: reports are cheap in memory, disk writes not."""

    prune_interval: float = 300.0
    """Seconds between deletions of history older than the retention."""

    max_keys: int = 512
    """Most metric keys one node may hold: a full report is ~40; this bounds memory per node."""


@dataclass(kw_only=True)
class NodeLive:
    """What the server knows about one node's reports right now."""

    name: str
    metrics: Metrics = field(default_factory=dict)
    last_report: float | None = None
    """UNIX seconds of the last report, by this server's clock (agent clocks may be off)."""
    interval: float = 10.0
    lease_until: float = 0.0
    online: bool = False
    changed_at: float = 0.0
    """When ``online`` last flipped."""
    offline_reason: str | None = None
    reports: int = 0
    source: object | None = None
    """Which stream feeds the node: a stream that ended late must not mark a newer one offline."""


@dataclass(frozen=True, kw_only=True)
class HistoryPoint:
    minute: int
    """UNIX seconds of the start of the minute."""
    samples: int
    values: dict[str, float | None]


@dataclass
class _Accumulator:
    samples: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, metrics: Metrics) -> None:
        self.samples += 1
        for column, key in SERIES.items():
            value = metrics.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = float(value)
                if math.isfinite(number):
                    self.sums[column] = self.sums.get(column, 0.0) + number
                    self.counts[column] = self.counts.get(column, 0) + 1

    def mean(self, column: str) -> float | None:
        count = self.counts.get(column)
        return None if not count else self.sums[column] / count


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS latest (
    node TEXT PRIMARY KEY,
    last_report REAL NOT NULL,
    interval REAL NOT NULL,
    metrics TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    node TEXT NOT NULL,
    minute INTEGER NOT NULL,
    n INTEGER NOT NULL,
    {", ".join(f"{column} REAL" for column in SERIES)},
    PRIMARY KEY (node, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_by_minute ON history (minute);
"""

_UPSERT = (
    f"INSERT INTO history (node, minute, n, {', '.join(SERIES)}) "  # noqa: S608 - our columns
    f"VALUES (?, ?, ?, {', '.join('?' for _ in SERIES)}) "
    "ON CONFLICT (node, minute) DO UPDATE SET "
    + ", ".join(
        # Weighted mean of what is stored and what arrived; a NULL on either side keeps the other.
        f"{c} = COALESCE(({c} * n + excluded.{c} * excluded.n) / (n + excluded.n),"
        f" excluded.{c}, {c})"
        for c in SERIES
    )
    + ", n = n + excluded.n"
)


class StatusHistory:
    """Latest status, lease and per-minute history of every node, over one SQLite file."""

    def __init__(self, path: Path, *, settings: StatusSettings, now: float) -> None:
        self.path = path
        self.settings = settings
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{path} has status schema {version}, newer than this server ({SCHEMA_VERSION}):"
                " upgrade tunnel-server or delete the file (it holds only status history)"
            )
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._nodes: dict[str, NodeLive] = {}
        self._pending_latest: set[str] = set()
        self._pending_points: dict[tuple[str, int], _Accumulator] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._load(now)

    @classmethod
    def open(cls, data_dir: Path, *, settings: StatusSettings, now: float) -> StatusHistory:
        path = data_dir / STATUS_FILE
        # Create it 0600 first: SQLite copies the mode to its -wal and -shm files.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return cls(path, settings=settings, now=now)

    def _load(self, now: float) -> None:
        for node, last_report, interval, raw in self._db.execute(
            "SELECT node, last_report, interval, metrics FROM latest"
        ):
            live = NodeLive(name=node, last_report=last_report, interval=interval)
            try:
                loaded = json.loads(raw)
            except ValueError:
                loaded = {}
            live.metrics = loaded if isinstance(loaded, dict) else {}
            # The lease survives a server restart: a node reporting until just now stays online
            # until its agent reconnects and reports again, or the lease runs out.
            live.lease_until = last_report + self.lease_for(interval)
            live.online = live.lease_until > now
            live.changed_at = last_report
            live.offline_reason = None if live.online else "no report since the server started"
            self._nodes[node] = live

    # ------------------------------------------------------------------ listeners

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(node_name)`` whenever that node's status or liveness changes."""
        self._listeners.append(listener)

    def _changed(self, name: str) -> None:
        for listener in self._listeners:
            listener(name)

    # ------------------------------------------------------------------ reports

    def lease_for(self, interval: float) -> float:
        return max(self.settings.min_lease, self.settings.lease_multiplier * interval)

    def report(
        self,
        name: str,
        *,
        kind: Literal["full", "delta"],
        metrics: Metrics,
        removed: list[str] | None = None,
        interval: float | None = None,
        now: float,
        source: object | None = None,
    ) -> NodeLive:
        """Apply one report of ``name``; renews its lease and marks it online."""
        live = self._nodes.get(name)
        if live is None:
            live = self._nodes[name] = NodeLive(name=name)
        if kind == "full":
            live.metrics = dict(metrics)
        else:
            live.metrics.update(metrics)
            for key in removed or ():
                live.metrics.pop(key, None)
        if len(live.metrics) > self.settings.max_keys:
            # Keep the node's status bounded; a well-behaved agent sends ~40 keys.
            live.metrics = dict(sorted(live.metrics.items())[: self.settings.max_keys])
        live.interval = interval if interval and interval > 0 else self.settings.default_interval
        live.last_report = now
        live.lease_until = now + self.lease_for(live.interval)
        live.reports += 1
        live.source = source
        if not live.online:
            live.online = True
            live.changed_at = now
            live.offline_reason = None
        minute = int(now // 60) * 60
        self._pending_points.setdefault((name, minute), _Accumulator()).add(live.metrics)
        self._pending_latest.add(name)
        self._changed(name)
        return live

    def disconnected(self, name: str, *, now: float, reason: str, source: object | None) -> None:
        """The stream feeding ``name`` ended: offline now, unless a newer stream took over."""
        live = self._nodes.get(name)
        if live is None or (source is not None and live.source is not source):
            return
        live.source = None
        if live.online:
            live.online = False
            live.changed_at = now
            live.offline_reason = reason
            live.lease_until = now
            self._changed(name)

    def expire(self, now: float) -> list[str]:
        """Mark offline every node whose lease ran out; the names that changed."""
        expired = []
        for live in self._nodes.values():
            if live.online and live.lease_until <= now:
                live.online = False
                live.changed_at = now
                live.offline_reason = (
                    f"no report for {now - (live.last_report or now):.0f} s"
                    f" (lease {self.lease_for(live.interval):.0f} s)"
                )
                expired.append(live.name)
        for name in expired:
            log.info("node offline: lease expired", extra={"kv": {"node": name}})
            self._changed(name)
        return expired

    # ------------------------------------------------------------------ reading

    def live(self, name: str) -> NodeLive | None:
        return self._nodes.get(name)

    def names(self) -> list[str]:
        return list(self._nodes)

    def history(self, name: str, *, since: float, until: float) -> list[HistoryPoint]:
        """Per-minute points of ``name`` with ``since <= minute <= until``, oldest first."""
        self.flush()
        rows = self._db.execute(
            f"SELECT minute, n, {', '.join(SERIES)} FROM history"  # noqa: S608 - fixed names
            " WHERE node = ? AND minute >= ? AND minute <= ? ORDER BY minute",
            (name, int(since // 60) * 60, until),
        ).fetchall()
        return [
            HistoryPoint(
                minute=row[0],
                samples=row[1],
                values=dict(zip(SERIES, row[2:], strict=True)),
            )
            for row in rows
        ]

    # ------------------------------------------------------------------ persistence

    def flush(self) -> int:
        """Write pending reports and history in one transaction; the rows written."""
        if not self._pending_latest and not self._pending_points:
            return 0
        latest = []
        for name in self._pending_latest:
            live = self._nodes.get(name)
            if live is not None and live.last_report is not None:
                latest.append((name, live.last_report, live.interval, json.dumps(live.metrics)))
        points = [
            (node, minute, acc.samples, *(acc.mean(column) for column in SERIES))
            for (node, minute), acc in self._pending_points.items()
        ]
        self._pending_latest.clear()
        self._pending_points.clear()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO latest (node, last_report, interval, metrics) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET last_report = excluded.last_report,"
                " interval = excluded.interval, metrics = excluded.metrics",
                latest,
            )
            self._db.executemany(_UPSERT, points)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return len(latest) + len(points)

    def prune(self, now: float) -> int:
        """Delete history older than the retention; the rows deleted."""
        cutoff = int((now - self.settings.history_retention) // 60) * 60
        deleted = self._db.execute("DELETE FROM history WHERE minute < ?", (cutoff,)).rowcount
        if deleted:
            log.info("pruned status history", extra={"kv": {"rows": deleted, "before": cutoff}})
        return int(deleted)

    def close(self) -> None:
        self.flush()
        self._db.close()
