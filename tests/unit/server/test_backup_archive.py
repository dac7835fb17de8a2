"""The archive checks of ``tunnel_server.backup``: what a restore refuses, before any write."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest

from tunnel_server import backup
from tunnel_server.api.signer import KEY_FILE
from tunnel_server.audit.log_store import AUDIT_FILE
from tunnel_server.fleet.hub.store_sqlite import FLEET_FILE
from tunnel_server.identity.pki import CA_CERT, CA_KEY, SERVING_CERT, SERVING_KEY
from tunnel_server.identity.tokens import ADMIN_FILE
from tunnel_server.status.history import STATUS_FILE
from tunnel_server.status.node_events import EVENTS_FILE
from tunnel_server.store import STORE_FILE
from tunnel_server.twins.model_store import MODELS_FILE
from tunnel_server.twins.telemetry import TELEMETRY_FILE

FILES = {"ca.crt": b"CERT\n", "ca.key": b"KEY\n", "admin-token": b"id.secret\n"}


def test_the_layout_names_every_file_the_server_keeps() -> None:
    databases = {STORE_FILE, AUDIT_FILE, EVENTS_FILE, STATUS_FILE, FLEET_FILE}
    databases |= {TELEMETRY_FILE, MODELS_FILE, "twins.sqlite3"}
    assert set(backup.DATABASES) == databases
    files = {CA_CERT, CA_KEY, SERVING_CERT, SERVING_KEY, ADMIN_FILE, KEY_FILE}
    # A CA rotation in progress (tunnel_server/identity/rotation.py) adds its own files.
    files |= {"ca-next.crt", "ca-next.key", "ca-next.cross.crt", "ca-previous.crt"}
    files |= {"ca-rotation.json"}
    assert set(backup.FILES) == files
    assert backup.FILES["ca-next.key"] == 0o600
    assert backup.FILES[CA_KEY] == backup.FILES[SERVING_KEY] == 0o600


def _data_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    for name, body in FILES.items():
        (path / name).write_bytes(body)
    with sqlite3.connect(path / "store.db") as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES ('kept')")
    return path


def _archive(
    path: Path, members: list[tuple[str, bytes]], *, manifest: object = None, kind: bytes = b"0"
) -> Path:
    """A tar.gz with ``manifest`` (default: a correct one for ``members``) first."""
    if manifest is None:
        manifest = {
            "format": 1,
            "files": [
                {"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                for n, b in members
            ],
        }
    with tarfile.open(path, "w:gz") as out:
        body = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(body)
        out.addfile(info, io.BytesIO(body))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind if name == "ca.key" else b"0"
            out.addfile(info, io.BytesIO(data))
    return path


def _members() -> list[tuple[str, bytes]]:
    return [*FILES.items(), ("store.db", b"SQLite format 3\x00")]


def test_backup_then_restore_gives_the_same_files_and_modes(tmp_path: Path) -> None:
    source = _data_dir(tmp_path / "a")
    writer = sqlite3.connect(source / "store.db")  # a live writer, its WAL not checkpointed
    writer.execute("INSERT INTO t VALUES ('in the wal')")
    writer.commit()
    members = backup.backup(source, tmp_path / "b.tar.gz")
    writer.close()
    assert (tmp_path / "b.tar.gz").stat().st_mode & 0o777 == 0o600
    assert {m.name for m in members} == {*FILES, "store.db"}
    target = tmp_path / "restored"
    backup.restore(tmp_path / "b.tar.gz", target)
    for name, body in FILES.items():
        assert (target / name).read_bytes() == body
    assert (target / "ca.key").stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(target / "store.db") as db:
        rows = {r[0] for r in db.execute("SELECT x FROM t")}
    assert rows == {"kept", "in the wal"}
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "name", ["../x", "/abs", "models/../ca.key", "a/b", "store.db-wal", "./ca.key", "x\\y", ""]
)
def test_names_outside_the_layout_are_refused(name: str) -> None:
    with pytest.raises(backup.ArchiveRefusedError):
        backup.check_member_name(name)


@pytest.mark.parametrize("name", ["ca.key", "store.db", "models/pump.yaml", "manifest.json"])
def test_layout_names_pass(name: str) -> None:
    backup.check_member_name(name)


def _refused(archive: Path, target: Path, match: str) -> None:
    with pytest.raises(backup.ArchiveRefusedError, match=match):
        backup.restore(archive, target)
    assert not target.exists() or list(target.iterdir()) == []


def test_a_member_not_in_the_manifest_is_refused(tmp_path: Path) -> None:
    members = _members()
    manifest = {"format": 1, "files": [{"name": "x"}]}
    _refused(
        _archive(tmp_path / "a.tgz", members, manifest=manifest), tmp_path / "d", "not a file of"
    )
    good = _archive(tmp_path / "g.tgz", members)
    with tarfile.open(good) as src, tarfile.open(tmp_path / "b.tgz", "w:gz") as out:
        for info in src.getmembers():
            stream = src.extractfile(info)
            assert stream is not None
            out.addfile(info, stream)
        info = tarfile.TarInfo("server.key")
        info.size = 1
        out.addfile(info, io.BytesIO(b"k"))
    _refused(tmp_path / "b.tgz", tmp_path / "d", "not in the manifest")


def test_a_link_is_refused(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a.tgz", _members(), kind=tarfile.SYMTYPE)
    _refused(archive, tmp_path / "d", "not a plain file")


def test_a_member_the_manifest_lists_but_the_archive_lacks_is_refused(tmp_path: Path) -> None:
    members = _members()
    manifest = {
        "format": 1,
        "files": [
            {"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for n, b in [*members, ("server.key", b"k")]
        ],
    }
    archive = _archive(tmp_path / "a.tgz", members, manifest=manifest)
    _refused(archive, tmp_path / "d", "lacks")


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        ({"format": 2, "files": []}, "format"),
        ({"format": 1, "files": []}, "has no"),
        ({"format": 1, "files": [{"name": "ca.key", "size": 2**40, "sha256": "0" * 64}]}, "bound"),
        ({"format": 1, "files": [{"name": "ca.key", "size": 1, "sha256": "nope"}]}, "sha256"),
    ],
)
def test_bad_manifests_are_refused(tmp_path: Path, manifest: object, match: str) -> None:
    _refused(_archive(tmp_path / "a.tgz", _members(), manifest=manifest), tmp_path / "d", match)


def test_force_replaces_and_drops_a_stale_wal(tmp_path: Path) -> None:
    archive = tmp_path / "b.tgz"
    backup.backup(_data_dir(tmp_path / "a"), archive)
    target = tmp_path / "t"
    target.mkdir()
    (target / "store.db-wal").write_bytes(b"stale")
    (target / "audit.db").write_bytes(b"old")
    with pytest.raises(backup.TargetBusyError):
        backup.restore(archive, target)
    backup.restore(archive, target, force=True)
    assert not (target / "store.db-wal").exists()
    assert not (target / "audit.db").exists()  # not in the backup: the old one would lie


def test_force_refuses_a_folder_whose_database_is_open(tmp_path: Path) -> None:
    source = _data_dir(tmp_path / "a")
    backup.backup(source, tmp_path / "b.tgz")
    holder = sqlite3.connect(source / "store.db")
    try:
        holder.execute("SELECT * FROM t").fetchall()
        with pytest.raises(backup.TargetBusyError, match="stop the server"):
            backup.restore(tmp_path / "b.tgz", source, force=True)
    finally:
        holder.close()
    assert (source / "ca.crt").read_bytes() == FILES["ca.crt"]
