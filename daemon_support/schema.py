"""Schema versions of the daemons' SQLite files, and the one runner that moves them forward.

Rules:

1. A database's schema version is SQLite's ``PRAGMA user_version`` (an integer in the file's
   header, 0 in a new file, written in the transaction that changes the tables). Version N is
   what the first N steps of its `Schema` build; step 1 makes the tables of the first release
   that versioned the file.
2. `migrate` runs when a daemon opens the file, before anything reads it. Each step runs in its
   own ``BEGIN IMMEDIATE`` transaction with the new version number: a crash or a full disk in
   the middle leaves the file at the old version, whole, and the next start repeats the step.
3. A version newer than the code is refused and the file left as it is: `SchemaTooNewError`
   names the file, both versions and what to do (run the newer release again, or restore the
   backup taken before the upgrade). The daemons exit 2 on it, so systemd does not restart
   them in a loop (``RestartPreventExitStatus=2``).
4. Version 0 with tables in it is a file written before schema versions existed (the release
   before). It is recognised by its tables: when every table in it is one that step 1 makes,
   step 1 runs (its statements are all ``IF NOT EXISTS``, so it changes nothing, or completes a
   file whose first creation was cut short) and the file is stamped 1. A table step 1 does not
   make means the file is not what we think: `SchemaUnknownError`, nothing touched.
5. Steps never lose data: a step that reshapes a table copies its rows forward in the same
   transaction. There are no down-migrations: going back is restoring the backup.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Schema",
    "SchemaError",
    "SchemaTooNewError",
    "SchemaUnknownError",
    "check",
    "migrate",
    "version_of",
]

log = logging.getLogger("daemon_support.schema")

MAX_VERSION = 1_000_000
"""A version above this is not one we wrote: a corrupt header (refused like a newer one)."""


@dataclass(frozen=True, kw_only=True)
class Schema:
    """The ordered steps of one kind of database; ``steps[i]`` takes version i to i + 1."""

    name: str
    """What the file is, for messages: ``"agent twin database"``."""
    steps: tuple[str, ...]
    """SQL scripts, oldest first; never edit a released one, append a new one."""

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"schema {self.name!r} has no steps")

    @property
    def version(self) -> int:
        """The version this code writes and reads."""
        return len(self.steps)

    def first_tables(self) -> frozenset[str]:
        """The tables step 1 makes: what a file of the release before versions holds."""
        with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as scratch:
            for statement in _statements(self.steps[0]):
                scratch.execute(statement)
            return _tables(scratch)


class SchemaError(Exception):
    """A database this code cannot use as it is; the message says what to do."""

    def __init__(self, message: str, *, path: Path, found: int, supported: int) -> None:
        super().__init__(message)
        self.path = path
        self.found = found
        self.supported = supported


class SchemaTooNewError(SchemaError):
    """The file's version is newer than the code's: written by a newer release."""


class SchemaUnknownError(SchemaError):
    """An unversioned file whose tables are not the ones the first version makes."""


def migrate(db: sqlite3.Connection, schema: Schema, *, path: Path) -> int:
    """Bring ``db`` (opened on ``path``, autocommit mode) to ``schema.version``; the old version.

    Raises SchemaTooNewError or SchemaUnknownError with the file untouched.
    """
    if db.isolation_level is not None or db.in_transaction:
        raise ValueError("migrate needs a connection in autocommit mode (isolation_level=None)")
    found = _user_version(db)
    if found == schema.version:
        return found  # the usual start: no write lock taken
    # BEGIN IMMEDIATE takes the write lock first: two processes opening the same old file
    # (the agent and `edge-agent cache`) migrate it once, one after the other.
    db.execute("BEGIN IMMEDIATE")
    try:
        found = _user_version(db)  # another process may have migrated it meanwhile
        _refuse_newer(schema, path=path, found=found)
        if found == 0 and _tables(db):
            _recognise_previous_release(db, schema, path=path)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("ROLLBACK")  # nothing written yet; each step below is its own transaction
    for version in range(found, schema.version):
        _step(db, schema, version, path=path)
    if found == 0:
        log.info("%s %s: version %s", schema.name, path, schema.version)
    return found


def check(path: Path, schema: Schema) -> None:
    """Refuse a file newer than ``schema`` without writing it (a pre-start check); no file: fine."""
    if not path.exists():
        return
    _refuse_newer(schema, path=path, found=version_of(path))


def version_of(path: Path) -> int:
    """The schema version in ``path``'s header, read only (0: none yet)."""
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        return _user_version(db)


def _step(db: sqlite3.Connection, schema: Schema, version: int, *, path: Path) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        if _user_version(db) != version:  # another process did this step meanwhile
            db.execute("ROLLBACK")
            return
        for statement in _statements(schema.steps[version]):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {version + 1}")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    if version > 0:
        log.info("%s %s migrated from version %s to %s", schema.name, path, version, version + 1)


def _refuse_newer(schema: Schema, *, path: Path, found: int) -> None:
    if schema.version >= found >= 0:
        return
    what = "newer than" if found <= MAX_VERSION else "not one written by"
    raise SchemaTooNewError(
        f"{path} ({schema.name}) has schema version {found}, {what} this release's"
        f" {schema.version}: it was written by a newer release. Run that release again, or"
        " restore the backup taken before the upgrade (docs/install.md, Upgrade); the file"
        " was not changed",
        path=path,
        found=found,
        supported=schema.version,
    )


def _recognise_previous_release(db: sqlite3.Connection, schema: Schema, *, path: Path) -> None:
    present = _tables(db)
    unknown = sorted(present - schema.first_tables())
    if unknown:
        raise SchemaUnknownError(
            f"{path} has no schema version and tables this release does not know"
            f" ({', '.join(unknown)}): it is not a {schema.name}, or one from a newer release"
            " that lost its version. Move it aside or restore it from a backup; it was not"
            " changed",
            path=path,
            found=0,
            supported=schema.version,
        )
    log.info(
        "%s %s has no schema version: tables %s are version 1's (the release before versions)",
        schema.name,
        path,
        ", ".join(sorted(present)),
    )


def _user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _tables(db: sqlite3.Connection) -> frozenset[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return frozenset(str(row[0]) for row in rows if not str(row[0]).startswith("sqlite_"))


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script`` one by one (``executescript`` would commit on its own)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"an incomplete statement in a schema step: {pending.strip()[:80]}")
