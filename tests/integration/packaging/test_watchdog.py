"""Both daemons feed systemd's watchdog from their event loop, and stop when the loop blocks.

Each daemon runs as a real process with the environment systemd gives a ``Type=notify`` unit
with ``WatchdogSec=``: ``NOTIFY_SOCKET`` (a datagram socket this test reads), ``WATCHDOG_USEC``
and ``WATCHDOG_PID`` (set by ``sh -c 'WATCHDOG_PID=$$ exec ...'``: exec keeps the pid). It must
send READY=1, then WATCHDOG=1 about every WATCHDOG_USEC / 2.

How the loop is blocked, for real and with no hook in the daemons: their stderr (systemd's
journal stream) is a pipe this test stops reading and fills to the brim. The daemon's next log
line (the access-log line of a local API request on the agent, "console session created" for
a POST /api/v1/sessions on the server) blocks in write() on the event loop's thread, as when
journald stalls. The process is not stopped (SIGSTOP would stop every thread; this stops only
the loop): the pings stop. Draining the pipe releases the loop, and the pings come back.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.daemons import BIN, REPO, Agent, Server
from tests.harness.procs import ManagedProcess, free_port
from tests.harness.waiting import eventually

pytestmark = pytest.mark.timeout(300)

WATCHDOG_USEC = 1_000_000
"""One second: pings every 0.5 s, so a stall shows within seconds."""

PING_EVERY = WATCHDOG_USEC / 2 / 1_000_000
STALLED_FOR = 6 * PING_EVERY
"""Seconds without a ping that count as "the pings stopped": six missed intervals, far more
than a busy machine delays a timer, far less than the deadline the waits allow."""

UNITS = Path(__file__).resolve().parents[3] / "packaging" / "systemd"


@dataclass
class Journal:
    """The daemon's stdout and stderr: a pipe this test reads only when it wants to."""

    read_fd: int
    write_fd: int
    text: list[str] = field(default_factory=list)

    @classmethod
    def open(cls) -> Journal:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)  # the read end only: the daemon's writes stay blocking
        return cls(read_fd, write_fd)

    @property
    def path(self) -> Path:
        """The write end as a file name: ManagedProcess opens it for the daemon's output."""
        return Path(f"/proc/{os.getpid()}/fd/{self.write_fd}")

    def drain(self) -> str:
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return "".join(self.text)
            self.text.append(chunk.decode(errors="replace"))

    def fill(self) -> None:
        """Fill the pipe so the daemon's next write blocks (our own non-blocking writer)."""
        # A new open file description of the write end: O_NONBLOCK on it leaves the daemon's
        # description (its stderr) blocking.
        filler = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            for size in (4096, 1):  # pages, then the last bytes: no room left at all
                with contextlib.suppress(BlockingIOError):
                    while True:
                        os.write(filler, b"\n" * size)
        finally:
            os.close(filler)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


@dataclass
class Systemd:
    """The notify socket: every datagram with the time it was read."""

    sock: socket.socket
    messages: list[tuple[float, bytes]] = field(default_factory=list)

    @classmethod
    def open(cls) -> Systemd:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(f"\0edgefleet-watchdog-{os.getpid()}-{free_port()}")
        sock.setblocking(False)  # noqa: FBT003 - the socket module's signature
        return cls(sock)

    @property
    def env(self) -> dict[str, str]:
        name = self.sock.getsockname()
        assert isinstance(name, bytes)
        return {"NOTIFY_SOCKET": "@" + name[1:].decode(), "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    def receive(self) -> list[bytes]:
        while True:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(256)))
            except BlockingIOError:
                return [message for _, message in self.messages]

    def pings(self) -> list[float]:
        self.receive()
        return [at for at, message in self.messages if message == b"WATCHDOG=1"]

    def silent_for(self) -> float:
        """Seconds since the last WATCHDOG=1."""
        return time.monotonic() - self.pings()[-1]


def as_systemd_starts(argv: list[str]) -> list[str]:
    """``argv`` with WATCHDOG_PID set to its own pid, as systemd sets it for the main process."""
    return ["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"', *argv]


@contextlib.contextmanager
def launch(
    name: str, argv: list[str], systemd: Systemd, journal: Journal
) -> Iterator[ManagedProcess]:
    process = ManagedProcess(
        name,
        as_systemd_starts(argv),
        log_path=journal.path,
        env={**systemd.env, "PYTHONPATH": str(REPO)},
    )
    try:
        yield process
    finally:
        journal.drain()  # what it logs while stopping must not block on a full pipe
        stopper = threading.Thread(target=process.stop, name="test.stop")
        stopper.start()
        while stopper.is_alive():
            journal.drain()
            stopper.join(timeout=0.05)


@pytest.fixture
def systemd() -> Iterator[Systemd]:
    made = Systemd.open()
    yield made
    made.sock.close()


@pytest.fixture
def journal() -> Iterator[Journal]:
    made = Journal.open()
    yield made
    made.close()


def wait_ready_then_pings(process: ManagedProcess, systemd: Systemd, journal: Journal) -> None:
    def messages() -> list[bytes]:
        log = journal.drain()  # keep the pipe flowing while it starts
        assert process.popen.poll() is None, f"{process.name} exited:\n{log[-3000:]}"
        return systemd.receive()

    seen = eventually(
        messages,
        lambda m: m.count(b"WATCHDOG=1") >= 3,
        what=f"{process.name}: READY=1 then three WATCHDOG=1",
        within=60,
    )
    assert seen[0] == b"READY=1", seen
    assert set(seen[1:]) == {b"WATCHDOG=1"}, seen


def block_the_loop_and_release(
    process: ManagedProcess, systemd: Systemd, journal: Journal, log_something: Callable[[], int]
) -> int:
    """Fill the journal, make the daemon log, see the pings stop; drain, see them resume.

    Returns the HTTP status of the request that made it log (it completes once released).
    """
    before = systemd.pings()
    gaps = [later - earlier for earlier, later in itertools.pairwise(before)]
    assert max(gaps) < STALLED_FOR, f"pings were not regular before the block: {gaps}"
    journal.drain()
    journal.fill()
    outcome: list[int] = []
    request = threading.Thread(target=lambda: outcome.append(log_something()), name="test.req")
    request.start()
    try:
        eventually(
            systemd.silent_for,
            lambda silent: silent >= STALLED_FOR,
            what=f"{process.name}: no WATCHDOG=1 for {STALLED_FOR} s with its loop blocked",
            within=60,
            every=0.1,
        )
        state = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state != "T", "the process is stopped; the test means to block only its loop"
        blocked_at = systemd.pings()[-1]
    finally:
        journal.drain()  # release the loop
    eventually(
        systemd.pings,
        lambda pings: pings[-1] > blocked_at,
        what=f"{process.name}: WATCHDOG=1 again once the loop runs",
        within=60,
    )

    def answered() -> list[int]:
        journal.drain()
        return outcome

    eventually(answered, what="the request that logged answered", within=60)
    request.join()
    return outcome[0]


def test_tunnel_server_pings_from_its_loop(
    tmp_path: Path, systemd: Systemd, journal: Journal
) -> None:
    server = Server(workdir=tmp_path)
    argv = [str(BIN / "tunnel-server"), "run", "--listen", f"127.0.0.1:{server.port}"]
    argv += ["--data-dir", str(server.data_dir), "--public-name", "127.0.0.1"]
    with launch("tunnel-server", argv, systemd, journal) as process:
        wait_ready_then_pings(process, systemd, journal)

        def create_session() -> int:  # logs "console session created"
            request = urllib.request.Request(  # noqa: S310 - our own loopback server
                server.url + "/api/v1/sessions",
                method="POST",
                data=b"{}",
                headers={"Authorization": f"Bearer {server.admin_token}"},
            )
            with urllib.request.urlopen(request, timeout=120, context=server.ssl_context()) as r:  # noqa: S310 - ours
                json.loads(r.read())
                return int(r.status)

        assert block_the_loop_and_release(process, systemd, journal, create_session) == 201
        assert "console session created" in journal.drain()

        # What systemd does when the pings stop (WatchdogSignal=SIGABRT): the stacks of every
        # thread reach the journal, so a restart leaves a record of where the loop hung.
        os.kill(process.pid, signal.SIGABRT)

        def died() -> int | None:
            journal.drain()
            return process.popen.poll()

        assert eventually(died, lambda code: code is not None, what="dead") == -signal.SIGABRT
        dump = journal.drain()
        assert "Fatal Python error: Aborted" in dump, dump[-2000:]
        assert re.search(r"(?m)^(Current thread|Thread) 0x[0-9a-f]+", dump), dump[-2000:]


def test_edge_agent_pings_from_its_loop(tmp_path: Path, systemd: Systemd, journal: Journal) -> None:
    server = Server(workdir=tmp_path)
    server.start()
    try:
        agent = Agent(name="watched", workdir=tmp_path, server=server)
        agent.join()
        argv = [str(BIN / "edge-agent"), "run", "--config", str(agent.write_config())]
        argv += ["--data-dir", str(agent.data_dir)]
        argv += ["--local-api-port", str(agent.local_api_port)]
        with launch("edge-agent", argv, systemd, journal) as process:
            wait_ready_then_pings(process, systemd, journal)

            def get_status() -> int:  # the local API logs every request (aiohttp.access)
                url = f"http://127.0.0.1:{agent.local_api_port}/status"
                with urllib.request.urlopen(url, timeout=120) as answer:
                    return int(answer.status)

            assert block_the_loop_and_release(process, systemd, journal, get_status) == 200
            assert re.search(r'"GET /status HTTP/1\.1" 200', journal.drain())
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["edge-agent", "tunnel-server"])
def test_units_arm_the_watchdog(name: str) -> None:
    text = (UNITS / f"{name}.service").read_text()
    assert re.search(r"(?m)^WatchdogSec=30s$", text)
    assert re.search(r"(?m)^NotifyAccess=main$", text)  # pings from the main process only
    assert "No WatchdogSec=" not in text


@pytest.mark.parametrize("program", ["edge-agent", "tunnel-server"])
def test_a_watchdog_value_systemd_never_writes_stops_the_start(
    program: str, tmp_path: Path, systemd: Systemd
) -> None:
    argv = [str(BIN / program), "run", "--data-dir", str(tmp_path / "data")]
    if program == "tunnel-server":
        argv += ["--listen", f"127.0.0.1:{free_port()}", "--public-name", "127.0.0.1"]
    else:
        argv += ["--local-api-port", str(free_port())]
    done = subprocess.run(
        argv,
        env={**os.environ, **systemd.env, "WATCHDOG_USEC": "30s", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "WATCHDOG_USEC='30s' is not a whole number of microseconds" in done.stderr
    assert "Traceback" not in done.stderr
    assert systemd.receive() == []  # refused before READY=1
