"""The git CLI for GitSources: one bare mirror per source, fetched, listed and read, bounded.

Why the CLI and a bare repository:

* the git CLI speaks every transport and uses the server user's own credentials (ssh keys,
  credential helpers, ``~/.gitconfig``), which is how an operator gives the hub access to a
  private repository without putting secrets in a spec every viewer reads;
* nothing is ever checked out: files are read from the object database (``ls-tree``,
  ``cat-file``), so no hook, filter, ``.gitattributes`` driver or symbolic link of the
  repository runs or is followed on the hub.

Every command is ``git -c protocol.allow=never -c protocol.<transport>.allow=always ...`` (so a
repository value cannot reach a remote helper such as ``ext::`` even if the spec check were
wrong), ends its options with ``--`` before any value from the spec, runs with
``GIT_TERMINAL_PROMPT=0`` (and ssh in batch mode) so it never waits for a password, in its own
process group (killed whole on timeout or cancel), and with its output bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from fleet_model.gitsource import GitSourceSpec

__all__ = [
    "GitError",
    "GitSettings",
    "Mirror",
    "NotAFolderError",
    "OutputTooLargeError",
    "TreeFile",
]

_TARGET_REF = "refs/edgefleet/target"
"""Where the mirror keeps the fetched branch or tag (one ref: nothing else is fetched)."""

_KEPT_ENVIRONMENT = ("GIT_SSH_COMMAND", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "GIT_CONFIG_GLOBAL")
"""Git variables of the server's environment that still apply (how to reach remotes); every
other ``GIT_*`` (``GIT_DIR``, ``GIT_WORK_TREE``...) would redirect our commands."""


@dataclass(frozen=True, kw_only=True)
class GitSettings:
    git: str = "git"
    """The git executable (looked up on PATH)."""
    fetch_timeout: float = 120.0
    """Seconds for one fetch: a slow remote must not hold a source's loop for long; the next
    interval tries again."""
    command_timeout: float = 30.0
    """Seconds for local commands (init, rev-parse, ls-tree, cat-file) on the mirror."""
    max_message_bytes: int = 2048
    """Of git's error output kept for the status and the log (the last bytes; with ``--quiet``
    git writes only its errors)."""
    max_listing_bytes: int = 8 * 1024 * 1024
    """Of ``ls-tree`` output: about 80,000 entries; a bigger folder is refused, not read."""
    max_files: int = 1000
    """YAML/JSON files read from the folder; more is refused as a whole (a partial read would
    prune what the unread files hold)."""
    max_file_bytes: int = 2 * 1024 * 1024
    """One file: a Work may be 512 KiB, and a file may hold several documents."""
    max_total_bytes: int = 32 * 1024 * 1024
    """All files of one folder together."""


class GitError(Exception):
    """A git command failed; the message is git's own (its last lines), or the timeout."""


class NotAFolderError(GitError):
    """The source's path is missing from the commit, or is a file."""


class OutputTooLargeError(GitError):
    """Git wrote more than the command's bound (a folder with too many entries)."""


@dataclass(frozen=True, kw_only=True)
class TreeFile:
    path: str
    """Relative to the source's folder."""
    oid: str
    size: int
    mode: str


def _environment() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GIT_") or key in _KEPT_ENVIRONMENT
    }
    env.pop("SSH_ASKPASS", None)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    env["LC_ALL"] = "C"  # git's messages go to the status: one language everywhere
    return env


async def _read_bounded(stream: asyncio.StreamReader, limit: int, *, keep_tail: bool) -> bytes:
    """Everything ``stream`` gives up to ``limit`` bytes; beyond it, GitError (or only the tail)."""
    data = bytearray()
    while chunk := await stream.read(64 * 1024):
        data += chunk
        if len(data) > limit:
            if not keep_tail:
                raise OutputTooLargeError(f"git wrote more than {limit} bytes")
            del data[: len(data) - limit]
    return bytes(data)


def _message(stderr: bytes, limit: int) -> str:
    text = stderr[-limit:].decode(errors="replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return "; ".join(lines) if lines else "git failed without a message"


class Mirror:
    """The bare repository ``directory`` that holds what one GitSource fetched."""

    def __init__(self, directory: Path, *, settings: GitSettings) -> None:
        self.directory = directory
        self.settings = settings

    async def fetch(self, spec: GitSourceSpec) -> str:
        """Fetch the source's branch or tag (depth 1); its commit id."""
        if not (self.directory / "HEAD").is_file():
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            await self._git("init", "--bare", "--quiet", "--", str(self.directory), cwd=False)
        await self._git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-recurse-submodules",
            "--no-write-fetch-head",
            "--depth=1",
            "--",
            spec.repository,
            f"+{spec.ref.full_name}:{_TARGET_REF}",
            protocol="file" if spec.transport == "local" else spec.transport,
            seconds=self.settings.fetch_timeout,
        )
        out = await self._git("rev-parse", "--verify", "--quiet", f"{_TARGET_REF}^{{commit}}")
        return out.decode().strip()

    async def list_files(self, commit: str, folder: str) -> list[TreeFile]:
        """Every blob under ``folder`` of ``commit`` (recursive), by path; GitError if none."""
        tree = f"{commit}:{folder}" if folder else f"{commit}^{{tree}}"
        try:
            found = (await self._git("cat-file", "-t", "--", tree)).decode().strip()
        except GitError as error:  # the commit was just fetched: it is the path that is missing
            raise NotAFolderError(str(error)) from None
        if found != "tree":
            raise NotAFolderError(f"{folder!r} is a {found}, not a folder")
        out = await self._git(
            "ls-tree", "-r", "-l", "-z", "--", tree, limit=self.settings.max_listing_bytes
        )
        files: list[TreeFile] = []
        for entry in out.split(b"\0"):
            if not entry:
                continue
            meta, _, raw_path = entry.partition(b"\t")
            mode, kind, oid, size = meta.split()
            if kind != b"blob":
                continue  # a submodule: its commit is not in this repository
            files.append(
                TreeFile(
                    path=raw_path.decode(errors="replace"),
                    oid=oid.decode(),
                    size=int(size),
                    mode=mode.decode(),
                )
            )
        return files

    async def read_blobs(self, oids: list[str], *, total: int) -> dict[str, bytes]:
        """The contents of ``oids`` (whose sizes add up to at most ``total`` bytes)."""
        if not oids:
            return {}
        out = await self._git(
            "cat-file",
            "--batch",
            stdin="".join(f"{oid}\n" for oid in oids).encode(),
            limit=total + 128 * len(oids),
        )
        blobs: dict[str, bytes] = {}
        at = 0
        for _ in oids:
            end = out.index(b"\n", at)
            header = out[at:end].split()
            if len(header) != 3:
                raise GitError(f"cat-file: {out[at:end][:200]!r}")
            size = int(header[2])
            blobs[header[0].decode()] = out[end + 1 : end + 1 + size]
            at = end + 1 + size + 1
        return blobs

    async def _git(
        self,
        *args: str,
        protocol: str = "file",
        seconds: float | None = None,
        stdin: bytes | None = None,
        limit: int = 64 * 1024,
        cwd: bool = True,
    ) -> bytes:
        """Run git on the mirror; its standard output, or GitError with its message."""
        command = [
            self.settings.git,
            "-c",
            "protocol.allow=never",
            "-c",
            f"protocol.{protocol}.allow=always",
        ]
        if cwd:
            command += ["-C", str(self.directory)]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=_environment(),
                start_new_session=True,  # its own process group: ssh and helpers die with it
            )
        except FileNotFoundError:
            raise GitError(
                f"the {self.settings.git!r} command is not installed on the server"
            ) from None
        try:
            async with asyncio.timeout(seconds or self.settings.command_timeout):
                out, err = await self._communicate(process, stdin, limit)
                code = await process.wait()
        except TimeoutError:
            raise GitError(
                f"git {args[0]} did not finish within {seconds or self.settings.command_timeout} s"
            ) from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if code != 0:
            raise GitError(_message(err, self.settings.max_message_bytes))
        return out

    async def _communicate(
        self, process: asyncio.subprocess.Process, stdin: bytes | None, limit: int
    ) -> tuple[bytes, bytes]:
        assert process.stdout is not None  # noqa: S101 - both are pipes (see above)
        assert process.stderr is not None  # noqa: S101
        try:
            async with asyncio.TaskGroup() as group:
                if stdin is not None and process.stdin is not None:
                    group.create_task(_feed(process.stdin, stdin), name="gitsource.git-stdin")
                out = group.create_task(
                    _read_bounded(process.stdout, limit, keep_tail=False),
                    name="gitsource.git-stdout",
                )
                err = group.create_task(
                    _read_bounded(process.stderr, self.settings.max_message_bytes, keep_tail=True),
                    name="gitsource.git-stderr",
                )
        except ExceptionGroup as failed:
            found = failed.subgroup(GitError)
            if found is None:
                raise
            raise found.exceptions[0] from None
        return out.result(), err.result()


async def _feed(pipe: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        pipe.write(data)
        await pipe.drain()
    pipe.close()
