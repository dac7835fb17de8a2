"""Child processes that never outlive the test run."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import weakref
from pathlib import Path
from typing import IO

from tests.harness.waiting import NotSeen, eventually

log = logging.getLogger("tests.harness.procs")

_PR_SET_PDEATHSIG = 1
_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


class ServiceError(RuntimeError):
    """A real service could not start; the message says which and shows its log."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process dies (even by SIGKILL),
    # the kernel kills this child, so no kube-apiserver or broker outlives a crashed run.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range, which outgoing connections never take."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return 10000, max(10001, low - 1)


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now, for a service this process starts next.

    Taken from below the ephemeral range and never handed out twice in one run: a port the
    kernel handed out for bind(0) could be taken by any outgoing connection between our check
    and the service's bind (seen: "address already in use" on an agent's local API port).
    """
    low, high = _port_range()
    for _ in range(1000):
        port = secrets.randbelow(high - low + 1) + low
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ServiceError(f"no free TCP port on {host} in {low}-{high}")


def wait_port(host: str, port: int, *, timeout: float, proc: ManagedProcess | None = None) -> None:
    def connect() -> bool:
        if proc is not None:
            proc.check_running()
        with socket.create_connection((host, port), timeout=0.5):
            return True

    try:
        eventually(connect, what=f"a listener on {host}:{port}", within=timeout, ignore=(OSError,))
    except NotSeen as error:
        raise ServiceError(str(error)) from error


class ManagedProcess:
    """One child process with its output in a log file, stopped with TERM then KILL."""

    def __init__(
        self, name: str, argv: list[str], *, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - pytest's main thread; see _die_with_parent
        )
        _LIVE.add(self)
        log.info("started %s pid=%s", name, self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 40) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def check_running(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ServiceError(
                f"{self.name} exited with code {code} during start-up; last lines of "
                f"{self.log_path}:\n{self.tail()}"
            )

    def stop(self, *, grace: float = 10.0) -> None:
        """TERM the whole process group, wait, then KILL; idempotent."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %s s; killing", self.name, grace)
                self.kill()
        self._log.close()
        _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL the process group at once (fault injection, or a stuck service)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._log.close()
        _LIVE.discard(self)


def stop_all() -> None:
    """Last resort at interpreter exit: stop whatever a failing test left running."""
    for proc in list(_LIVE):
        proc.stop(grace=2.0)
