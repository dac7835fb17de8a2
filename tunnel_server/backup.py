"""``tunnel-server backup`` and ``restore``: the data folder as one verified archive.

Rules:

- **Only what the server needs, listed by name** (``LAYOUT``), never the folder tarred blindly:
  the CA and serving key pairs, the admin token, the console session key, every SQLite
  database, and device model files in ``models/``. The git clones under ``fleet/git`` are a
  cache the server fetches again; ``-wal``/``-shm`` files are never copied (the online backup
  folds the WAL into the copy).
- **Consistent while the server runs**: each database is copied with SQLite's online backup API
  (a snapshot, even mid-write) and checked with ``PRAGMA quick_check``.
- **The archive** is a tar.gz written atomically (temp file in the target's folder, fsync,
  rename) with mode 0600, since it holds the CA key. Its first member is ``manifest.json``:
  format, server version, creation time and the size and sha256 of every other member.
- **Restore checks everything before it writes anything**: a first pass reads the whole archive
  and refuses links, folders, absolute names, ``..``, names outside ``LAYOUT``, members not in
  the manifest (or missing from the archive), duplicates, sizes above the bounds and any hash
  mismatch. Only then a second pass writes the files into a staging folder inside the data
  folder (hashing again), and renames them into place with their layout modes (keys 0600).
- **A restored twin database is marked** (`daemon_support.twin_database.mark_restored`, in the
  staging folder, before anything is replaced): it is older than what the agents hold, so the
  server's next start moves it to a new cloud sync origin (tunnel_server/twins/store.py).
- **Never under a running server**: the target must be empty, or with ``force`` hold no
  database another process has open (the server keeps ``store.db`` open while it runs; an
  exclusive SQLite lock cannot be taken then).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from daemon_support.twin_database import mark_restored
from tunnel_server import __version__

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger("tunnel_server.backup")

FORMAT = 1
"""Version of the archive's layout; ``restore`` refuses any other."""
MANIFEST = "manifest.json"

DATABASES = (
    "store.db",
    "audit.db",
    "events.db",
    "status.db",
    "fleet.db",
    "twins.sqlite3",
    "telemetry.sqlite3",
    "device-models.sqlite3",
)
"""Every SQLite database the server opens in its data folder (a unit test checks the names
against the modules that open them)."""
TWINS_DATABASE = "twins.sqlite3"
"""The cloud's twin database: a restore marks it (`_mark_twins_restored`)."""
FILES = {
    "ca.crt": 0o644,
    "ca.key": 0o600,
    "server.crt": 0o644,
    "server.key": 0o600,
    "admin-token": 0o600,
    "console-session-key": 0o600,
    # A CA rotation in progress (docs/security.md): present only between rotate and retire.
    "ca-next.crt": 0o644,
    "ca-next.key": 0o600,
    "ca-next.cross.crt": 0o644,
    "ca-previous.crt": 0o644,
    "ca-rotation.json": 0o644,
}
"""Plain files by name, with the mode each is restored with (those present are taken)."""
REQUIRED = ("ca.crt", "ca.key", "admin-token", "store.db")
"""Without these there is no server to back up or restore: agents pin the CA, the store holds
their identities."""
MODELS_DIR = "models"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.(yaml|yml)")
_DB_MODE = 0o600
_MODEL_MODE = 0o644

MAX_FILE_BYTES = 1 << 20
"""A key, certificate, token or model file: a few KiB; 1 MiB is already absurd."""
MAX_DATABASE_BYTES = 64 << 30
"""One database: the store of 100k nodes with a month of history stays far below 64 GiB."""
MAX_MANIFEST_BYTES = 1 << 20
MAX_MEMBERS = 256
"""``LAYOUT`` has 14 fixed names; the rest are model files."""
_CHUNK = 1 << 20


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why. Exit 1."""

    exit_code = 1


class ArgumentError(BackupError):
    """``--out``'s folder, ``--from`` or ``--data-dir`` is missing or of the wrong kind. Exit 2."""

    exit_code = 2


class ArchiveRefusedError(BackupError):
    """The archive is malformed, tampered with or unsafe; nothing was written. Exit 1."""


class TargetBusyError(BackupError):
    """The data folder is not empty (without force) or its server runs. Exit 6 (conflict)."""

    exit_code = 6


@dataclass(frozen=True, kw_only=True)
class Member:
    name: str
    """Path inside the archive and the data folder, POSIX, relative."""
    size: int
    """Bytes."""
    sha256: str
    """Hex digest of the content."""
    mode: int
    """Permission bits the file is restored with."""


# ---------------------------------------------------------------- layout


def mode_of(name: str) -> int | None:
    """The mode ``name`` is restored with, or None when it is no member of a backup."""
    if name in FILES:
        return FILES[name]
    if name in DATABASES:
        return _DB_MODE
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == MODELS_DIR and _MODEL_NAME.fullmatch(parts[1]):
        return _MODEL_MODE
    return None


def _limit(name: str) -> int:
    return MAX_DATABASE_BYTES if name in DATABASES else MAX_FILE_BYTES


def check_member_name(name: str) -> None:
    """Refuse a name that is absolute, climbs out, or is not in the layout."""
    path = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or path.is_absolute():
        raise ArchiveRefusedError(f"archive member {name!r} has an absolute path: refused")
    if ".." in path.parts or "." in name.split("/") or "" in name.split("/"):
        raise ArchiveRefusedError(f"archive member {name!r} leaves the data folder: refused")
    if name != MANIFEST and mode_of(name) is None:
        raise ArchiveRefusedError(
            f"archive member {name!r} is not a file of the data folder: refused"
        )


# ---------------------------------------------------------------- backup


def backup(data_dir: Path, out: Path, *, now: datetime | None = None) -> list[Member]:
    """Write the archive of ``data_dir`` to ``out`` (atomically, 0600); its members."""
    missing = [name for name in REQUIRED if not (data_dir / name).is_file()]
    if missing:
        raise BackupError(
            f"{data_dir} has no {', '.join(missing)}: is it the server's data folder"
            " (`tunnel-server init` makes one)?"
        )
    if not out.parent.is_dir():
        raise ArgumentError(f"--out {out}: {out.parent} is no folder")
    created = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp)
        members = [*_copy_databases(data_dir, staged), *_copy_files(data_dir, staged)]
        manifest = json.dumps(
            {
                "format": FORMAT,
                "serverVersion": __version__,
                "created": created,
                "files": [
                    {"name": m.name, "size": m.size, "sha256": m.sha256, "mode": f"{m.mode:04o}"}
                    for m in members
                ],
            },
            indent=2,
        ).encode()
        _write_archive(out, manifest, members, staged)
    log.info("backup written", extra={"kv": {"file": out, "members": len(members)}})
    return members


def _copy_databases(data_dir: Path, staged: Path) -> Iterator[Member]:
    for name in DATABASES:
        source = data_dir / name
        if not source.is_file():
            continue  # a part never switched on (twins, telemetry) has no database yet
        target = staged / name
        # Read-only: the backup must never create or change anything in the live folder.
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30.0)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)  # a consistent snapshot even while the server writes
                (verdict,) = dst.execute("PRAGMA quick_check").fetchone()
                if verdict != "ok":
                    raise BackupError(f"{source} is damaged ({verdict}): not backed up")
            finally:
                dst.close()
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"cannot copy {source} ({exc}): run as the server's user") from None
        finally:
            src.close()
        yield _describe(name, target)


def _copy_files(data_dir: Path, staged: Path) -> Iterator[Member]:
    names = [n for n in FILES if (data_dir / n).is_file()]
    models = data_dir / MODELS_DIR
    if models.is_dir():
        names += sorted(
            f"{MODELS_DIR}/{p.name}"
            for p in models.iterdir()
            if p.is_file() and not p.is_symlink() and _MODEL_NAME.fullmatch(p.name)
        )
    for name in names:
        source = data_dir / name
        if source.stat().st_size > MAX_FILE_BYTES:
            raise BackupError(f"{source} is larger than {MAX_FILE_BYTES} bytes: not a key or model")
        target = staged / name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(source.read_bytes())
        yield _describe(name, target)


def _describe(name: str, path: Path) -> Member:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(_CHUNK), b""):
            digest.update(chunk)
    mode = mode_of(name)
    assert mode is not None  # noqa: S101 - names come from the layout
    return Member(name=name, size=path.stat().st_size, sha256=digest.hexdigest(), mode=mode)


def _write_archive(out: Path, manifest: bytes, members: list[Member], staged: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)  # the CA key is inside
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as archive:
                info = _info(MANIFEST, len(manifest), 0o600)
                archive.addfile(info, io.BytesIO(manifest))
                for member in members:
                    with (staged / member.name).open("rb") as data:
                        archive.addfile(_info(member.name, member.size, member.mode), data)
            raw.flush()
            os.fsync(raw.fileno())
        Path(tmp).replace(out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(out.parent)


def _info(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, 0
    return info


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- restore


def read_manifest(document: bytes) -> dict[str, Member]:
    """The manifest's members by name; ArchiveRefusedError for anything but our format."""
    try:
        manifest = json.loads(document)
    except ValueError:
        raise ArchiveRefusedError("manifest.json is not JSON: not a tunnel-server backup") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveRefusedError(
            f"manifest.json is not of format {FORMAT}: not a backup this tunnel-server reads"
        )
    files = manifest.get("files")
    if not isinstance(files, list) or len(files) > MAX_MEMBERS:
        raise ArchiveRefusedError("manifest.json lists no files, or too many")
    members: dict[str, Member] = {}
    for entry in files:
        member = _manifest_member(entry)
        if member.name in members:
            raise ArchiveRefusedError(f"manifest.json lists {member.name!r} twice")
        members[member.name] = member
    missing = [name for name in REQUIRED if name not in members]
    if missing:
        raise ArchiveRefusedError(f"the archive has no {', '.join(missing)}: not a server backup")
    return members


def _manifest_member(entry: Any) -> Member:  # noqa: ANN401 - JSON, checked here
    if not isinstance(entry, dict):
        raise ArchiveRefusedError("manifest.json: a file entry is not an object")
    name, size, digest = entry.get("name"), entry.get("size"), entry.get("sha256")
    if not isinstance(name, str) or name == MANIFEST:
        raise ArchiveRefusedError("manifest.json: a file entry has no usable name")
    check_member_name(name)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _limit(name):
        raise ArchiveRefusedError(f"manifest.json: {name!r} has no size or one above the bound")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ArchiveRefusedError(f"manifest.json: {name!r} has no sha256")
    mode = mode_of(name)
    assert mode is not None  # noqa: S101 - check_member_name passed
    return Member(name=name, size=size, sha256=digest, mode=mode)


@contextlib.contextmanager
def _open_archive(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        with tarfile.open(path, mode="r:gz") as archive:
            yield archive
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ArchiveRefusedError(
            f"{path} is not a readable tar.gz ({exc}): nothing restored"
        ) from None


def _walk(
    archive: tarfile.TarFile,
) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """Every member after checking its kind, name and count; its content stream."""
    for count, info in enumerate(iter(archive.next, None), start=1):
        if count > MAX_MEMBERS + 1:
            raise ArchiveRefusedError(f"the archive has more than {MAX_MEMBERS} members")
        check_member_name(info.name)
        if not info.isreg():
            raise ArchiveRefusedError(f"archive member {info.name!r} is not a plain file: refused")
        yield info, archive.extractfile(info)


def verify(path: Path) -> dict[str, Member]:
    """Read the whole archive and check every member; its manifest. Writes nothing."""
    members: dict[str, Member] | None = None
    seen: set[str] = set()
    with _open_archive(path) as archive:
        for info, data in _walk(archive):
            if members is None:
                if info.name != MANIFEST or info.size > MAX_MANIFEST_BYTES or data is None:
                    raise ArchiveRefusedError("the archive does not begin with its manifest.json")
                members = read_manifest(data.read())
                continue
            member = _expected(members, seen, info)
            assert data is not None  # noqa: S101 - a regular file has a stream
            digest = hashlib.sha256()
            for chunk in iter(lambda: data.read(_CHUNK), b""):  # noqa: B023 - used at once
                digest.update(chunk)
            if digest.hexdigest() != member.sha256:
                raise ArchiveRefusedError(
                    f"{info.name} does not match its sha256 in the manifest: the archive was"
                    " changed or is damaged; nothing restored"
                )
    if members is None:
        raise ArchiveRefusedError(f"{path} is an empty archive: nothing restored")
    absent = sorted(set(members) - seen)
    if absent:
        raise ArchiveRefusedError(f"the manifest lists {', '.join(absent)}, the archive lacks them")
    return members


def _expected(members: dict[str, Member], seen: set[str], info: tarfile.TarInfo) -> Member:
    member = members.get(info.name)
    if member is None:
        raise ArchiveRefusedError(f"archive member {info.name!r} is not in the manifest: refused")
    if info.name in seen:
        raise ArchiveRefusedError(f"archive member {info.name!r} appears twice: refused")
    if info.size != member.size:
        raise ArchiveRefusedError(f"{info.name} is not the size the manifest says: refused")
    seen.add(info.name)
    return member


def server_running(data_dir: Path) -> str | None:
    """The database of ``data_dir`` some process holds open (a running server), or None.

    The server keeps its databases open in WAL mode while it runs; an exclusive lock, which
    only a connection that is alone on the file gets, tells. It changes nothing.
    """
    for name in DATABASES:
        path = data_dir / name
        if not path.is_file():
            continue
        db = sqlite3.connect(path, timeout=0.0, isolation_level=None)
        try:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("BEGIN EXCLUSIVE")
            db.execute("ROLLBACK")
        except sqlite3.OperationalError:  # "database is locked": another connection has it
            return name
        except sqlite3.DatabaseError:  # not a database (damaged): nobody serves from it
            continue
        finally:
            db.close()
    return None


def restore(archive: Path, data_dir: Path, *, force: bool = False) -> list[Member]:
    """Put the archive's files into ``data_dir``; every check comes before any write."""
    if not archive.is_file():
        raise ArgumentError(f"--from {archive} is no file")
    if data_dir.exists() and not data_dir.is_dir():
        raise ArgumentError(f"--data-dir {data_dir} is not a folder")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        if not force:
            raise TargetBusyError(
                f"{data_dir} is not empty: restore into a new folder, or stop its server and"
                " give --force to replace what it holds"
            )
        busy = server_running(data_dir)
        if busy is not None:
            raise TargetBusyError(
                f"a process holds {data_dir / busy} open: stop the server of {data_dir} first"
            )
    members = verify(archive)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=data_dir, prefix=".restore-"))
    try:
        _stage(archive, members, staging)
        _mark_twins_restored(archive, staging, members)
        _replace(data_dir, staging, members)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _fsync_dir(data_dir)
    log.info("backup restored", extra={"kv": {"file": archive, "data_dir": data_dir}})
    return sorted(members.values(), key=lambda m: m.name)


def _stage(path: Path, members: dict[str, Member], staging: Path) -> None:
    """Write every member into ``staging``, hashing again: the file may change between reads."""
    with _open_archive(path) as archive:
        for info, data in _walk(archive):
            if info.name == MANIFEST:
                continue
            member = members[info.name]
            target = staging / member.name
            target.parent.mkdir(mode=0o700, exist_ok=True)
            assert data is not None  # noqa: S101 - a regular file has a stream
            digest = hashlib.sha256()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, member.mode)
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), member.mode)  # the umask must not loosen nor block it
                for chunk in iter(lambda: data.read(_CHUNK), b""):  # noqa: B023 - used at once
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != member.sha256:
                raise ArchiveRefusedError(f"{path} changed while it was restored: nothing restored")


def _mark_twins_restored(archive: Path, staging: Path, members: dict[str, Member]) -> None:
    """Mark the staged twin database: agents may hold cloud changes newer than the backup."""
    if TWINS_DATABASE not in members:
        return
    try:
        mark_restored(staging / TWINS_DATABASE, at=datetime.now(UTC).isoformat())
    except sqlite3.Error as error:
        raise ArchiveRefusedError(
            f"{TWINS_DATABASE} in {archive} is no twin database ({error}): nothing restored"
        ) from None


def _replace(data_dir: Path, staging: Path, members: dict[str, Member]) -> None:
    # Leftovers of the folder's previous life would be read as part of the restored state: a
    # stale -wal would be replayed into a restored database, a database the backup lacks
    # would be the old one.
    for name in DATABASES:
        for suffix in ("", "-wal", "-shm", "-journal"):
            if name not in members or suffix:
                (data_dir / f"{name}{suffix}").unlink(missing_ok=True)
    for name in sorted(members):
        if name.startswith(f"{MODELS_DIR}/"):
            (data_dir / MODELS_DIR).mkdir(mode=0o755, exist_ok=True)
        (staging / name).replace(data_dir / name)
