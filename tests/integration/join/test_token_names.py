"""``tunnel-server token create`` for a name a node already holds, and the way to re-join."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.join.conftest import RunningServer


async def _tokens_for(server: RunningServer, name: str) -> int:
    listing = await server.cli("token", "list")
    assert listing.rc == 0, listing.stderr
    return sum(1 for line in listing.stdout.splitlines() if f" {name} " in f" {line} ")


async def test_token_for_a_joined_name_is_refused(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    """The token could never be used (the join would get 409): say so now, and how to re-join."""
    token = await server.token(name)
    assert (await server.join(token=token, name=name, data_dir=tmp_path)).rc == 0
    again = await server.cli("token", "create", "--name", name)
    assert again.rc == 6, again.stderr  # 409: the documented conflict exit code
    assert again.stdout == ""
    assert "Traceback" not in again.stderr
    [line] = again.stderr.splitlines()[-1:]
    assert f"node {name!r} is joined" in line
    assert "--replace" in line
    assert await _tokens_for(server, name) == 1
    assert (await server.nodes())[name]["state"] == "approved"


async def test_token_for_a_pending_name_is_refused(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    token = await server.token(name, "--require-approval")
    extra = ("--wait-approval", "0.2")
    assert (await server.join(token=token, name=name, data_dir=tmp_path, extra=extra)).rc == 7
    again = await server.cli("token", "create", "--name", name)
    assert again.rc == 6, again.stderr  # 409: the documented conflict exit code
    assert f"tunnel-server nodes approve {name}" in again.stderr.splitlines()[-1]


async def test_replace_rejoins_a_reinstalled_machine(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    first = await server.token(name)
    assert (await server.join(token=first, name=name, data_dir=tmp_path / "old")).rc == 0
    replacing = await server.cli("token", "create", "--name", name, "--replace")
    assert replacing.rc == 0, replacing.stderr
    assert f"revoked node {name}" in replacing.stderr
    assert (await server.nodes())[name]["state"] == "revoked"
    second = replacing.stdout.strip()
    joined = await server.join(token=second, name=name, data_dir=tmp_path / "new")
    assert joined.rc == 0, joined.stderr
    assert (await server.nodes())[name]["state"] == "approved"


async def test_replace_of_a_free_name_just_creates_the_token(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    result = await server.cli("token", "create", "--name", name, "--replace")
    assert result.rc == 0, result.stderr
    assert "revoked" not in result.stderr
    assert (await server.join(token=result.stdout.strip(), name=name, data_dir=tmp_path)).rc == 0


def test_twin_database_is_owner_only(server: RunningServer) -> None:
    """Device state is as private as the keys next to it: 0600, its WAL files too."""
    files = sorted(server.data_dir.glob("twins.sqlite3*"))
    assert server.data_dir / "twins.sqlite3" in files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
