# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The cache's one SQLite table: string keys in order, JSON values, a resourceVersion column.

Rules:

* One table, ``entries(key TEXT PRIMARY KEY, rv TEXT, value BLOB)``: its key index keeps
  keys in order, so a LIST is one range scan over a key prefix (``store.py`` lays keys out
  so that every query is a prefix) and nothing needs an index in memory.
* 16 KiB pages, set when the file is created: a pod is 1.5-3 KiB of JSON, which with the
  default 4 KiB pages fills one page per row (measured for issue 18: 20.7 MiB on disk for
  11.1 MiB of pods, 14.2 MiB with 16 KiB pages, and range scans a third faster). A rowid
  table and not ``WITHOUT ROWID``: rows up to ~16 KiB stay on their page instead of
  spilling into overflow pages beyond ~4 KiB.
* ``value`` is the compact JSON text of the value (UTF-8, ``separators=(",", ":")``): stored
  objects are spliced into LIST answers as they are, never decoded for it. JSON only, no
  pickle, ever.
* ``rv`` is the resourceVersion of a stored object (or the one a view member holds), so the
  ordering check reads no value.
* WAL journal, ``synchronous=NORMAL``: a kill -9 leaves either the old or the new state of
  each transaction (an unfinished one rolls back); a power cut may lose the last commits,
  which the next LIST online brings back. Memory is bounded by ``cache_kib`` (SQLite's page
  cache) and no file is memory-mapped, so the process's RSS does not grow with the cache.
* Schema versions: `SCHEMA` (daemon_support.schema, ``PRAGMA user_version``); version 1 is
  the table above. The first release with this table wrote no version: its files are
  stamped 1 unchanged. A newer release's file is refused (SchemaTooNewError), not guessed at.
* Blocking; one thread at a time (:class:`edge_agent.kubecache.cache.AsyncStore` gives it
  one worker thread). ``check_same_thread`` is off only because that thread is not the one
  that may close it at shutdown.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from daemon_support.schema import Schema, migrate

FILE_NAME = "objects.db"
"""The database file inside the cache folder (``-wal`` and ``-shm`` beside it)."""

_VERSION_1 = (
    "CREATE TABLE IF NOT EXISTS entries ("
    " key TEXT PRIMARY KEY NOT NULL, rv TEXT, value BLOB NOT NULL)"
)
SCHEMA = Schema(name="kube cache", steps=(_VERSION_1,))
PAGE_SIZE = 16384
"""Bytes per SQLite page (see the rules above)."""


def dump(value: object) -> bytes:
    """The stored text of ``value``: compact JSON, so an object splices into a LIST as is."""
    return json.dumps(value, separators=(",", ":")).encode()


class Table:
    """Ordered string keys to JSON values in one SQLite file."""

    def __init__(self, path: Path, *, cache_kib: int = 2048, busy_timeout_s: float = 60.0) -> None:
        """Open (or create) ``path``.

        ``cache_kib``: SQLite's page cache for this connection, in KiB (its only memory that
        grows with use). ``busy_timeout_s``: how long a write waits for another process
        holding the lock (``edge-agent cache purge --component`` while the agent runs).
        """
        self._db = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._depth = 0
        try:
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new file only; before WAL
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            self._db.execute("PRAGMA mmap_size=0")
            migrate(self._db, SCHEMA, path=path)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        """One write transaction (nested calls join the outer one); rolled back on error."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk); the first error is the story.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    # ------------------------------------------------------------ one key

    def get(self, key: str) -> object:
        """The decoded value under ``key``, or None."""
        text = self.text(key)
        return None if text is None else json.loads(text)

    def text(self, key: str) -> bytes | None:
        """The stored JSON text under ``key``, not decoded."""
        row = self._db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def rv(self, key: str) -> str | None:
        """The ``rv`` column of ``key`` (None: no such key; "" for a value without one)."""
        row = self._db.execute("SELECT rv FROM entries WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0] or "")

    def set(self, key: str, value: object, *, rv: str = "") -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO entries (key, rv, value) VALUES (?, ?, ?)",
            (key, rv, dump(value)),
        )

    def insert_missing(self, rows: list[tuple[str, str, bytes]]) -> None:
        """``(key, rv, text)`` rows whose key is not held yet (the caller holds the transaction)."""
        self._db.executemany(
            "INSERT OR IGNORE INTO entries (key, rv, value) VALUES (?, ?, ?)", rows
        )

    def delete(self, key: str) -> bool:
        return self._db.execute("DELETE FROM entries WHERE key = ?", (key,)).rowcount > 0

    def delete_range(self, low: str, high: str) -> int:
        return self._db.execute(
            "DELETE FROM entries WHERE key >= ? AND key < ?", (low, high)
        ).rowcount

    # ------------------------------------------------------------ ranges

    def keys(self, low: str = "", high: str = "\U0010ffff") -> Iterator[str]:
        """Keys in ``[low, high)`` in order, streamed."""
        for (key,) in self._db.execute(
            "SELECT key FROM entries WHERE key >= ? AND key < ? ORDER BY key", (low, high)
        ):
            yield key

    def key_rvs(self, low: str, high: str) -> Iterator[tuple[str, str]]:
        """``(key, rv)`` in ``[low, high)`` in order, streamed, without reading values."""
        for key, rv in self._db.execute(
            "SELECT key, rv FROM entries WHERE key >= ? AND key < ? ORDER BY key", (low, high)
        ):
            yield key, str(rv or "")

    def rows(self, low: str, high: str) -> Iterator[tuple[str, str, bytes]]:
        """``(key, rv, JSON text)`` in ``[low, high)`` in order, streamed from SQLite."""
        for key, rv, value in self._db.execute(
            "SELECT key, rv, value FROM entries WHERE key >= ? AND key < ? ORDER BY key",
            (low, high),
        ):
            yield key, str(rv or ""), bytes(value)

    # ------------------------------------------------------------ operators

    def volume(self) -> int:
        """Bytes the database uses on disk (pages, without the WAL)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(pages) * int(size)

    def check(self) -> list[str]:
        """SQLite's integrity check; empty when sound."""
        found = [str(row[0]) for row in self._db.execute("PRAGMA integrity_check")]
        return [] if found == ["ok"] else found
