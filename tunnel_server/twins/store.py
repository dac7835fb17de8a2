"""The cloud's twin store: one SQLite file (WAL) of its own, beside the server's node store.

Tables:

- ``meta``: the database's boot id; the cloud's sync origin is ``cloud.<boot id>``, so a
  database that is lost and recreated numbers its changes under a new origin (the edge's
  replicas would otherwise take its fresh changes 1, 2, 3 for redeliveries of old ones).
- ``devices``: one row per (node, device): model, state (``active``/``removed``), the cloud
  replica of the twin (JSON, `device_models.Replica`), availability, the edge origin that
  onboarded it, the last change the edge refused, and the last sync error.
- ``uplink``: per edge origin, the highest ``outboxId`` applied. A batch's records and this mark
  commit in one transaction, so a redelivered record is skipped whatever its kind: the
  edge's outbox is applied exactly once, record by record.
- ``downlink``: cloud changes waiting for the edge's acknowledgement, in commit order. A
  change and the replica that produced it commit together, so none is lost or orphaned.
- ``moves``: devices an operator moves to another node, until the target onboards them (so
  their desired values go with them) or the owner refuses the move.
- ``dead_letters``: records and changes that could not be applied, for an operator (bounded).

After ``tunnel-server restore`` the file is an older copy than what the agents hold: they may
have applied cloud changes numbered after the backup, and acknowledged edge changes it never
saw. The first open rebases it (`TwinStore`, in one transaction; docs/install.md, "Backup and
restore"): a new boot id, so a new cloud origin whose numbering no agent has seen; every
replica moves to it (numbering from 1, no pending writes), forgets how far it had applied its
edge origins (that count is older than the agent's), and every active device gets its restored
desired values re-sent as one change, with ``null`` for the model's other read-write
properties: desired is the cloud's, so the device converges on the restored intent.

Writes go through a `Transaction` (staged in memory, committed all or nothing). Reads of
device rows go through a bounded LRU cache; only this process writes the file.

Schema versions (`SCHEMA`, daemon_support.schema): version 1 is the tables above, as the
release before versions made them (its files have no version and are stamped 1 unchanged).
A change of the tables is a new step appended to `SCHEMA`, never an edit of step 1.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from daemon_support import model_folder
from daemon_support.schema import Schema
from daemon_support.twin_database import (
    Durability,
    boot_id,
    open_twin_database,
    renew_boot_id,
    restored,
)
from device_models import (
    Access,
    DeviceModelsError,
    JsonObject,
    JsonValue,
    ModelRegistry,
    Replica,
    Role,
    Section,
    write_change,
)

__all__ = [
    "SCHEMA",
    "DeviceKey",
    "DeviceReader",
    "DeviceRow",
    "DeviceState",
    "DownlinkRow",
    "Transaction",
    "TwinStore",
]

log = logging.getLogger("tunnel_server.twins.store")

DeviceKey = tuple[str, str]  # (node, device)

_VERSION_1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    node TEXT NOT NULL,
    device TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    edge_origin TEXT,
    availability TEXT,
    availability_at REAL,
    desired_version INTEGER NOT NULL,
    reported_version INTEGER NOT NULL,
    replica TEXT NOT NULL,
    last_rejected TEXT,
    sync_error TEXT,
    PRIMARY KEY (node, device)
);
CREATE INDEX IF NOT EXISTS devices_by_device ON devices (device);
CREATE TABLE IF NOT EXISTS uplink (
    origin TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    last_id INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS downlink (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    device TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS downlink_by_node ON downlink (node, id);
CREATE TABLE IF NOT EXISTS moves (
    node TEXT NOT NULL,
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    requested REAL NOT NULL,
    PRIMARY KEY (node, device)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    device TEXT,
    at REAL NOT NULL,
    reason TEXT NOT NULL,
    record TEXT NOT NULL
);
"""
SCHEMA = Schema(name="cloud twin database", steps=(_VERSION_1,))
"""The file's versions, oldest first."""

_DEVICE_COLUMNS = (
    "node, device, model, model_version, state, created, updated, edge_origin, availability,"
    " availability_at, replica, last_rejected, sync_error"
)
MAX_ORIGINS_PER_NODE = 16
"""Edge origins remembered per node: one per agent database the node ever had."""

MAX_DEAD_LETTER_BYTES = 64 * 1024
"""A dead-lettered record is stored truncated to this many bytes of JSON."""


class DeviceState(StrEnum):
    ACTIVE = "active"
    REMOVED = "removed"
    """Removed from its node (``DELETE .../devices/{id}?twin=keep``) or moved away."""
    REVOKED = "revoked"
    """Revoked by an operator with ``twin=keep``: its broker credential is gone."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceRow:
    node: str
    device: str
    model: str
    model_version: str
    state: DeviceState
    created: float
    updated: float
    replica: Replica
    edge_origin: str | None = None
    availability: str | None = None
    availability_at: float | None = None
    last_rejected: JsonObject | None = None
    sync_error: str | None = None

    @property
    def key(self) -> DeviceKey:
        return (self.node, self.device)

    @property
    def id(self) -> str:
        """The device's id in the REST API: ``<node>:<device>`` (unique across the fleet)."""
        return f"{self.node}:{self.device}"


@dataclass(frozen=True, kw_only=True, slots=True)
class DownlinkRow:
    id: int
    node: str
    device: str
    body: str


class DeviceReader(Protocol):
    """What a transaction reads through: the store it will be committed to."""

    def device(self, key: DeviceKey) -> DeviceRow | None: ...


@dataclass(kw_only=True)
class Transaction:
    """Writes staged in memory; the store's ``commit`` makes them durable together."""

    store: DeviceReader
    rows: dict[DeviceKey, DeviceRow] = field(default_factory=dict)
    downlink: list[tuple[str, DeviceKey, str]] = field(default_factory=list)
    """In order: ("purge", key, "") drops a device's queued changes, ("add", key, body) queues."""
    marks: dict[str, tuple[str, int]] = field(default_factory=dict)  # origin -> (node, last id)
    dead: list[tuple[str, str | None, str, str]] = field(default_factory=list)
    removed_downlink: list[int] = field(default_factory=list)
    moves: list[tuple[DeviceKey, str | None, float]] = field(default_factory=list)
    """In order: (key, target, requested) records a move of `key`; target None ends it."""
    deleted: set[DeviceKey] = field(default_factory=set)
    """Device rows to delete with their twins (an operator removed them with twin=delete)."""

    def get(self, key: DeviceKey) -> DeviceRow | None:
        if key in self.deleted:
            return None
        staged = self.rows.get(key)
        return staged if staged is not None else self.store.device(key)

    def put(self, row: DeviceRow) -> None:
        self.deleted.discard(row.key)
        self.rows[row.key] = row

    def delete(self, key: DeviceKey) -> None:
        """Forget the device and its twin; its queued changes and a pending move go too."""
        self.rows.pop(key, None)
        self.deleted.add(key)
        self.purge(key)
        self.moves.append((key, None, 0.0))

    def queue(self, key: DeviceKey, body: JsonObject) -> None:
        self.downlink.append(("add", key, _dumps(body)))

    def purge(self, key: DeviceKey) -> None:
        self.downlink.append(("purge", key, ""))

    def dead_letter(self, node: str, device: str | None, reason: str, record: object) -> None:
        text = _dumps(record)
        if len(text) > MAX_DEAD_LETTER_BYTES:
            text = text[:MAX_DEAD_LETTER_BYTES]
        self.dead.append((node, device, reason[:1024], text))

    @property
    def queues_downlink(self) -> bool:
        return any(op == "add" for op, _, _ in self.downlink)


class TwinStore:
    """The SQLite file; one instance per server process (a ``backend.TwinBackend``)."""

    def __init__(
        self,
        path: Path,
        *,
        durability: Durability,
        cache_devices: int,
        max_dead_letters: int,
        models: ModelRegistry | None = None,
    ) -> None:
        """Open (and after a restore, rebase) the file.

        ``models`` names the read-write properties a rebase sends as ``null``; None: the
        built-ins and ``<the file's folder>/models``, loaded only when there is a rebase to do.
        """
        self._db = open_twin_database(path, durability=durability, schema=SCHEMA)
        self._cache: OrderedDict[DeviceKey, DeviceRow] = OrderedDict()
        self._cache_size = max(1, cache_devices)
        self._max_dead = max_dead_letters
        boot, new = boot_id(self._db)
        if new:
            log.info("new twin database: cloud sync origin boot id %s", boot)
        self.origin = f"cloud.{boot}"
        restored_at = restored(self._db)
        if restored_at is not None:
            if models is None:
                models = model_folder.load_models(path.parent / "models", log=log)
            self._rebase(models, restored_at=restored_at)

    def close(self) -> None:
        self._db.close()

    def new_replica(self) -> Replica:
        return Replica(origin=self.origin, role=Role.CLOUD)

    # ------------------------------------------------------------------ reads

    def device(self, key: DeviceKey) -> DeviceRow | None:
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        row = self._db.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE node = ? AND device = ?",  # noqa: S608 - constant columns
            key,
        ).fetchone()
        if row is None:
            return None
        record = _device_row(row)
        self._remember(record)
        return record

    def find(self, device: str) -> list[DeviceKey]:
        """Every (node, device) with this device id (ids are unique per node, not fleet-wide)."""
        rows = self._db.execute(
            "SELECT node, device FROM devices WHERE device = ? ORDER BY node LIMIT 16", (device,)
        ).fetchall()
        return [(str(node), str(name)) for node, name in rows]

    def list_devices(
        self,
        *,
        node: str | None,
        after: DeviceKey | None,
        limit: int,
        model: str | None = None,
        state: str | None = None,
    ) -> list[dict[str, Any]]:
        """Summaries (no twins) in (node, device) order, after `after`, at most `limit`.

        Times are epoch seconds here; the API renders them.
        """
        where, args = _list_filter(node=node, model=model, state=state, after=after)
        rows = self._db.execute(
            "SELECT node, device, model, model_version, state, created, updated, availability,"  # noqa: S608 - the clauses are constants
            f" availability_at, desired_version, reported_version FROM devices {where}"
            " ORDER BY node, device LIMIT ?",
            (*args, limit),
        ).fetchall()
        names = (
            "node",
            "device",
            "model",
            "modelVersion",
            "state",
            "createdAt",
            "updatedAt",
            "availability",
            "availabilityAt",
            "desiredVersion",
            "reportedVersion",
        )
        return [dict(zip(names, row, strict=True)) for row in rows]

    def count_listed(
        self,
        *,
        node: str | None,
        after: DeviceKey | None,
        model: str | None = None,
        state: str | None = None,
    ) -> int:
        """How many devices `list_devices` with these filters has after `after`."""
        where, args = _list_filter(node=node, model=model, state=state, after=after)
        (count,) = self._db.execute(
            f"SELECT COUNT(*) FROM devices {where}",  # noqa: S608 - the clauses are constants
            args,
        ).fetchone()
        return int(count)

    def pending_move(self, key: DeviceKey) -> str | None:
        """The node `key` is being moved to, or None."""
        row = self._db.execute(
            "SELECT target FROM moves WHERE node = ? AND device = ?", key
        ).fetchone()
        return None if row is None else str(row[0])

    def moved_from(self, key: DeviceKey) -> str | None:
        """The node a pending move brings `key`'s device from (key = (target, device))."""
        row = self._db.execute(
            "SELECT node FROM moves WHERE target = ? AND device = ? ORDER BY requested DESC",
            key,
        ).fetchone()
        return None if row is None else str(row[0])

    def count_devices(self, node: str) -> int:
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM devices WHERE node = ?", (node,)
        ).fetchone()
        return int(count)

    def uplink_mark(self, origin: str) -> int:
        row = self._db.execute("SELECT last_id FROM uplink WHERE origin = ?", (origin,)).fetchone()
        return 0 if row is None else int(row[0])

    def downlink_count(self, node: str, device: str | None = None) -> int:
        if device is None:
            row = self._db.execute("SELECT COUNT(*) FROM downlink WHERE node = ?", (node,))
        else:
            row = self._db.execute(
                "SELECT COUNT(*) FROM downlink WHERE node = ? AND device = ?", (node, device)
            )
        (count,) = row.fetchone()
        return int(count)

    def downlink_after(self, node: str, after: int, limit: int) -> list[DownlinkRow]:
        rows = self._db.execute(
            "SELECT id, node, device, body FROM downlink WHERE node = ? AND id > ?"
            " ORDER BY id LIMIT ?",
            (node, after, limit),
        ).fetchall()
        return [
            DownlinkRow(id=int(r[0]), node=str(r[1]), device=str(r[2]), body=str(r[3]))
            for r in rows
        ]

    def downlink_row(self, row_id: int) -> DownlinkRow | None:
        row = self._db.execute(
            "SELECT id, node, device, body FROM downlink WHERE id = ?", (row_id,)
        ).fetchone()
        if row is None:
            return None
        return DownlinkRow(id=int(row[0]), node=str(row[1]), device=str(row[2]), body=str(row[3]))

    def dead_letters(self, *, node: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, args = ("WHERE node = ?", (node,)) if node is not None else ("", ())
        rows = self._db.execute(
            f"SELECT id, node, device, at, reason FROM dead_letters {where}"  # noqa: S608 - constant
            " ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        names = ("id", "node", "device", "at", "reason")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def dead_letter_count(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        return int(count)

    # ------------------------------------------------------------------ writes

    def begin(self) -> Transaction:
        return Transaction(store=self)

    def commit(self, txn: Transaction) -> list[int]:
        """Make `txn` durable (all or nothing); the ids of the downlink rows it queued."""
        added: list[int] = []
        with self._transaction():
            self._db.executemany(
                "INSERT INTO devices (node, device, model, model_version, state, created,"
                " updated, edge_origin, availability, availability_at, desired_version,"
                " reported_version, replica, last_rejected, sync_error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (node, device) DO UPDATE SET model = excluded.model,"
                " model_version = excluded.model_version, state = excluded.state,"
                " updated = excluded.updated, edge_origin = excluded.edge_origin,"
                " availability = excluded.availability,"
                " availability_at = excluded.availability_at,"
                " desired_version = excluded.desired_version,"
                " reported_version = excluded.reported_version, replica = excluded.replica,"
                " last_rejected = excluded.last_rejected, sync_error = excluded.sync_error",
                [_device_params(row) for row in txn.rows.values()],
            )
            self._db.executemany(
                "DELETE FROM devices WHERE node = ? AND device = ?", list(txn.deleted)
            )
            for op, (node, device), body in txn.downlink:
                if op == "purge":
                    self._db.execute(
                        "DELETE FROM downlink WHERE node = ? AND device = ?", (node, device)
                    )
                else:
                    cursor = self._db.execute(
                        "INSERT INTO downlink (node, device, body) VALUES (?, ?, ?)",
                        (node, device, body),
                    )
                    added.append(int(cursor.lastrowid or 0))
            if txn.removed_downlink:
                self._db.executemany(
                    "DELETE FROM downlink WHERE id = ?", [(i,) for i in txn.removed_downlink]
                )
            for origin, (node, last_id) in txn.marks.items():
                self._db.execute(
                    "INSERT INTO uplink (origin, node, last_id, updated) VALUES (?, ?, ?,"
                    " (julianday('now') - 2440587.5) * 86400.0) ON CONFLICT (origin) DO UPDATE SET"
                    " last_id = MAX(last_id, excluded.last_id), updated = excluded.updated",
                    (origin, node, last_id),
                )
            for (node, device), target, requested in txn.moves:
                if target is None:
                    self._db.execute(
                        "DELETE FROM moves WHERE node = ? AND device = ?", (node, device)
                    )
                else:
                    self._db.execute(
                        "INSERT INTO moves (node, device, target, requested) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (node, device) DO UPDATE SET target = excluded.target,"
                        " requested = excluded.requested",
                        (node, device, target, requested),
                    )
            if txn.dead:
                self._db.executemany(
                    "INSERT INTO dead_letters (node, device, at, reason, record)"
                    " VALUES (?, ?, (julianday('now') - 2440587.5) * 86400.0, ?, ?)",
                    txn.dead,
                )
                self._db.execute(
                    "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
                    (self._max_dead,),
                )
        for key in txn.deleted:
            self._cache.pop(key, None)
        for row in txn.rows.values():
            self._remember(row)
        return added

    def forget_origins(self, node: str, *, keep: str) -> None:
        """Keep the uplink marks of at most `MAX_ORIGINS_PER_NODE` origins of `node`."""
        with self._transaction():
            self._db.execute(
                "DELETE FROM uplink WHERE node = ? AND origin != ? AND origin NOT IN"
                " (SELECT origin FROM uplink WHERE node = ? ORDER BY updated DESC LIMIT ?)",
                (node, keep, node, MAX_ORIGINS_PER_NODE - 1),
            )

    def remove_downlink(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._transaction():
            self._db.executemany("DELETE FROM downlink WHERE id = ?", [(i,) for i in ids])

    # ------------------------------------------------------------------ internals

    def _rebase(self, models: ModelRegistry, *, restored_at: str) -> None:
        """Move a restored file to a new cloud origin; see the module docstring for why."""
        previous = self.origin
        now = time.time()
        resent = 0
        with self._transaction():
            self.origin = f"cloud.{renew_boot_id(self._db)}"
            keys = self._db.execute("SELECT node, device FROM devices").fetchall()
            for node, device in keys:
                resent += self._rebase_device((str(node), str(device)), models, now=now)
        self._cache.clear()
        log.warning(
            "twin database restored from a backup (%s): cloud sync origin %s replaces %s;"
            " desired values re-sent for %s devices",
            restored_at,
            self.origin,
            previous,
            resent,
        )

    def _rebase_device(self, key: DeviceKey, models: ModelRegistry, *, now: float) -> int:
        """Rebase one device inside `_rebase`'s transaction; 1 if its desired was re-sent."""
        row = self._db.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE node = ? AND device = ?",  # noqa: S608 - constant columns
            key,
        ).fetchone()
        old = _device_row(row)
        # No `applied`: the edge origins' numbering here is older than the agent's, and the
        # agent has dropped what it sent since from its outbox.
        replica = Replica(origin=self.origin, role=Role.CLOUD, twin=old.replica.twin)
        resent = 0
        if old.state is DeviceState.ACTIVE:
            patch: dict[str, JsonValue] = dict(replica.twin.desired.values)
            model = models.get(old.model)
            if model is not None:
                # What the agent holds beyond the restored values was written after the backup.
                for spec in model.properties:
                    if spec.access is Access.READ_WRITE:
                        patch.setdefault(spec.name, None)
            if patch:
                try:
                    replica, change = write_change(replica, Section.DESIRED, patch, now=now)
                except DeviceModelsError as error:
                    log.warning(
                        "twins: desired of %s not re-sent after the restore: %s", key, error
                    )
                else:
                    body = {"device": key[1], "change": change.to_json()}
                    self._db.execute(
                        "INSERT INTO downlink (node, device, body) VALUES (?, ?, ?)",
                        (key[0], key[1], _dumps(body)),
                    )
                    resent = 1
        self._db.execute(
            "UPDATE devices SET replica = ?, desired_version = ? WHERE node = ? AND device = ?",
            (_dumps(replica.to_json()), replica.twin.desired.version, *key),
        )
        return resent

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _remember(self, row: DeviceRow) -> None:
        self._cache[row.key] = row
        self._cache.move_to_end(row.key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _list_filter(
    *, node: str | None, model: str | None, state: str | None, after: DeviceKey | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in (("node", node), ("model", model), ("state", state)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if after is not None:
        clauses.append("(node, device) > (?, ?)")
        args.extend(after)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _device_params(row: DeviceRow) -> tuple[object, ...]:
    twin = row.replica.twin
    return (
        row.node,
        row.device,
        row.model,
        row.model_version,
        str(row.state),
        row.created,
        row.updated,
        row.edge_origin,
        row.availability,
        row.availability_at,
        twin.desired.version,
        twin.reported.version,
        _dumps(row.replica.to_json()),
        None if row.last_rejected is None else _dumps(row.last_rejected),
        row.sync_error,
    )


def _device_row(row: tuple[Any, ...]) -> DeviceRow:
    (node, device, model, model_version, state, created, updated, edge_origin) = row[:8]
    availability, availability_at, replica, last_rejected, sync_error = row[8:]
    return DeviceRow(
        node=str(node),
        device=str(device),
        model=str(model),
        model_version=str(model_version),
        state=DeviceState(state),
        created=float(created),
        updated=float(updated),
        edge_origin=edge_origin,
        availability=availability,
        availability_at=availability_at,
        replica=Replica.from_json(json.loads(replica)),
        last_rejected=None if last_rejected is None else json.loads(last_rejected),
        sync_error=sync_error,
    )
