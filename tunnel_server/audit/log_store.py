"""The audit log's table: one row per write through the API, in its own SQLite file.

``audit.db`` beside ``store.db`` (WAL): audit writes never take the lock of the
security-relevant store, and the store's backups do not grow with the log. Rows are only
ever appended and pruned from the oldest end (``AuditSettings``: by age and by count), so
the row id orders them in time and paging is by id.

Schema versions: `SCHEMA` (daemon_support.schema); version 1 is the table below, which the
release before already stamped 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from daemon_support.schema import Schema, migrate
from tunnel_server.audit.settings import AuditSettings

log = logging.getLogger("tunnel_server.audit")

AUDIT_FILE = "audit.db"


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One write through the API, as answered."""

    at: float
    """UNIX seconds, this server's clock, when the answer was ready."""
    user: str
    """The caller's user name; ``admin`` for the bootstrap token; ``anonymous`` without a
    valid credential."""
    role: str | None
    method: str
    route: str
    """The route pattern (``/api/v1/nodes/{name}/approve``); the path when none matched."""
    action: str
    target: str | None
    status: int
    reason: str | None
    """The problem document's ``reason`` of a refusal or failure."""
    request_id: str
    peer: str | None
    id: int = 0
    """Set when read back."""


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """Exact-match filters of a listing; ``None``: any."""

    user: str | None = None
    action: str | None = None
    target: str | None = None
    status: int | None = None
    status_class: int | None = None
    """2 for 2xx, 4 for 4xx..."""
    reason: str | None = None


_VERSION_1 = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user TEXT NOT NULL,
    role TEXT,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    status INTEGER NOT NULL,
    reason TEXT,
    request_id TEXT NOT NULL,
    peer TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at);
CREATE INDEX IF NOT EXISTS audit_by_user ON audit (user, id);
CREATE INDEX IF NOT EXISTS audit_by_action ON audit (action, id);
CREATE INDEX IF NOT EXISTS audit_by_target ON audit (target, id);
"""
SCHEMA = Schema(name="audit log", steps=(_VERSION_1,))
_COLUMNS = "id, at, user, role, method, route, action, target, status, reason, request_id, peer"


class AuditLog:
    """Append, list and prune audit records."""

    def __init__(self, path: Path, *, settings: AuditSettings) -> None:
        self.path = path
        self.settings = settings
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            migrate(self._db, SCHEMA, path=path)  # SchemaError: a newer release's file
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, data_dir: Path, *, settings: AuditSettings) -> AuditLog:
        path = data_dir / AUDIT_FILE
        # Created 0600 first: SQLite copies the mode to its -wal and -shm files.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return cls(path, settings=settings)

    def append(self, record: AuditRecord) -> int:
        """Store ``record``; its id. Raises sqlite3.Error when the file cannot take it."""
        cursor = self._db.execute(
            "INSERT INTO audit (at, user, role, method, route, action, target, status, reason,"
            " request_id, peer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.at,
                record.user,
                record.role,
                record.method,
                record.route,
                record.action,
                record.target,
                record.status,
                record.reason,
                record.request_id,
                record.peer,
            ),
        )
        return int(cursor.lastrowid or 0)

    def list(self, query: AuditQuery, *, before_id: int | None, limit: int) -> list[AuditRecord]:
        """Up to ``limit`` records matching ``query``, newest first, ids below ``before_id``.

        Opens its own read-only connection, so the API runs it in a worker thread: a filter
        that matches little of a million rows scans for a while (~0.1 s per 300,000 rows
        measured), and that must not hold the event loop. WAL lets it read beside the writer.
        """
        where: list[str] = []
        args: list[object] = []
        for column, value in (
            ("user", query.user),
            ("action", query.action),
            ("target", query.target),
            ("status", query.status),
            ("reason", query.reason),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.status_class is not None:
            where.append("status >= ? AND status < ?")
            args += [query.status_class * 100, query.status_class * 100 + 100]
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        sql = f"SELECT {_COLUMNS} FROM audit"  # noqa: S608 - fixed columns, values bound
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        reader = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5.0)
        try:
            return [_record(row) for row in reader.execute(sql, args)]
        finally:
            reader.close()

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])

    async def prune(self, *, now: float) -> int:
        """Delete records past the age or count limit, in batches; the rows deleted."""
        settings = self.settings
        deleted = 0
        newest = self._db.execute("SELECT MAX(id) FROM audit").fetchone()[0]
        if newest is None:
            return 0
        # Ids are only appended, so the newest max_rows records are those above this id, and
        # everything up to the latest record older than max_age goes (one index lookup each).
        over_count = int(newest) - settings.max_rows
        too_old = self._db.execute(
            "SELECT id FROM audit WHERE at < ? ORDER BY at DESC LIMIT 1", (now - settings.max_age,)
        ).fetchone()
        upto = max(over_count, -1 if too_old is None else int(too_old[0]))
        while upto > 0:
            batch = self._db.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE id <= ?"
                " ORDER BY id LIMIT ?)",
                (upto, settings.prune_batch),
            ).rowcount
            deleted += int(batch)
            if batch < settings.prune_batch:
                break
            await asyncio.sleep(0)  # let requests in between batches
        if deleted:
            log.info("pruned audit log", extra={"kv": {"rows": deleted}})
        return deleted

    def close(self) -> None:
        self._db.close()


def _record(row: tuple[object, ...]) -> AuditRecord:
    (id_, at, user, role, method, route, action, target, status, reason, request_id, peer) = row
    return AuditRecord(
        id=int(id_),  # type: ignore[call-overload]
        at=float(at),  # type: ignore[arg-type]
        user=str(user),
        role=None if role is None else str(role),
        method=str(method),
        route=str(route),
        action=str(action),
        target=None if target is None else str(target),
        status=int(status),  # type: ignore[call-overload]
        reason=None if reason is None else str(reason),
        request_id=str(request_id),
        peer=None if peer is None else str(peer),
    )
