"""The SQLite file each side keeps its device twins in: opening, durability, boot id.

The agent's outbox and the cloud's twin table are different schemas, but they must agree on
the rest: WAL (readers never block the one writer), explicit transactions, and an origin id
drawn once per database file, because a replica's versions are only comparable while its
origin stays the same. A new file is a new origin, so an old peer's history is never mixed up
with the new one's.

A file put back from a backup is an old copy: its peers may already hold changes it numbered
after the backup was taken. `tunnel-server restore` marks it (`mark_restored`), and the next
open gives it a new boot id (`renew_boot_id`), so its new changes come under a new origin and
no peer takes them for ones it already applied.

Each file carries a schema version (daemon_support.schema): opening one migrates it forward,
and a file from a newer release is refused untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import stat
from enum import StrEnum
from pathlib import Path

from daemon_support.schema import Schema, migrate

__all__ = [
    "Durability",
    "boot_id",
    "mark_restored",
    "open_twin_database",
    "renew_boot_id",
    "restored",
]


class Durability(StrEnum):
    """How hard a commit pushes to disk (SQLite ``synchronous``)."""

    FULL = "full"  # fsync at every commit: an acknowledged write survives power loss
    NORMAL = "normal"  # WAL without fsync per commit: survives kill -9, not power loss


_SECRET_MODE = 0o600
"""Twins hold device state and the outbox: readable by the daemon's user only, like its keys."""
_COMPANIONS = ("", "-wal", "-shm", "-journal")


def _owner_only(path: Path) -> None:
    """Create ``path`` as 0600 if missing, and make it and its WAL files 0600 if older.

    SQLite creates ``-wal`` and ``-shm`` with the main file's permissions, so creating the main
    file 0600 first (instead of letting the umask decide, usually 0644) covers them too.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _SECRET_MODE)
    os.close(fd)
    for suffix in _COMPANIONS:
        companion = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(companion.stat().st_mode) != _SECRET_MODE:
                companion.chmod(_SECRET_MODE)


def open_twin_database(path: Path, *, durability: Durability, schema: Schema) -> sqlite3.Connection:
    """Open a twin database, creating folder and tables; ``schema`` has a ``meta`` table.

    The folder is made 0700 and the files 0600, like every other secret file of the daemons.
    Raises daemon_support.schema.SchemaError (the connection closed) for a file this code
    cannot use: one from a newer release, or not a twin database at all.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _owner_only(path)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is explicit.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={durability.value.upper()}")
    try:
        migrate(db, schema, path=path)
    except BaseException:
        db.close()
        raise
    return db


def boot_id(db: sqlite3.Connection) -> tuple[str, bool]:
    """The database's boot id, drawn on first use; and whether it was drawn just now."""
    row = db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
    if row is not None:
        return str(row[0]), False
    boot = secrets.token_hex(4)
    db.execute("INSERT INTO meta (key, value) VALUES ('boot', ?)", (boot,))
    return boot, True


_RESTORED = "restored"
"""The ``meta`` key `mark_restored` sets; its value is when (RFC 3339)."""


def mark_restored(path: Path, *, at: str) -> None:
    """Note in a closed twin database that it was restored from a backup taken earlier.

    Raises sqlite3.Error for a file that is no twin database (no ``meta`` table). Leaves no
    ``-wal`` file behind: the write is checkpointed into the file before it is closed.
    """
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_RESTORED, at),
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def restored(db: sqlite3.Connection) -> str | None:
    """When the database was restored from a backup and not yet renewed since, or None."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (_RESTORED,)).fetchone()
    return None if row is None else str(row[0])


def renew_boot_id(db: sqlite3.Connection) -> str:
    """Draw a new boot id and clear the restored mark; call inside the caller's transaction."""
    old, _ = boot_id(db)
    boot = old
    while boot == old:
        boot = secrets.token_hex(4)
    db.execute("UPDATE meta SET value = ? WHERE key = 'boot'", (boot,))
    db.execute("DELETE FROM meta WHERE key = ?", (_RESTORED,))
    return boot
