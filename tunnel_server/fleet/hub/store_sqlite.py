"""``FleetStore`` on one SQLite file, ``<data>/fleet.db`` (WAL, mode 0600).

Tables: ``schema_version`` (this file's own, apart from the server's ``store.db``), ``revision``
(one row: the global revision), ``objects`` (one row per object; labels, annotations, spec and
status as JSON text) and ``changes`` (the change log for watches: the object after each write,
bounded to ``changes_kept`` rows; ``compacted`` remembers the newest revision dropped from it).

Every object is also held in memory, so reads (the controller lists every cluster on each pass)
parse no JSON. The cache is reloaded when SQLite's ``data_version`` says another connection
(a second process on the same file) wrote; this process's own writes update it in place.
Label selectors are matched in Python on the cached labels.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunnel_server.fleet.hub.store import (
    Change,
    ChangesExpiredError,
    ChangeType,
    ConflictError,
    FleetStoreError,
    ObjectNotFoundError,
    StoredObject,
    check_kind,
)

if TYPE_CHECKING:
    from fleet_model.labels import LabelSelector

__all__ = ["FLEET_FILE", "SCHEMA_VERSION", "SqliteFleetStore"]

log = logging.getLogger("tunnel_server.fleet.hub.store")

FLEET_FILE = "fleet.db"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL,
                       compacted INTEGER NOT NULL);
INSERT INTO revision (id, value, compacted) VALUES (1, 0, 0);
CREATE TABLE objects (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    resource_version INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    created_at REAL NOT NULL,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE changes (
    revision INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    type TEXT NOT NULL,
    object TEXT NOT NULL,
    labels_before TEXT,
    cluster_before TEXT
);
"""
_MIGRATIONS: dict[int, str] = {0: _SCHEMA}
"""From version N to N+1, indexed by N."""


def _canonical(value: Any) -> str:  # noqa: ANN401 - any JSON value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _copy(value: Mapping[str, Any]) -> dict[str, Any]:
    """A private copy of a JSON object (and the check that it is one)."""
    return dict(json.loads(_canonical(value)))


def _row_to_object(row: sqlite3.Row) -> StoredObject:
    return StoredObject(
        kind=row["kind"],
        name=row["name"],
        uid=row["uid"],
        resource_version=int(row["resource_version"]),
        generation=int(row["generation"]),
        created_at=float(row["created_at"]),
        labels=json.loads(row["labels"]),
        annotations=json.loads(row["annotations"]),
        spec=json.loads(row["spec"]),
        status=json.loads(row["status"]),
    )


def _object_json(obj: StoredObject) -> str:
    return _canonical(
        {
            "kind": obj.kind,
            "name": obj.name,
            "uid": obj.uid,
            "resource_version": obj.resource_version,
            "generation": obj.generation,
            "created_at": obj.created_at,
            "labels": obj.labels,
            "annotations": obj.annotations,
            "spec": obj.spec,
            "status": obj.status,
        }
    )


def _object_from_json(text: str) -> StoredObject:
    data = json.loads(text)
    return StoredObject(**data)


class SqliteFleetStore:
    """The default ``FleetStore``. One connection; call it from one thread (the event loop)."""

    def __init__(
        self, path: Path, *, changes_kept: int = 10_000, busy_timeout: float = 5.0
    ) -> None:
        if changes_kept < 1:
            raise ValueError("changes_kept must be at least 1")
        self.path = path
        self.changes_kept = changes_kept
        self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoint
        self._migrate()
        self._cache: dict[str, dict[str, StoredObject]] = {}
        self._data_version = -1
        self._reload()

    @classmethod
    def open(
        cls, data_dir: Path, *, changes_kept: int = 10_000, busy_timeout: float = 5.0
    ) -> SqliteFleetStore:
        path = data_dir / FLEET_FILE
        # Create the file 0600 before SQLite does (it copies the mode to the -wal/-shm files).
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return cls(path, changes_kept=changes_kept, busy_timeout=busy_timeout)

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > SCHEMA_VERSION:
                raise FleetStoreError(
                    f"{self.path} has schema version {version}, newer than this server "
                    f"({SCHEMA_VERSION}): upgrade tunnel-server"
                )
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                version += 1
                db.execute("UPDATE schema_version SET version = ?", (version,))
                log.info("fleet store schema migrated", extra={"kv": {"version": version}})

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front: no upgrade deadlock between processes.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # The cache -------------------------------------------------------------------------------

    def _fresh(self) -> None:
        """Reload the cache if another connection wrote since we last looked."""
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._reload()

    def _reload(self) -> None:
        cache: dict[str, dict[str, StoredObject]] = {}
        for row in self._db.execute("SELECT * FROM objects ORDER BY kind, name"):
            obj = _row_to_object(row)
            cache.setdefault(obj.kind, {})[obj.name] = obj
        self._cache = cache
        self._data_version = int(self._db.execute("PRAGMA data_version").fetchone()[0])

    # Reads -----------------------------------------------------------------------------------

    def revision(self) -> int:
        return int(self._db.execute("SELECT value FROM revision WHERE id = 1").fetchone()[0])

    def get(self, kind: str, name: str) -> StoredObject | None:
        self._fresh()
        return self._cache.get(kind, {}).get(name)

    def list(self, kind: str, *, selector: LabelSelector | None = None) -> list[StoredObject]:
        self._fresh()
        objects = self._cache.get(kind, {})
        return [
            objects[name]
            for name in sorted(objects)
            if selector is None or selector.matches(objects[name].labels)
        ]

    def changes_since(self, revision: int, *, kind: str | None = None) -> builtins.list[Change]:
        compacted = int(
            self._db.execute("SELECT compacted FROM revision WHERE id = 1").fetchone()[0]
        )
        if revision < compacted:
            raise ChangesExpiredError(revision, oldest=compacted)
        if kind is None:
            rows = self._db.execute(
                "SELECT * FROM changes WHERE revision > ? ORDER BY revision",
                (revision,),
            )
        else:
            rows = self._db.execute(
                "SELECT * FROM changes WHERE revision > ? AND kind = ? ORDER BY revision",
                (revision, kind),
            )
        return [
            Change(
                int(row["revision"]),
                row["type"],
                _object_from_json(row["object"]),
                labels_before=None
                if row["labels_before"] is None
                else json.loads(row["labels_before"]),
                cluster_before=row["cluster_before"],
            )
            for row in rows
        ]

    # Writes ----------------------------------------------------------------------------------

    def _next(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE revision SET value = value + 1 WHERE id = 1")
        return int(db.execute("SELECT value FROM revision WHERE id = 1").fetchone()[0])

    def _log(
        self,
        db: sqlite3.Connection,
        change_type: ChangeType,
        obj: StoredObject,
        before: StoredObject | None = None,
    ) -> None:
        revision = obj.resource_version
        labels_before = cluster_before = None
        if before is not None:
            labels_before = _canonical(before.labels)
            cluster = before.spec.get("clusterName")
            cluster_before = cluster if isinstance(cluster, str) else None
        db.execute(
            "INSERT INTO changes (revision, kind, type, object, labels_before, cluster_before) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (revision, obj.kind, change_type, _object_json(obj), labels_before, cluster_before),
        )
        floor = revision - self.changes_kept
        if floor > 0:
            # Dropped rows make ``compacted`` the newest revision a watch can no longer start at.
            dropped = db.execute("DELETE FROM changes WHERE revision <= ?", (floor,)).rowcount
            if dropped:
                db.execute(
                    "UPDATE revision SET compacted = MAX(compacted, ?) WHERE id = 1", (floor,)
                )

    def _current(self, db: sqlite3.Connection, kind: str, name: str) -> StoredObject | None:
        row = db.execute(
            "SELECT * FROM objects WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        return None if row is None else _row_to_object(row)

    @staticmethod
    def _check(kind: str, name: str, current: StoredObject | None, expected: int | None) -> None:
        if expected is None:
            return
        at = None if current is None else current.resource_version
        if at != expected:
            raise ConflictError(kind, name, expected=expected, current=at)

    def _save(self, db: sqlite3.Connection, obj: StoredObject) -> None:
        db.execute(
            "INSERT OR REPLACE INTO objects (kind, name, uid, resource_version, generation, "
            "created_at, labels, annotations, spec, status) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                obj.kind,
                obj.name,
                obj.uid,
                obj.resource_version,
                obj.generation,
                obj.created_at,
                _canonical(obj.labels),
                _canonical(obj.annotations),
                _canonical(obj.spec),
                _canonical(obj.status),
            ),
        )

    def _commit_cache(self, obj: StoredObject, *, deleted: bool = False) -> None:
        # Our own commits leave our data_version alone: if it moved, another process wrote too.
        if int(self._db.execute("PRAGMA data_version").fetchone()[0]) != self._data_version:
            self._reload()
            return
        objects = self._cache.setdefault(obj.kind, {})
        if deleted:
            objects.pop(obj.name, None)
        else:
            objects[obj.name] = obj

    def put(
        self,
        kind: str,
        name: str,
        *,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        spec: Mapping[str, Any],
        expected_version: int | None = None,
        now: float,
    ) -> tuple[StoredObject, bool]:
        check_kind(kind)
        new_labels = {str(k): str(v) for k, v in labels.items()}
        new_annotations = {str(k): str(v) for k, v in annotations.items()}
        new_spec = _copy(spec)
        self._fresh()
        with self._transaction() as db:
            current = self._current(db, kind, name)
            self._check(kind, name, current, expected_version)
            if current is not None and (
                _canonical(current.spec) == _canonical(new_spec)
                and current.labels == new_labels
                and current.annotations == new_annotations
            ):
                return current, False
            revision = self._next(db)
            if current is None:
                obj = StoredObject(
                    kind=kind,
                    name=name,
                    uid=uuid.uuid4().hex,
                    resource_version=revision,
                    generation=1,
                    created_at=now,
                    labels=new_labels,
                    annotations=new_annotations,
                    spec=new_spec,
                    status={},
                )
            else:
                obj = replace(
                    current,
                    resource_version=revision,
                    generation=current.generation + 1,
                    labels=new_labels,
                    annotations=new_annotations,
                    spec=new_spec,
                )
            self._save(db, obj)
            self._log(db, "ADDED" if current is None else "MODIFIED", obj, current)
        self._commit_cache(obj)
        return obj, current is None

    def set_status(
        self,
        kind: str,
        name: str,
        status: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> StoredObject:
        check_kind(kind)
        new_status = _copy(status)
        self._fresh()
        with self._transaction() as db:
            current = self._current(db, kind, name)
            if current is None:
                raise ObjectNotFoundError(kind, name)
            self._check(kind, name, current, expected_version)
            if _canonical(current.status) == _canonical(new_status):
                return current
            obj = replace(current, resource_version=self._next(db), status=new_status)
            self._save(db, obj)
            self._log(db, "MODIFIED", obj, current)
        self._commit_cache(obj)
        return obj

    def delete(self, kind: str, name: str, *, expected_version: int | None = None) -> StoredObject:
        check_kind(kind)
        self._fresh()
        with self._transaction() as db:
            current = self._current(db, kind, name)
            if current is None:
                raise ObjectNotFoundError(kind, name)
            self._check(kind, name, current, expected_version)
            obj = replace(current, resource_version=self._next(db))
            db.execute("DELETE FROM objects WHERE kind = ? AND name = ?", (kind, name))
            self._log(db, "DELETED", obj)
        self._commit_cache(obj, deleted=True)
        return obj

    def close(self) -> None:
        self._db.close()
