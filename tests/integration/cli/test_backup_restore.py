"""``tunnel-server backup`` of a serving server, ``restore`` into a new folder, the fleet back.

A real server with a real joined agent is backed up while it serves. Restored into a new data
folder, a new server on it is the same server to the agent: the agent, unchanged (same key,
same pinned CA), reconnects and is online; the admin token still works; a token made just
before the backup is there. A tampered archive and one with a climbing member name are refused
with nothing written.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.daemons import BIN, Agent, Server
from tests.harness.waiting import eventually

pytestmark = pytest.mark.timeout(300)

NODE = "backup-a"
TIMEOUT = 60.0


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "tunnel-server", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@dataclass(frozen=True, kw_only=True)
class Restored:
    archive: Path
    old_token: str
    kept_token_name: str
    server: Server
    agent: Agent


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restored]:
    """Backup while serving, stop, restore into a new folder, serve it on the same port."""
    first = tmp_path_factory.mktemp("backup-first")
    server = Server(workdir=first)
    server.start()
    agent = Agent(name=NODE, workdir=first, server=server)
    second: Server | None = None
    try:
        agent.join()
        agent.start()
        agent.wait_connected()
        eventually(lambda: server.nodes()[NODE]["status"], lambda s: s == "online", what="online")
        server.cli("token", "create", "--name", "made-before-backup")
        archive = first / "server.tar.gz"
        result = cli("backup", "--data-dir", server.data_dir, "--out", archive)
        assert result.returncode == 0, result.stderr
        old_token = server.admin_token
        server.stop()
        eventually(
            lambda: agent.status().get("tunnel"),
            lambda t: isinstance(t, dict) and not t.get("connected"),
            what="agent sees the server gone",
            ignore=(OSError, ValueError),
        )
        second = Server(workdir=tmp_path_factory.mktemp("backup-second"), port=server.port)
        result = cli("restore", "--data-dir", second.data_dir, "--from", archive)
        assert result.returncode == 0, result.stderr
        second.start()
        agent.server = second
        yield Restored(
            archive=archive,
            old_token=old_token,
            kept_token_name="made-before-backup",
            server=second,
            agent=agent,
        )
    finally:
        agent.stop()
        server.stop()
        if second is not None:
            second.stop()


def test_the_archive_is_private_and_lists_every_store(restored: Restored) -> None:
    assert restored.archive.stat().st_mode & 0o777 == 0o600
    with tarfile.open(restored.archive) as archive:
        first = archive.next()
        assert first is not None
        assert first.name == "manifest.json"
        stream = archive.extractfile(first)
        assert stream is not None
        manifest = json.loads(stream.read())
    names = {entry["name"] for entry in manifest["files"]}
    assert {"ca.crt", "ca.key", "admin-token", "store.db", "audit.db", "events.db"} <= names
    assert manifest["format"] == 1
    assert not any(name.endswith(("-wal", "-shm")) for name in names)


def test_the_agent_reconnects_to_the_restored_server(restored: Restored) -> None:
    server, agent = restored.server, restored.agent
    agent.wait_connected(timeout=TIMEOUT)
    eventually(
        lambda: server.nodes()[NODE]["status"],
        lambda status: status == "online",
        what="the node online on the restored server",
        within=TIMEOUT,
    )
    assert (server.data_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (server.data_dir / "admin-token").stat().st_mode & 0o777 == 0o600


def test_the_admin_token_and_tokens_survive(restored: Restored) -> None:
    server = restored.server
    assert server.admin_token == restored.old_token
    listed = json.loads(server.cli("token", "list", "-o", "json", token=restored.old_token))
    assert restored.kept_token_name in {t["name"] for t in listed["items"]}


def _rewrite(
    source: Path, target: Path, *, change: str | None = None, extra: str | None = None
) -> None:
    """Copy the archive, changing one member's bytes or appending a member named ``extra``."""
    with tarfile.open(source) as archive, tarfile.open(target, "w:gz") as out:
        for info in archive.getmembers():
            data = archive.extractfile(info)
            assert data is not None
            body = data.read()
            if info.name == change:
                body = body[:-1] + bytes([body[-1] ^ 1])
            out.addfile(info, io.BytesIO(body))
        if extra is not None:
            info = tarfile.TarInfo(extra)
            info.size = 4
            out.addfile(info, io.BytesIO(b"evil"))


def _refused(archive: Path, data_dir: Path) -> str:
    result = cli("restore", "--data-dir", data_dir, "--from", archive)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert not data_dir.exists() or not any(data_dir.iterdir()), list(data_dir.iterdir())
    return result.stderr


def test_a_tampered_archive_is_refused_with_nothing_written(
    restored: Restored, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered.tar.gz"
    _rewrite(restored.archive, tampered, change="ca.key")
    assert "sha256" in _refused(tampered, tmp_path / "data")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(gzip.compress(b"not a tar") + b"junk")
    assert "tar.gz" in _refused(garbage, tmp_path / "data")


@pytest.mark.parametrize("name", ["../escaped", "/etc/evil", "models/../../x.yaml", "store.db-wal"])
def test_a_malicious_member_name_is_refused(restored: Restored, tmp_path: Path, name: str) -> None:
    evil = tmp_path / "evil.tar.gz"
    _rewrite(restored.archive, evil, extra=name)
    _refused(evil, tmp_path / "data")
    assert not (tmp_path / "escaped").exists()


def test_restore_refuses_the_folder_of_a_running_server(restored: Restored) -> None:
    result = cli(
        "restore", "--data-dir", restored.server.data_dir, "--from", restored.archive, "--force"
    )
    assert result.returncode == 6, result.stderr
    assert "stop the server" in result.stderr
    result = cli("restore", "--data-dir", restored.server.data_dir, "--from", restored.archive)
    assert result.returncode == 6, result.stderr
