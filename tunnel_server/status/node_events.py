"""What happened to each node (and registered cluster): joined, approved, online, revoked...

Event types (``EVENT_TYPES``): ``joined``, ``approved``, ``denied``, ``online``, ``offline``,
``certificateRenewed``, ``revoked``. Each event is ``(node, at, type, detail)``; ``detail`` is a
sentence for people.

Where they come from:

* **State changes are read from the store**, not from the routes that make them: the API,
  the remote CLI and anything else that approves, denies or revokes a node all end in the
  store and bump its revision, so comparing each node's row with the one last seen catches
  every path. ``sync()`` runs whenever the revision moves (a watcher polls it, like the
  tunnel's revocation watcher) and before any event is noted, so events stay in the order the
  store saw them. A new row (or a new ``created_at``: a re-join replaces the row) is
  ``joined``; ``pending -> approved`` is ``approved``; ``pending -> revoked`` ``denied``;
  ``approved -> revoked`` ``revoked``; a new certificate serial on a node that had one is
  ``certificateRenewed`` (renewal over the tunnel or over HTTPS alike).
  The rows last seen are kept in the same file, so a change made while the server was down
  (the CLI on the data dir) is still noted at the next start.
* **online / offline come from the tunnel endpoint** (``note``): a node is online while it
  holds a tunnel session; a session that replaces another is no new ``online``.

Events are queued in memory and written once per poll interval in one transaction (``flush``;
reads flush first), so a reconnect storm of thousands of agents costs one write a poll, not
one per session.

Bounds: at most ``max_per_node`` events per node (the oldest go first, so a flapping link
cannot grow the file) and none older than ``max_age``. The data lives in its own SQLite file
(``events.db`` beside ``store.db``), so these writes never take the store's lock.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tunnel_server.store import NodeRecord, Store

log = logging.getLogger("tunnel_server.node_events")

EVENTS_FILE = "events.db"
SCHEMA_VERSION = 1
EventType = Literal[
    "joined", "approved", "denied", "online", "offline", "certificateRenewed", "revoked"
]
EVENT_TYPES: tuple[EventType, ...] = (
    "joined",
    "approved",
    "denied",
    "online",
    "offline",
    "certificateRenewed",
    "revoked",
)
MAX_DETAIL = 512
"""Characters of a detail kept: ours are one sentence."""


@dataclass(frozen=True, kw_only=True)
class NodeEventSettings:
    """How many node events are kept, and for how long."""

    max_per_node: int = 1000
    """Events kept per node: months of a node that goes offline and online a few times a
    day, while a link that flaps every second still costs at most ~100 KB."""

    max_age: float = 90 * 86400.0
    """Seconds an event is kept: 90 days, the audit log's default too."""

    prune_interval: float = 3600.0
    """Seconds between deletions of events older than ``max_age`` (the per-node cap is kept
    on every insert)."""


@dataclass(frozen=True, kw_only=True)
class NodeEvent:
    id: int
    node: str
    at: float
    """UNIX seconds, this server's clock."""
    type: EventType
    detail: str


@dataclass(frozen=True, kw_only=True)
class _Seen:
    state: str
    created_at: float
    cert_serial: str | None
    kind: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    at REAL NOT NULL,
    type TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_node ON events (node, id);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at);
CREATE TABLE IF NOT EXISTS seen (
    node TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    cert_serial TEXT,
    kind TEXT NOT NULL
) WITHOUT ROWID;
"""


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


class NodeEvents:
    """The events of every node, over one SQLite file, fed by ``sync`` and ``note``."""

    def __init__(self, path: Path, *, store: Store, settings: NodeEventSettings) -> None:
        self.path = path
        self.settings = settings
        self._store = store
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{path} has node events schema {version}, newer than this server "
                f"({SCHEMA_VERSION}): upgrade tunnel-server or delete the file (only events)"
            )
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._seeding = version == 0
        """A new file: the nodes already in the store are taken as seen, not as just joined."""
        self._seen: dict[str, _Seen] = {
            node: _Seen(state=state, created_at=created, cert_serial=serial, kind=kind)
            for node, state, created, serial, kind in self._db.execute(
                "SELECT node, state, created_at, cert_serial, kind FROM seen"
            )
        }
        self._revision: int | None = None
        self._pending: list[tuple[str, float, str, str]] = []
        """Events noted since the last flush, in order: (node, at, type, detail)."""
        self._seen_dirty: dict[str, _Seen | None] = {}
        """Seen rows changed since the last flush (None: the node is gone)."""

    @classmethod
    def open(cls, data_dir: Path, *, store: Store, settings: NodeEventSettings) -> NodeEvents:
        path = data_dir / EVENTS_FILE
        # Created 0600 first: SQLite copies the mode to its -wal and -shm files.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return cls(path, store=store, settings=settings)

    # ------------------------------------------------------------------ writing

    def note(self, node: str, event: EventType, detail: str, *, now: float) -> None:
        """Record ``event`` of ``node`` now (after any store change not yet seen).

        Cheap enough for the tunnel endpoint in a reconnect storm: the event is queued in
        memory and written by the next ``flush`` (every poll interval, in one transaction).
        """
        self.sync(now=now)
        self._pending.append((node, now, event, detail[:MAX_DETAIL]))
        log.debug("node event", extra={"kv": {"node": node, "event": event}})

    def sync(self, *, now: float) -> int:
        """Queue the events of what changed in the store since last time; how many."""
        revision = self._store.revision()
        if revision == self._revision:
            return 0
        self._revision = revision
        current = {record.name: record for record in self._store.list_nodes()}
        queued = 0
        for name, record in current.items():
            before = self._seen.get(name)
            if not self._seeding:
                for kind, detail in _changes(before, record):
                    self._pending.append((name, now, kind, detail))
                    log.debug("node event", extra={"kv": {"node": name, "event": kind}})
                    queued += 1
            after = _Seen(
                state=record.state,
                created_at=record.created_at,
                cert_serial=record.cert_serial,
                kind=record.kind,
            )
            if after != before:
                self._seen[name] = self._seen_dirty[name] = after
        for name in [name for name in self._seen if name not in current]:
            del self._seen[name]
            self._seen_dirty[name] = None
        self._seeding = False
        return queued

    def flush(self) -> int:
        """Write the queued events and seen rows in one transaction; the events written.

        On a failing file (a full disk) the queue is dropped with a warning, so memory stays
        bounded; the events are for people and the store keeps the truth.
        """
        if not self._pending and not self._seen_dirty:
            return 0
        events, self._pending = self._pending, []
        seen, self._seen_dirty = self._seen_dirty, {}
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._write(events, seen)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            log.warning(
                "node events not stored", extra={"kv": {"events": len(events), "error": error}}
            )
            return 0
        return len(events)

    def _write(
        self, events: list[tuple[str, float, str, str]], seen: dict[str, _Seen | None]
    ) -> None:
        self._db.executemany(
            "INSERT INTO seen (node, state, created_at, cert_serial, kind)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (node) DO UPDATE SET"
            " state = excluded.state, created_at = excluded.created_at,"
            " cert_serial = excluded.cert_serial, kind = excluded.kind",
            [
                (n, s.state, s.created_at, s.cert_serial, s.kind)
                for n, s in seen.items()
                if s is not None
            ],
        )
        self._db.executemany(
            "DELETE FROM seen WHERE node = ?", [(n,) for n, s in seen.items() if s is None]
        )
        self._db.executemany(
            "INSERT INTO events (node, at, type, detail) VALUES (?, ?, ?, ?)", events
        )
        for node in {event[0] for event in events}:
            # Keep the newest max_per_node of this node: one indexed range delete.
            self._db.execute(
                "DELETE FROM events WHERE node = ? AND id <= (SELECT id FROM events"
                " WHERE node = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (node, node, self.settings.max_per_node),
            )

    def prune(self, *, now: float) -> int:
        """Delete events older than ``max_age``; the rows deleted."""
        deleted = self._db.execute(
            "DELETE FROM events WHERE at < ?", (now - self.settings.max_age,)
        ).rowcount
        if deleted:
            log.info("pruned node events", extra={"kv": {"rows": deleted}})
        return int(deleted)

    # ------------------------------------------------------------------ reading

    def events(self, node: str) -> list[NodeEvent]:
        """The kept events of ``node``, oldest first (at most ``max_per_node``).

        Store changes not yet seen by the watcher are taken first: a read right after a
        write (the console reloads a node's events when its revoke answers) sees its event.
        """
        self.sync(now=time.time())
        self.flush()
        return [
            NodeEvent(id=row[0], node=node, at=row[1], type=row[2], detail=row[3])
            for row in self._db.execute(
                "SELECT id, at, type, detail FROM events WHERE node = ? ORDER BY id", (node,)
            )
        ]

    def close(self) -> None:
        self.flush()
        self._db.close()


def _changes(before: _Seen | None, record: NodeRecord) -> list[tuple[EventType, str]]:
    """The events between the row last seen and ``record`` (oldest first)."""
    what = "cluster" if record.kind == "cluster" else "node"
    out: list[tuple[EventType, str]] = []
    if before is None or before.created_at != record.created_at:
        waiting = "waiting for approval" if record.state == "pending" else "approved by its token"
        out.append(("joined", f"{what} joined with a bootstrap token, {waiting}"))
        if record.state == "revoked":
            out.append(("denied", f"the join was refused or the {what} revoked at once"))
        return out
    if before.state != record.state:
        if before.state == "pending" and record.state == "approved":
            out.append(
                ("approved", f"an operator approved the {what}: it may fetch its certificate")
            )
        elif before.state == "pending" and record.state == "revoked":
            out.append(("denied", f"an operator denied the join of the {what}"))
        elif record.state == "revoked":
            out.append(("revoked", f"the {what} was revoked: its certificates no longer work"))
    if (
        before.cert_serial is not None
        and record.cert_serial is not None
        and before.cert_serial != record.cert_serial
    ):
        valid = (
            "" if record.cert_not_after is None else f", valid until {_iso(record.cert_not_after)}"
        )
        out.append(("certificateRenewed", f"new certificate {record.cert_serial[:20]}{valid}"))
    return out
