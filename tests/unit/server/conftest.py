"""The store fixtures of the store suite: one suite, two backends (DESIGN.md §7).

Here the backend is ``SqliteStore``; tests/integration/kubestore/ runs the same test
functions with these fixtures given by ``KubeStore`` on a real kube-apiserver. A test of the
suite uses only what every backend offers: ``store`` (a ``Store``), ``reopen`` (another
store on the same state: the CLI's process, or another replica), ``dump`` (everything stored,
as text, read past the store) and ``revoked_rows`` (the stored sign-outs, read past the store).
A change made through one store may reach another one a moment later, so a test waits for it
with ``eventually``; SQLite passes at once.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from tunnel_server.store import SqliteStore, Store

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore.open(tmp_path)
    yield store
    store.close()


@pytest.fixture
def store(sqlite_store: SqliteStore) -> Store:
    return sqlite_store


@pytest.fixture
def reopen(tmp_path: Path) -> Iterator[Callable[[], Store]]:
    opened: list[SqliteStore] = []

    def make() -> Store:
        opened.append(SqliteStore.open(tmp_path))
        return opened[-1]

    yield make
    for other in opened:
        other.close()


@pytest.fixture
def dump(sqlite_store: SqliteStore) -> Callable[[], str]:
    def read() -> str:
        db = sqlite3.connect(sqlite_store.path)
        try:
            return "\n".join(db.iterdump())
        finally:
            db.close()

    return read


@pytest.fixture
def revoked_rows(sqlite_store: SqliteStore) -> Callable[[], list[tuple[str, float]]]:
    def read() -> list[tuple[str, float]]:
        db = sqlite3.connect(sqlite_store.path)
        try:
            rows = db.execute("SELECT id, expires_at FROM revoked_sessions ORDER BY id").fetchall()
        finally:
            db.close()
        return [(str(row[0]), float(row[1])) for row in rows]

    return read
