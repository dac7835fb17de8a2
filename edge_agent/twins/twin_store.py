"""The agent's durable state for device twins: one SQLite file in WAL mode.

Why one file: a device's new twin and the change it produced for the cloud must become durable
together or not at all. They are written in one transaction (`TwinStore.commit`), so after a
kill -9 either both are there or neither is; the outbox can never miss a change that the twin
already shows, and never holds a change the twin does not.

Tables:

- ``meta``: the boot id of this database; the edge's sync origin is ``<node>.<boot id>``, so a
  database that is lost and recreated comes back under a new origin (docs/device-models.md §4).
- ``devices``: one row per onboarded device: model, state (``provisioning`` while its broker
  credential is being created, then ``active``), last availability, the twin replica (JSON) and
  the answers to its most recent request ids (to answer a redelivered request without applying
  it twice).
- ``claims``: devices an operator registered in advance, with the SHA-256 of their claim secret.
- ``outbox``: records for the cloud, oldest first (see outbox.py).

Schema versions (`SCHEMA`, daemon_support.schema): version 1 is the tables above, as the
release before versions made them (its files have no version and are stamped 1 unchanged).
A change of the tables is a new step appended to `SCHEMA`, never an edit of step 1.

Values are JSON text, never pickle. All calls are synchronous and short; the asyncio callers
run them on the event loop (a commit in WAL mode appends to one file).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from daemon_support.schema import Schema
from daemon_support.twin_database import Durability, boot_id, open_twin_database
from device_models import JsonObject, JsonValue, Replica, Role

__all__ = [
    "SCHEMA",
    "DeviceRecord",
    "DeviceState",
    "Durability",
    "StoreWrite",
    "TwinStore",
]

log = logging.getLogger("edge_agent.twins.store")

_VERSION_1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    availability TEXT,
    availability_unsent INTEGER NOT NULL DEFAULT 0,
    replica TEXT NOT NULL,
    recent TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS claims (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
);
"""
SCHEMA = Schema(name="agent twin database", steps=(_VERSION_1,))
"""The file's versions, oldest first (the outbox is a table of this file)."""


class DeviceState(StrEnum):
    PROVISIONING = "provisioning"
    ACTIVE = "active"


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceRecord:
    device_id: str
    model: str
    state: DeviceState
    created: float
    replica: Replica
    availability: str | None = None
    availability_unsent: bool = False
    recent: tuple[tuple[str, JsonObject], ...] = ()  # (rid, answer), newest last


@dataclass(kw_only=True, slots=True)
class StoreWrite:
    """What one commit writes: device rows (whole) and outbox records (appended in order)."""

    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    outbox: list[JsonObject] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.devices or self.outbox)


class TwinStore:
    """The SQLite file; one instance per agent process."""

    def __init__(self, path: Path, *, node: str, durability: Durability) -> None:
        self._db = open_twin_database(path, durability=durability, schema=SCHEMA)
        boot, new = boot_id(self._db)
        if new:
            log.info("new twin database: sync origin boot id %s", boot)
        self.origin = f"{node}.{boot}"

    def close(self) -> None:
        self._db.close()

    def new_replica(self) -> Replica:
        return Replica(origin=self.origin, role=Role.EDGE)

    # ------------------------------------------------------------------ devices

    def devices(self) -> list[DeviceRecord]:
        rows = self._db.execute(
            "SELECT id, model, state, created, availability, availability_unsent, replica,"
            " recent FROM devices ORDER BY id"
        ).fetchall()
        return [_record(row) for row in rows]

    def device(self, device_id: str) -> DeviceRecord | None:
        row = self._db.execute(
            "SELECT id, model, state, created, availability, availability_unsent, replica,"
            " recent FROM devices WHERE id = ?",
            (device_id,),
        ).fetchone()
        return None if row is None else _record(row)

    def delete_device(self, device_id: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM devices WHERE id = ?", (device_id,))

    # ------------------------------------------------------------------ claims

    def register_claim(self, device_id: str, model: str, secret_sha256: str) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO claims (id, model, secret_sha256) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET model = excluded.model,"
                " secret_sha256 = excluded.secret_sha256",
                (device_id, model, secret_sha256),
            )

    def delete_claim(self, device_id: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM claims WHERE id = ?", (device_id,))

    def claim(self, device_id: str) -> tuple[str, str] | None:
        """(model, secret SHA-256 hex) registered for `device_id`, or None."""
        row = self._db.execute(
            "SELECT model, secret_sha256 FROM claims WHERE id = ?", (device_id,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    # ------------------------------------------------------------------ writes

    def commit(self, write: StoreWrite) -> None:
        """Write device rows and append outbox records in one transaction (all or nothing)."""
        if not write:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT INTO devices (id, model, state, created, availability,"
                " availability_unsent, replica, recent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET model = excluded.model,"
                " state = excluded.state, availability = excluded.availability,"
                " availability_unsent = excluded.availability_unsent,"
                " replica = excluded.replica, recent = excluded.recent",
                [_row(record) for record in write.devices.values()],
            )
            self._db.executemany(
                "INSERT INTO outbox (body) VALUES (?)",
                [(_dumps(record),) for record in write.outbox],
            )

    # ------------------------------------------------------------------ outbox table

    def outbox_bounds(self) -> tuple[int, int]:
        """(oldest id, newest id) of the outbox, (0, -1) when empty. Ids only grow."""
        low, high = self._db.execute("SELECT MIN(id), MAX(id) FROM outbox").fetchone()
        return (0, -1) if low is None else (int(low), int(high))

    def outbox_size(self) -> int:
        """Records waiting; O(log n): only a delivered prefix is ever deleted."""
        low, high = self.outbox_bounds()
        return high - low + 1

    def outbox_peek(self, *, limit: int, max_bytes: int) -> list[tuple[int, str]]:
        """The oldest records (id, JSON text): at most `limit`, and at most about `max_bytes`."""
        rows = self._db.execute(
            "SELECT id, body FROM outbox ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        batch: list[tuple[int, str]] = []
        total = 0
        for row_id, body in rows:
            total += len(body)
            if batch and total > max_bytes:
                break
            batch.append((int(row_id), str(body)))
        return batch

    def outbox_remove_through(self, last_id: int) -> None:
        """Drop every record up to and including `last_id` (the cloud acknowledged them)."""
        with self._transaction():
            self._db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))

    def unsent_availability(self) -> list[DeviceRecord]:
        rows = self._db.execute(
            "SELECT id, model, state, created, availability, availability_unsent, replica,"
            " recent FROM devices WHERE availability_unsent = 1 ORDER BY id"
        ).fetchall()
        return [_record(row) for row in rows]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _dumps(value: JsonValue | Iterable[object]) -> str:
    return _ENCODER.encode(value)


# Made once: json.dumps with options builds an encoder per call (a few per committed batch).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _row(record: DeviceRecord) -> tuple[object, ...]:
    recent = [[rid, answer] for rid, answer in record.recent]
    return (
        record.device_id,
        record.model,
        str(record.state),
        record.created,
        record.availability,
        int(record.availability_unsent),
        _dumps(record.replica.to_json()),
        _dumps(recent),
    )


def _record(row: tuple[object, ...]) -> DeviceRecord:
    device_id, model, state, created, availability, unsent, replica, recent = row
    pairs = json.loads(str(recent))
    return DeviceRecord(
        device_id=str(device_id),
        model=str(model),
        state=DeviceState(str(state)),
        created=float(str(created)),
        availability=None if availability is None else str(availability),
        availability_unsent=bool(unsent),
        replica=Replica.from_json(json.loads(str(replica))),
        recent=tuple((str(rid), answer) for rid, answer in pairs),
    )
