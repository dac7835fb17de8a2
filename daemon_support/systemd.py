"""sd_notify and the systemd watchdog for Type=notify units. No-op outside systemd.

Rules:

* ``notify`` sends one state (``READY=1``, ``STOPPING=1``) to ``$NOTIFY_SOCKET`` and does
  nothing when the variable is unset (not started by systemd).
* The watchdog follows sd_watchdog_enabled(3): it is on when ``$WATCHDOG_USEC`` is set and,
  if ``$WATCHDOG_PID`` is set, names this process (a child that inherited the variables must
  not ping for its parent). A value systemd would never write is refused with
  ``WatchdogError``, so a mistyped ``Environment=WATCHDOG_USEC=`` fails the start with one
  line instead of a daemon that systemd kills every ``WatchdogSec=`` for no visible reason.
* ``feed_watchdog`` pings from the event loop, as a task of the daemon's task group, at half
  the timeout (the interval sd_watchdog_enabled(3) recommends). It proves the loop runs, not
  merely that the process exists: a loop stuck in a blocking call cannot run the task, the
  pings stop, and systemd kills and restarts the daemon once ``WatchdogSec=`` passes.
* A ping that cannot be sent (socket gone, its queue full) is logged and skipped, never
  awaited: the pinging task must not block the loop it vouches for.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import socket
from dataclasses import dataclass

log = logging.getLogger("daemon_support.systemd")

MIN_WATCHDOG_USEC = 10_000
"""Microseconds: below 10 ms the pings would keep the loop busy; systemd's own units use
seconds. Smaller values are refused rather than spinning."""

_USEC_INFINITY = 2**64 - 1
"""systemd's "no timeout" (``USEC_INFINITY``); sd_watchdog_enabled(3) refuses it."""


class WatchdogError(ValueError):
    """``$WATCHDOG_USEC`` or ``$WATCHDOG_PID`` holds what systemd never writes; says which."""


def _address(value: str) -> str:
    """The socket address of a ``$NOTIFY_SOCKET`` value ("@name" is the abstract namespace)."""
    return "\0" + value[1:] if value.startswith("@") else value


def notify(state: str) -> bool:
    """Send ``state`` (such as ``READY=1``) to ``$NOTIFY_SOCKET``; False outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(_address(address))
        sock.sendall(state.encode())
    return True


@dataclass(frozen=True, kw_only=True)
class Watchdog:
    """The watchdog systemd armed for this process (``WatchdogSec=`` of its unit)."""

    timeout: float
    """Seconds without a ``WATCHDOG=1`` after which systemd kills the daemon (from
    ``$WATCHDOG_USEC``)."""

    notify_socket: str
    """Where the pings go: ``$NOTIFY_SOCKET`` as systemd set it."""

    @property
    def interval(self) -> float:
        """Seconds between pings: half the timeout, so one late ping is not yet a kill."""
        return self.timeout / 2


def watchdog_from_environment() -> Watchdog | None:
    """The watchdog systemd asks this process to feed; None when there is none to feed.

    None outside systemd, when the unit has no ``WatchdogSec=``, when ``$WATCHDOG_PID``
    names another process, or when there is no ``$NOTIFY_SOCKET`` to ping. WatchdogError
    when a variable holds what systemd never writes.
    """
    usec_text = os.environ.get("WATCHDOG_USEC")
    if usec_text is None:
        return None
    usec = _parse_usec(usec_text)
    pid_text = os.environ.get("WATCHDOG_PID")
    if pid_text is not None and _parse_pid(pid_text) != os.getpid():
        return None  # inherited from the parent systemd started: not ours to feed
    notify_socket = os.environ.get("NOTIFY_SOCKET")
    if not notify_socket:
        log.warning("WATCHDOG_USEC is set but NOTIFY_SOCKET is not: no watchdog pings")
        return None
    return Watchdog(timeout=usec / 1_000_000, notify_socket=notify_socket)


def _parse_usec(text: str) -> int:
    # systemd writes a plain decimal count of microseconds; anything else was typed by hand.
    if not (text.isascii() and text.isdigit()):
        raise WatchdogError(
            f"WATCHDOG_USEC={text!r} is not a whole number of microseconds (systemd sets it"
            " from the unit's WatchdogSec=; remove any Environment=WATCHDOG_USEC=)"
        )
    usec = int(text)
    if not MIN_WATCHDOG_USEC <= usec < _USEC_INFINITY:
        raise WatchdogError(
            f"WATCHDOG_USEC={text} is out of range: give WatchdogSec= between"
            f" {MIN_WATCHDOG_USEC // 1000} ms and a finite time"
        )
    return usec


def _parse_pid(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise WatchdogError(f"WATCHDOG_PID={text!r} is not a process id")
    return int(text)


async def feed_watchdog(watchdog: Watchdog | None) -> None:
    """Send ``WATCHDOG=1`` every ``watchdog.interval`` seconds from this loop until cancelled.

    Run it as a named task of the daemon's task group, started where READY=1 is sent
    (systemd arms the watchdog when start-up completes). Without a watchdog (None) it
    returns at once, so the daemons start the task the same way in and out of systemd.
    """
    if watchdog is None:
        return
    # On a stall systemd sends SIGABRT (WatchdogSignal=): with faulthandler on, Python writes
    # every thread's stack to stderr (the journal) before it dies, so the restart leaves a
    # record of where the loop hung.
    if not faulthandler.is_enabled():
        faulthandler.enable()
    log.info(
        "systemd watchdog on",
        extra={"kv": {"timeout_s": watchdog.timeout, "ping_every_s": watchdog.interval}},
    )
    address = _address(watchdog.notify_socket)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        # Non-blocking: a full queue skips a ping; it never stalls the loop.
        sock.setblocking(False)  # noqa: FBT003 - the socket module's own signature
        while True:
            try:
                sock.sendto(b"WATCHDOG=1", address)
            except OSError as error:
                log.warning("watchdog ping not sent: %s", error)
            await asyncio.sleep(watchdog.interval)
