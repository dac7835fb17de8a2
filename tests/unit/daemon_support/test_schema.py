"""The schema runner: new files, files of the release before versions, steps, newer files.

Each test works on a real SQLite file. The daemons' own schemas are checked too: a file made
by step 1 of each is exactly what its store's tables were before versions existed.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from typing import TYPE_CHECKING

import pytest

from daemon_support.schema import (
    Schema,
    SchemaTooNewError,
    SchemaUnknownError,
    check,
    migrate,
    version_of,
)
from edge_agent.kubecache import table
from edge_agent.twins import twin_store
from tunnel_server.audit import log_store
from tunnel_server.twins import model_store
from tunnel_server.twins import store as cloud_store

if TYPE_CHECKING:
    from pathlib import Path

V1 = """
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS items_by_name ON items (name);
CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);
"""
V2 = """
ALTER TABLE items ADD COLUMN colour TEXT NOT NULL DEFAULT 'grey';
UPDATE items SET colour = 'red' WHERE name = 'apple';
"""
BROKEN = "INSERT INTO nowhere VALUES (1);"
"""A statement that fails after V2's statements ran, in the same step."""
ONE = Schema(name="test database", steps=(V1,))
TWO = Schema(name="test database", steps=(V1, V2))


def _open(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _dump(path: Path) -> list[str]:
    with contextlib.closing(_open(path)) as db:
        return list(db.iterdump())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _previous_release(path: Path) -> None:
    """A file as the release before versions wrote it: tables, rows, user_version 0."""
    with contextlib.closing(_open(path)) as db:
        db.executescript(V1)
        db.execute("INSERT INTO items (name) VALUES ('apple'), ('pear')")
        db.execute("INSERT INTO log (line) VALUES ('one')")


def test_a_new_file_gets_every_step_and_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with contextlib.closing(_open(path)) as db:
        assert migrate(db, TWO, path=path) == 0
        db.execute("INSERT INTO items (name) VALUES ('plum')")
        assert db.execute("SELECT colour FROM items").fetchall() == [("grey",)]
    assert version_of(path) == 2


def test_a_file_of_the_release_before_versions_is_stamped_1_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _previous_release(path)
    before = _dump(path)
    with contextlib.closing(_open(path)) as db:
        assert migrate(db, ONE, path=path) == 0
    assert version_of(path) == 1
    assert _dump(path) == before  # every table, index and row as it was


def test_the_release_before_versions_migrates_through_later_steps(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _previous_release(path)
    with contextlib.closing(_open(path)) as db:
        assert migrate(db, TWO, path=path) == 0
        colours = db.execute("SELECT name, colour FROM items ORDER BY id").fetchall()
    assert colours == [("apple", "red"), ("pear", "grey")]
    assert version_of(path) == 2


def test_a_half_created_old_file_is_completed(tmp_path: Path) -> None:
    """A first start killed between two CREATE TABLEs: the missing table is made, rows kept."""
    path = tmp_path / "half.db"
    with contextlib.closing(_open(path)) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        db.execute("INSERT INTO items (name) VALUES ('fig')")
        migrate(db, ONE, path=path)
        db.execute("INSERT INTO log (line) VALUES ('two')")
        assert db.execute("SELECT name FROM items").fetchall() == [("fig",)]


def test_an_unversioned_file_with_other_tables_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(_open(path)) as db:
        db.execute("CREATE TABLE payroll (who TEXT)")
    before = _digest(path)
    with contextlib.closing(_open(path)) as db, pytest.raises(SchemaUnknownError) as refused:
        migrate(db, ONE, path=path)
    assert "payroll" in str(refused.value)
    assert str(path) in str(refused.value)
    assert _digest(path) == before


@pytest.mark.parametrize("found", [3, 2**31 - 1])
def test_a_newer_file_is_refused_untouched_with_what_to_do(tmp_path: Path, found: int) -> None:
    path = tmp_path / "newer.db"
    _previous_release(path)
    with contextlib.closing(_open(path)) as db:
        db.execute(f"PRAGMA user_version = {found}")
    before = _digest(path)
    with contextlib.closing(_open(path)) as db, pytest.raises(SchemaTooNewError) as refused:
        migrate(db, TWO, path=path)
    message = str(refused.value)
    assert f"schema version {found}" in message
    assert "release's 2" in message
    assert "restore the backup" in message
    assert (refused.value.found, refused.value.supported) == (found, 2)
    assert _digest(path) == before
    with pytest.raises(SchemaTooNewError):
        check(path, TWO)
    assert _digest(path) == before


def test_check_accepts_a_missing_an_older_and_a_current_file(tmp_path: Path) -> None:
    check(tmp_path / "missing.db", TWO)
    assert not (tmp_path / "missing.db").exists()
    path = tmp_path / "old.db"
    _previous_release(path)
    check(path, TWO)
    assert version_of(path) == 0


def test_a_failing_step_leaves_the_previous_version_whole(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with contextlib.closing(_open(path)) as db:
        migrate(db, ONE, path=path)
        db.execute("INSERT INTO items (name) VALUES ('apple')")
    broken = Schema(name="test database", steps=(V1, V2 + BROKEN))
    with contextlib.closing(_open(path)) as db:
        with pytest.raises(sqlite3.OperationalError):
            migrate(db, broken, path=path)
        assert not db.in_transaction
        columns = [row[1] for row in db.execute("PRAGMA table_info(items)")]
    assert columns == ["id", "name"]
    assert version_of(path) == 1
    with contextlib.closing(_open(path)) as db:
        migrate(db, TWO, path=path)
        assert db.execute("SELECT name, colour FROM items").fetchall() == [("apple", "red")]


def test_a_current_file_takes_no_write_lock(tmp_path: Path) -> None:
    """Opening a current file while another connection holds the write lock does not wait."""
    path = tmp_path / "busy.db"
    with contextlib.closing(_open(path)) as db:
        migrate(db, ONE, path=path)
    with (
        contextlib.closing(_open(path)) as holder,
        contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=0.0)) as other,
    ):
        holder.execute("BEGIN IMMEDIATE")
        assert migrate(other, ONE, path=path) == 1
        holder.execute("ROLLBACK")


def test_migrate_wants_an_autocommit_connection(tmp_path: Path) -> None:
    with (
        contextlib.closing(sqlite3.connect(tmp_path / "x.db")) as db,
        pytest.raises(ValueError, match="autocommit"),
    ):
        migrate(db, ONE, path=tmp_path / "x.db")


def test_an_incomplete_step_is_refused(tmp_path: Path) -> None:
    bad = Schema(name="test database", steps=("CREATE TABLE t (a TEXT); INSERT INTO t VALUES ('x",))
    with (
        contextlib.closing(_open(tmp_path / "x.db")) as db,
        pytest.raises(ValueError, match="incomplete"),
    ):
        migrate(db, bad, path=tmp_path / "x.db")


@pytest.mark.parametrize(
    ("schema", "tables"),
    [
        (twin_store.SCHEMA, {"meta", "devices", "claims", "outbox"}),
        (cloud_store.SCHEMA, {"meta", "devices", "uplink", "downlink", "moves", "dead_letters"}),
        (model_store.SCHEMA, {"versions"}),
        (log_store.SCHEMA, {"audit"}),
        (table.SCHEMA, {"entries"}),
    ],
)
def test_every_daemon_database_has_a_version_1_of_today_s_tables(
    schema: Schema, tables: set[str]
) -> None:
    assert schema.version == 1
    assert schema.first_tables() == tables
    # Version 1 must be re-runnable on a file of the release before (rule 4).
    assert all("IF NOT EXISTS" in s for s in schema.steps[0].split(";") if "CREATE" in s)


def test_the_kube_cache_table_of_the_release_before_versions_keeps_its_rows(
    tmp_path: Path,
) -> None:
    """Issue 18's table shipped without a version: its file opens, keeps its rows, gets 1."""
    path = tmp_path / table.FILE_NAME
    with contextlib.closing(_open(path)) as db:
        db.execute(
            "CREATE TABLE entries (key TEXT PRIMARY KEY NOT NULL, rv TEXT, value BLOB NOT NULL)"
        )
        db.execute("INSERT INTO entries VALUES ('o/pods/a', '7', CAST('{\"a\":1}' AS BLOB))")
    cache = table.Table(path)
    try:
        assert cache.get("o/pods/a") == {"a": 1}
        assert cache.rv("o/pods/a") == "7"
    finally:
        cache.close()
    assert version_of(path) == 1
    with contextlib.closing(_open(path)) as db:
        db.execute("PRAGMA user_version = 2")
    with pytest.raises(SchemaTooNewError, match="kube cache"):
        table.Table(path)
