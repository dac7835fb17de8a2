"""The SQLite file each side keeps its device twins in: opening, durability, boot id.

The agent's outbox and the cloud's twin table are different schemas, but they must agree on
the rest: WAL (readers never block the one writer), explicit transactions, and an origin id
drawn once per database file, because a replica's versions are only comparable while its
origin stays the same. A new file is a new origin, so an old peer's history is never mixed up
with the new one's.
"""

from __future__ import annotations

import secrets
import sqlite3
from enum import StrEnum
from pathlib import Path

__all__ = ["Durability", "boot_id", "open_twin_database"]


class Durability(StrEnum):
    """How hard a commit pushes to disk (SQLite ``synchronous``)."""

    FULL = "full"  # fsync at every commit: an acknowledged write survives power loss
    NORMAL = "normal"  # WAL without fsync per commit: survives kill -9, not power loss


def open_twin_database(path: Path, *, durability: Durability, schema: str) -> sqlite3.Connection:
    """Open a twin database, creating folder and tables; ``schema`` has a ``meta`` table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is explicit.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={durability.value.upper()}")
    db.executescript(schema)
    return db


def boot_id(db: sqlite3.Connection) -> tuple[str, bool]:
    """The database's boot id, drawn on first use; and whether it was drawn just now."""
    row = db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
    if row is not None:
        return str(row[0]), False
    boot = secrets.token_hex(4)
    db.execute("INSERT INTO meta (key, value) VALUES ('boot', ?)", (boot,))
    return boot, True
