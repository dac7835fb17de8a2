"""The systemd watchdog: when it is on (sd_watchdog_enabled(3)) and the pings' cadence.

A datagram socket stands in for systemd's notify socket; the pings are real datagrams sent
from this test's event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import Iterator

import pytest

from daemon_support import systemd
from tests.harness.waiting import eventually_async


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """The systemd side: an abstract datagram socket named in $NOTIFY_SOCKET, non-blocking."""
    name = f"edgefleet-watchdog-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.setblocking(False)  # noqa: FBT003 - the socket module's signature
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield listener


def received(listener: socket.socket) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(listener.recv(256))
        except BlockingIOError:
            return messages


@pytest.mark.usefixtures("notify_socket")
def test_no_watchdog_without_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_from_environment() is None


@pytest.mark.usefixtures("notify_socket")
def test_the_timeout_comes_from_watchdog_usec_and_pings_every_half(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    watchdog = systemd.watchdog_from_environment()
    assert watchdog == systemd.Watchdog(timeout=30.0, notify_socket=os.environ["NOTIFY_SOCKET"])
    assert watchdog.interval == 15.0


@pytest.mark.usefixtures("notify_socket")
def test_a_watchdog_meant_for_another_process_is_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that inherited its parent's variables must not ping for the parent."""
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    assert systemd.watchdog_from_environment() is None


def test_no_watchdog_without_a_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_from_environment() is None


@pytest.mark.parametrize(
    ("usec", "says"),
    [
        ("", "not a whole number"),
        ("30s", "not a whole number"),
        ("-1", "not a whole number"),
        (" 30000000", "not a whole number"),
        ("3.5", "not a whole number"),
        ("٣٠٠٠٠", "not a whole number"),  # Arabic-Indic digits: str.isdigit() alone takes them
        ("0", "out of range"),
        ("9999", "out of range"),
        (str(2**64 - 1), "out of range"),  # systemd's infinity
    ],
)
@pytest.mark.usefixtures("notify_socket")
def test_values_systemd_never_writes_are_refused(
    monkeypatch: pytest.MonkeyPatch, usec: str, says: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    with pytest.raises(systemd.WatchdogError, match=rf"WATCHDOG_USEC=.*{says}"):
        systemd.watchdog_from_environment()


@pytest.mark.parametrize("pid", ["", "0", "-5", "12a", "1.0"])
@pytest.mark.usefixtures("notify_socket")
def test_a_watchdog_pid_that_is_no_pid_is_refused(
    monkeypatch: pytest.MonkeyPatch, pid: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", pid)
    with pytest.raises(systemd.WatchdogError, match=r"WATCHDOG_PID=.* is not a process id"):
        systemd.watchdog_from_environment()


async def test_pings_repeat_at_half_the_timeout(notify_socket: socket.socket) -> None:
    """Every ping lands within the timeout of the one before, and no sooner than half of it."""
    watchdog = systemd.Watchdog(timeout=1.0, notify_socket=os.environ["NOTIFY_SOCKET"])
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []

    async def pings() -> int:
        arrivals.extend(loop.time() for _ in received(notify_socket))
        return len(arrivals)

    async with asyncio.TaskGroup() as group:
        task = group.create_task(systemd.feed_watchdog(watchdog), name="test.watchdog")
        await eventually_async(pings, lambda n: n >= 4, what="four WATCHDOG=1", every=0.01)
        task.cancel()
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Lower bound exact (the task sleeps the interval); upper bound: systemd's own limit.
    assert all(0.5 * 0.95 <= gap < 1.0 for gap in gaps), gaps
    assert received(notify_socket) == []  # cancelled: no ping after


async def test_every_ping_says_watchdog_1(notify_socket: socket.socket) -> None:
    watchdog = systemd.Watchdog(timeout=0.02, notify_socket=os.environ["NOTIFY_SOCKET"])
    seen: list[bytes] = []

    async def pings() -> int:
        seen.extend(received(notify_socket))
        return len(seen)

    async with asyncio.TaskGroup() as group:
        task = group.create_task(systemd.feed_watchdog(watchdog), name="test.watchdog")
        await eventually_async(pings, lambda n: n >= 3, what="three pings", every=0.01)
        task.cancel()
    assert set(seen) == {b"WATCHDOG=1"}


async def test_without_a_watchdog_the_task_ends_at_once_and_sends_nothing(
    notify_socket: socket.socket,
) -> None:
    await asyncio.wait_for(systemd.feed_watchdog(None), timeout=5)
    assert received(notify_socket) == []


async def test_a_ping_that_cannot_be_sent_is_logged_and_the_pings_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The socket is gone (systemd restarting): warn, keep the loop and the task alive."""
    watchdog = systemd.Watchdog(timeout=0.02, notify_socket="@edgefleet-watchdog-nobody-listens")

    async def warnings() -> int:
        return sum(r.getMessage().startswith("watchdog ping not sent") for r in caplog.records)

    async with asyncio.TaskGroup() as group:
        task = group.create_task(systemd.feed_watchdog(watchdog), name="test.watchdog")
        await eventually_async(warnings, lambda n: n >= 2, what="two warnings", every=0.01)
        assert not task.done()
        task.cancel()
