"""A fresh Debian root (debootstrap, cached as a tarball) to install our packages into.

Commands run in it with chroot, as root or, through setpriv, as a service user, with a clean
environment: nothing of this machine's Python or .venv leaks in. /proc is mounted while the
root is in use (the agent reads node status from it) and unmounted before it is deleted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}
COMMAND_TIMEOUT = 300.0
"""Seconds for one dpkg or CLI run in the root; a package install compiles ~4,000 modules."""


def cached_tarball() -> Path:
    """packaging/deb/debian-root: debootstrap once, then the cached tarball."""
    done = subprocess.run(
        [str(REPO / "packaging" / "deb" / "debian-root")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


class DebianRoot:
    def __init__(self, path: Path) -> None:
        self.path = path

    def argv(self, *argv: str, user: str | None = None) -> list[str]:
        prefix = ["chroot", str(self.path)]
        if user is not None:
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
        return [*prefix, *argv]

    def run(self, *argv: str, user: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            self.argv(*argv, user=user),
            capture_output=True,
            text=True,
            env=ENV,
            check=False,
            timeout=COMMAND_TIMEOUT,
        )
        if check:
            assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stderr}"
        return done.stdout

    def rc(self, *argv: str, user: str | None = None) -> int:
        return subprocess.run(
            self.argv(*argv, user=user),
            capture_output=True,
            env=ENV,
            check=False,
            timeout=COMMAND_TIMEOUT,
        ).returncode

    def file(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    @contextlib.contextmanager
    def daemon(self, *argv: str, user: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
        """A long-running command in the root, stopped with SIGTERM (then SIGKILL) after."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                self.argv(*argv, user=user),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=ENV,
                start_new_session=True,
            )
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)


@contextlib.contextmanager
def fresh_root(tarball: Path, where: Path) -> Iterator[DebianRoot]:
    where.mkdir()
    # Our own tarball (packaging/deb/debian-root): device nodes and owners as debootstrap made
    # them.
    subprocess.run(["tar", "--numeric-owner", "-xf", str(tarball), "-C", str(where)], check=True)
    proc = where / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        yield DebianRoot(where)
    finally:
        subprocess.run(["umount", "--lazy", str(proc)], check=True)
        # --one-file-system: never follow into anything still mounted.
        subprocess.run(["rm", "-rf", "--one-file-system", str(where)], check=False)
