"""The twin database both daemons open: its files are the daemon user's only."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import pytest

from daemon_support.schema import Schema
from daemon_support.twin_database import Durability, open_twin_database

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SCHEMA = Schema(
    name="test twin database",
    steps=("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);",),
)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """022, the umask that made SQLite create the files 0644."""
    saved = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(saved)


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


@pytest.mark.usefixtures("usual_umask")
def test_new_database_and_its_wal_files_are_0600(tmp_path: Path) -> None:
    path = tmp_path / "twins" / "twins.sqlite3"
    db = open_twin_database(path, durability=Durability.FULL, schema=SCHEMA)
    try:
        db.execute("INSERT INTO meta VALUES ('k', 'v')")
        modes = _modes(path.parent)
        assert set(modes) >= {"twins.sqlite3", "twins.sqlite3-wal", "twins.sqlite3-shm"}
        assert set(modes.values()) == {0o600}, modes
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        db.close()


@pytest.mark.usefixtures("usual_umask")
def test_an_older_world_readable_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "twins.sqlite3"
    db = open_twin_database(path, durability=Durability.NORMAL, schema=SCHEMA)
    db.execute("INSERT INTO meta VALUES ('k', 'v')")
    for made in tmp_path.iterdir():
        made.chmod(0o644)  # as the old code left them
    db.close()
    path.chmod(0o644)
    db = open_twin_database(path, durability=Durability.NORMAL, schema=SCHEMA)
    try:
        assert set(_modes(tmp_path).values()) == {0o600}, _modes(tmp_path)
    finally:
        db.close()
