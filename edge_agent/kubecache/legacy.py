# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Carrying over the diskcache folder an agent before issue 18 left (``cache.db``).

Rules:

* Migrated, not dropped: an agent upgraded while its node is offline must keep serving what
  it cached, and pending heartbeats and service-account tokens exist nowhere else. The key
  layout did not change, so every entry is copied under the same key.
* Read with plain ``sqlite3``; diskcache is no longer a dependency. Only rows that hold a
  string key (``raw = 1``) and their value inline as bytes (``mode = 1``, zlib-compressed
  JSON, as the old store wrote every value) are taken. Anything else, a pickled value above
  all (``mode = 4``), is skipped and never decoded: no pickle, ever. A skipped object comes
  back with the next LIST online.
* Every value is bounded (``MAX_VALUE_BYTES`` once inflated) and must be JSON; the copy is
  one transaction, then ``cache.db`` (and ``-wal``, ``-shm``) is deleted. A copy cut short
  by kill -9 leaves ``cache.db`` in place and is done again (keys already copied are kept).
* If ``cache.db`` cannot be read (corrupt, not SQLite), it is dropped with a warning: the
  cache starts empty and the next LIST online fills it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import zlib
from pathlib import Path

from edge_agent.kubecache.table import Table

log = logging.getLogger("edge_agent.kubecache.store")

LEGACY_FILE = "cache.db"
"""diskcache's database file in the cache folder."""
MAX_VALUE_BYTES = 16 * 1024 * 1024
"""Largest value carried over, inflated (an object is at most 1.5 MiB in etcd)."""
_MODE_RAW = 1
"""diskcache's ``MODE_RAW``: the value column holds the bytes the store wrote."""


def _inflate(value: bytes) -> bytes | None:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(value, MAX_VALUE_BYTES)
    except zlib.error:
        return None
    if inflater.unconsumed_tail or not inflater.eof:
        return None  # larger than the bound, or cut short
    try:
        json.loads(text)
    except ValueError:
        return None
    return text


def _remove(directory: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (directory / f"{LEGACY_FILE}{suffix}").unlink(missing_ok=True)


def migrate_diskcache(directory: Path, table: Table) -> int:
    """Copy a legacy ``cache.db`` in ``directory`` into ``table``; entries copied (0: none).

    Keys the table holds already are kept (a second run after a cut-short one).
    """
    path = directory / LEGACY_FILE
    if not path.is_file():
        return 0
    rows: list[tuple[str, str, bytes]] = []
    skipped = 0
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as old:
            for key, tag, mode, value in old.execute(
                "SELECT key, tag, mode, value FROM Cache WHERE raw = 1"
            ):
                text = (
                    _inflate(bytes(value))
                    if isinstance(key, str) and mode == _MODE_RAW and isinstance(value, bytes)
                    else None
                )
                if text is None:
                    skipped += 1
                    continue
                rows.append((key, tag if isinstance(tag, str) else "", text))
    except sqlite3.Error as exc:
        log.warning("old cache %s unreadable (%s): dropped; a LIST online refills it", path, exc)
        _remove(directory)
        return 0
    with table.transact():
        table.insert_missing(rows)
    _remove(directory)
    log.warning(
        "cache carried over from diskcache (%s): %d entries copied, %d skipped",
        path,
        len(rows),
        skipped,
    )
    return len(rows)
