"""Start and stop the processes of a benchmark: each in its own process group, always stopped.

Every process runs in a new session (so Ctrl-C in the terminal reaches only the bench, which
then stops them in order), logs to a file in the run's work folder, and is stopped by
``running``'s exit: SIGTERM to its group, a grace period, then SIGKILL to the group and to any
descendant that left it (sshd's per-connection children call setsid).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

STOP_GRACE_S = 3.0


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


@dataclass(slots=True)
class Proc:
    name: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise BenchError(
                f"{self.name} exited with status {self.process.returncode}; "
                f"its log ({self.log}) ends with:\n{self.log_tail()}"
            )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


async def stop(proc: Proc) -> None:
    """Stop ``proc``, its process group and its descendants; bounded by STOP_GRACE_S."""
    if proc.process.returncode is not None:
        return
    strays = _descendants(proc.pid)
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.process.wait(), STOP_GRACE_S)
    except (TimeoutError, asyncio.CancelledError):
        _signal_group(proc.pid, signal.SIGKILL)
        raise_later = True
    else:
        raise_later = False
    for child in strays:
        with contextlib.suppress(psutil.Error):
            child.kill()
    if raise_later and proc.process.returncode is None:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(proc.process.wait(), STOP_GRACE_S)


@contextlib.asynccontextmanager
async def running(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    stdout_pipe: bool = False,
    stdin_pipe: bool = False,
) -> AsyncIterator[Proc]:
    """Run ``argv`` for the duration of the ``async with`` block, logging to ``log_dir/name.log``.

    With ``stdout_pipe`` stdout is a pipe the caller reads (stderr still goes to the log); with
    ``stdin_pipe`` stdin is a pipe the caller writes (otherwise /dev/null).
    """
    log = log_dir / f"{name}.log"
    with log.open("ab") as sink:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout_pipe else sink,
                stderr=sink,
                env={**os.environ, **env} if env is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            raise BenchError(f"cannot start {name} ({argv[0]}): {exc}") from exc
    proc = Proc(name=name, process=process, log=log)
    try:
        yield proc
    finally:
        await stop(proc)


async def run(
    argv: Sequence[str], within_s: float, *, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run a short command to its end within ``within_s`` seconds: (status, stdout, stderr)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env} if env is not None else None,
            start_new_session=True,
        )
    except OSError as exc:
        raise BenchError(f"cannot run {argv[0]}: {exc}") from exc
    proc = Proc(name=argv[0], process=process, log=Path(os.devnull))
    try:
        out, err = await asyncio.wait_for(process.communicate(), within_s)
    except TimeoutError:
        raise BenchError(
            f"{' '.join(argv[:3])} ... did not finish within {within_s:.0f} s"
        ) from None
    finally:
        await stop(proc)
    assert process.returncode is not None  # noqa: S101 - communicate() waited for it
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def wait_for_port(port: int, within_s: float, proc: Proc | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + within_s
    while True:
        if proc is not None:
            proc.check_alive()
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise BenchError(
                    f"nothing listens on 127.0.0.1:{port} after {within_s:.0f} s"
                ) from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the live processes ``pids`` and their descendants."""
    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in tree:
            if process.pid in seen:
                continue
            seen.add(process.pid)
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    return total
