"""Run one operator command, bounded in time and output: what the command provider needs.

Rules:

* No shell: ``argv[0]`` is executed with ``argv[1:]`` as they are. The command gets ``stdin``
  (then end of file) and the agent's environment, in its own session and process group, so a
  timeout kills everything it started (``killpg``), its children included.
* stdout keeps its first ``max_stdout`` bytes, stderr its last ``max_stderr`` bytes (the end
  says why it failed); the rest is read and dropped, counted in ``*_dropped``, so a chatty
  command never blocks on a full pipe nor fills the agent's memory.
* ``seconds`` bounds the whole run. At the deadline the group is killed and the result says
  ``timed_out``. After the command exits, its pipes normally close at once; a child that
  keeps them open (a forgotten ``&``) gets ``pipe_grace`` seconds, then the group is killed
  and the pipes are closed on our side (``left_running``): a run never hangs on a leftover.
* Cancelling the caller kills the group too: nothing outlives the agent's interest in it.
* A command that cannot be started raises ``OSError`` (missing, not executable).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CommandRun", "run_command"]


@dataclass(frozen=True, kw_only=True, slots=True)
class CommandRun:
    returncode: int | None
    """The exit status (negative: killed by that signal); None if it could not be reaped."""
    stdout: bytes
    stderr: bytes
    stdout_dropped: int = 0
    """Bytes of stdout past ``max_stdout``, read and thrown away."""
    stderr_dropped: int = 0
    """Bytes of stderr before the kept tail, thrown away."""
    timed_out: bool = False
    left_running: bool = False
    """The command exited but something it started held its output open and was killed."""


class _Capture(asyncio.Protocol):
    """One pipe read to its end, keeping its head or its tail within ``limit`` bytes."""

    def __init__(self, limit: int, *, tail: bool) -> None:
        self.limit = limit
        self.tail = tail
        self.data = bytearray()
        self.dropped = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.ReadTransport | None = None

    async def open(self) -> int:
        """Make the pipe and read its read end; the write end, for the command (close it)."""
        read, write = os.pipe()
        pipe = os.fdopen(read, "rb", buffering=0)
        try:
            await asyncio.get_running_loop().connect_read_pipe(lambda: self, pipe)
        except BaseException:
            pipe.close()
            os.close(write)
            raise
        return write

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)  # noqa: S101 - connect_read_pipe
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.tail:
            self.data += data
            extra = len(self.data) - self.limit
            if extra > 0:
                del self.data[:extra]
                self.dropped += extra
            return
        room = max(0, self.limit - len(self.data))
        self.data += data[:room]
        self.dropped += len(data) - min(room, len(data))

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - EOF or error alike
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _kill_group(pid: int) -> None:
    # The command leads its own session (start_new_session), so its pid is the group's id; a
    # group id is not reused while any member lives, so this never hits a stranger.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _feed(pipe: asyncio.StreamWriter | None, data: bytes) -> None:
    if pipe is None:
        return
    # A command that exits without reading its input is its own business, not an error here.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        pipe.write(data)
        await pipe.drain()
    pipe.close()


async def run_command(
    argv: Sequence[str],
    *,
    stdin: bytes,
    seconds: float,
    max_stdout: int,
    max_stderr: int,
    pipe_grace: float,
    kill_wait: float,
) -> CommandRun:
    """Run ``argv`` with ``stdin``; see the rules above. ``OSError`` if it cannot start."""
    # Our own pipes for the output (not asyncio's StreamReaders): the read ends are ours to
    # close when a leftover child keeps the write ends open, and nothing buffers past a limit.
    out = _Capture(max_stdout, tail=False)
    err = _Capture(max_stderr, tail=True)
    process: asyncio.subprocess.Process | None = None
    timed_out = left_running = False
    try:
        writes: list[int] = []
        try:
            writes.append(await out.open())
            writes.append(await err.open())
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=writes[0],
                stderr=writes[1],
                start_new_session=True,
            )
        finally:
            for fd in writes:  # the command holds them now; ours would keep EOF away
                os.close(fd)
        try:
            async with asyncio.timeout(seconds):
                await _feed(process.stdin, stdin)
                await process.wait()
        except TimeoutError:
            timed_out = True
            _kill_group(process.pid)
        # asyncio.wait, not a timeout around gather: the futures must stay uncancelled so
        # "still open" can be told from "closed".
        await asyncio.wait({out.done, err.done}, timeout=kill_wait if timed_out else pipe_grace)
        if not (out.done.done() and err.done.done()):
            left_running = not timed_out
            _kill_group(process.pid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(kill_wait):
                await process.wait()
    finally:
        if process is not None:
            if process.returncode is None:
                _kill_group(process.pid)
                # Reap it here, also when the caller was cancelled: an unreaped child is a
                # zombie, and its transport collected later warns "still running".
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(kill_wait):
                        await process.wait()
            if process.stdin is not None:
                process.stdin.close()
        out.close()
        err.close()
    return CommandRun(
        returncode=process.returncode,
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        stdout_dropped=out.dropped,
        stderr_dropped=err.dropped,
        timed_out=timed_out,
        left_running=left_running,
    )
