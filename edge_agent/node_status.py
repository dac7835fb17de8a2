"""Node status: collect this machine's vitals with psutil and report them over the tunnel.

Rules:

* The report is a flat map ``"group.key" -> scalar`` (CPU, memory, disk, load, network rates,
  boot time, OS and kernel, agent version, certificate expiry, tunnel RTT, plus whatever the
  ``extra_sources`` return, e.g. ``cache.*`` or ``twins.*``). Values are rounded to what a
  person reads (0.1 %, whole bytes per second, MiB) so that an idle node's report barely moves.
* Uptime is sent as the boot time (``boot.time``), which does not change: the server derives
  uptime. Unchanging facts (OS, kernel, totals) are sent once per full report only.
* One stream to the cloud target ``status`` per tunnel session (see the server's
  ``tunnel_server/status/service.py`` for the wire format): a full report first, then every
  ``interval`` seconds a delta with only the keys that changed (and the keys that went away),
  and a full report again every ``full_every`` seconds so the cloud never drifts.
* No tunnel, no reports: the reporter waits for the session and starts again with a full
  report. Reports are status, not events: nothing is queued while offline (the cloud marks
  the node offline, which is the truth).
* Collection runs in a worker thread: a hung disk must not stall the tunnel's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, Protocol

import psutil

from edge_agent import __version__
from edge_agent.identity import Identity, NotJoinedError
from edge_agent.settings import NodeStatusSettings
from tunnel_aio import StreamError, TunnelConnection
from tunnel_protocol import SessionState

log = logging.getLogger("edge_agent.node_status")

__all__ = [
    "MAX_EXTRA_KEYS",
    "MAX_STRING",
    "PROTOCOL_VERSION",
    "STATUS_TARGET",
    "ExtraSource",
    "Metrics",
    "NodeStatusCollector",
    "NodeStatusReporter",
    "NodeStatusSettings",  # lives in edge_agent.settings with every agent setting
    "ReportEncoder",
    "Scalar",
    "SessionHolder",
    "diff",
]


class SessionHolder(Protocol):
    """What the reporter needs of the agent's tunnel client: its current session, if any.

    A protocol rather than ``TunnelClient`` itself: the reporter needs only the session, and
    the reporter's tests and tools can hand it any holder of one.
    """

    @property
    def connection(self) -> TunnelConnection | None: ...


STATUS_TARGET = "status"
PROTOCOL_VERSION = 1
Scalar = str | int | float | bool | None
Metrics = dict[str, Scalar]
ExtraSource = Callable[[], Mapping[str, object]]
MAX_EXTRA_KEYS = 64
"""Keys taken from one extra source; the cloud refuses reports over 512 keys."""
MAX_STRING = 256
_MIB = 1024 * 1024


def _round(value: float, digits: int = 1) -> float:
    return round(value, digits) if math.isfinite(value) else 0.0


def _flatten(prefix: str, raw: Mapping[str, object], out: Metrics, depth: int = 0) -> None:
    for key, value in raw.items():
        name = f"{prefix}.{key}".lower()
        if isinstance(value, Mapping) and depth < 3:
            _flatten(name, value, out, depth + 1)
        elif value is None or isinstance(value, bool | int | str):
            out[name] = value[:MAX_STRING] if isinstance(value, str) else value
        elif isinstance(value, float):
            out[name] = _round(value, 3)


def _os_name() -> str:
    with contextlib.suppress(OSError):
        release = platform.freedesktop_os_release()
        return release.get("PRETTY_NAME") or release.get("NAME") or platform.system()
    return f"{platform.system()} {platform.release()}"


class NodeStatusCollector:
    """Takes one sample of the machine. Not thread-safe; one sample at a time."""

    def __init__(
        self,
        *,
        data_dir: Path,
        disk_path: Path,
        rtt: Callable[[], float | None] = lambda: None,
        extra_sources: Mapping[str, ExtraSource] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._data_dir = data_dir
        self._disk_path = disk_path
        self._rtt = rtt
        self._extra = dict(extra_sources or {})
        self._clock = clock
        self._last_net: tuple[float, int, int] | None = None
        self._static = self._static_facts()
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    @staticmethod
    def _static_facts() -> Metrics:
        return {
            "agent.version": __version__,
            "agent.pid": os.getpid(),
            "host.name": platform.node()[:MAX_STRING],
            "host.arch": platform.machine(),
            "os.system": platform.system(),
            "os.name": _os_name()[:MAX_STRING],
            "os.release": platform.release()[:MAX_STRING],
            "cpu.count": psutil.cpu_count() or 0,
            "boot.time": psutil.boot_time(),
        }

    def sample(self) -> Metrics:
        metrics: Metrics = dict(self._static)
        metrics["cpu.percent"] = _round(psutil.cpu_percent(interval=None))
        load = psutil.getloadavg()
        metrics.update({"load.1": _round(load[0], 2), "load.5": _round(load[1], 2)})
        metrics["load.15"] = _round(load[2], 2)
        memory = psutil.virtual_memory()
        metrics["memory.total"] = memory.total
        metrics["memory.used"] = (memory.total - memory.available) // _MIB * _MIB
        metrics["memory.percent"] = _round(memory.percent)
        metrics.update(self._disk())
        metrics.update(self._network())
        metrics.update(self._certificate())
        rtt = self._rtt()
        metrics["tunnel.rtt_ms"] = None if rtt is None else _round(rtt * 1000, 1)
        for name, source in self._extra.items():
            try:
                extra: Metrics = {}
                _flatten(name, source(), extra)
                metrics.update(dict(list(extra.items())[:MAX_EXTRA_KEYS]))
            except Exception:
                log.exception("status source %s failed; reporting without it", name)
        return metrics

    def _disk(self) -> Metrics:
        try:
            usage = psutil.disk_usage(str(self._disk_path))
        except OSError as error:
            log.warning("cannot read disk use of %s: %s", self._disk_path, error)
            return {"disk.path": str(self._disk_path)}
        return {
            "disk.path": str(self._disk_path),
            "disk.total": usage.total,
            "disk.used": usage.used // _MIB * _MIB,
            "disk.percent": _round(usage.percent),
        }

    def _network(self) -> Metrics:
        counters = psutil.net_io_counters(pernic=True)
        rx = sum(c.bytes_recv for nic, c in counters.items() if nic != "lo")
        tx = sum(c.bytes_sent for nic, c in counters.items() if nic != "lo")
        now = self._clock()
        previous, self._last_net = self._last_net, (now, rx, tx)
        if previous is None or now <= previous[0]:
            return {}
        elapsed = now - previous[0]
        return {
            "net.rx_bps": max(0, round((rx - previous[1]) / elapsed)),
            "net.tx_bps": max(0, round((tx - previous[2]) / elapsed)),
        }

    def _certificate(self) -> Metrics:
        try:
            identity = Identity.load(self._data_dir)
            # identity.json's record, or parsed when the file changed: a bad file is ValueError.
            not_after = identity.not_after.timestamp()
        except (NotJoinedError, OSError, ValueError):
            return {}
        return {"cert.not_after": not_after, "node.name": identity.name}


_DRAIN_CHECK = 0.25
"""Seconds between checks, while waiting for the next report, that the session still runs."""


def _usable(connection: TunnelConnection) -> bool:
    return not connection.terminated and connection.session.state is SessionState.OPEN


async def _sleep_while_usable(connection: TunnelConnection, seconds: float) -> None:
    """Sleep ``seconds``, waking early when the session starts draining or ends.

    The session offers no event for "draining", so it is polled every ``_DRAIN_CHECK``.
    """
    deadline = time.monotonic() + seconds
    for _ in range(math.ceil(seconds / _DRAIN_CHECK) + 1):
        left = deadline - time.monotonic()
        if left <= 0 or not _usable(connection):
            return
        await asyncio.sleep(min(_DRAIN_CHECK, left))


def diff(previous: Metrics, current: Metrics) -> tuple[Metrics, list[str]]:
    """What changed from ``previous`` to ``current``, and the keys that went away."""
    changed = {k: v for k, v in current.items() if k not in previous or previous[k] != v}
    removed = sorted(k for k in previous if k not in current)
    return changed, removed


class ReportEncoder:
    """Turns samples into report lines: full first, then deltas, full again every so often.

    Sans-IO: time is an argument. One encoder per status stream.
    """

    def __init__(self, *, interval: float, full_every: float) -> None:
        self._interval = interval
        self._full_every = full_every
        self._sent: Metrics = {}
        self._next_full: float | None = None
        self.seq = 0

    def encode(self, metrics: Metrics, *, now: float) -> bytes:
        """The next line to send; an empty delta still goes out: it renews the node's lease."""
        kind: Literal["full", "delta"]
        removed: list[str] = []
        if self._next_full is None or now >= self._next_full:
            kind, body = "full", dict(metrics)
            self._next_full = now + self._full_every
        else:
            kind = "delta"
            body, removed = diff(self._sent, metrics)
        self._sent = dict(metrics)
        self.seq += 1
        message: dict[str, object] = {
            "v": PROTOCOL_VERSION,
            "type": kind,
            "seq": self.seq,
            "interval": self._interval,
            "metrics": body,
        }
        if removed:
            message["removed"] = removed
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class NodeStatusReporter:
    """Reports this node's status over the agent's tunnel for as long as ``run()`` runs."""

    def __init__(
        self,
        *,
        client: SessionHolder,
        settings: NodeStatusSettings,
        data_dir: Path,
        extra_sources: Mapping[str, ExtraSource] | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self.collector = NodeStatusCollector(
            data_dir=data_dir,
            disk_path=settings.disk_path,
            rtt=self._rtt,
            extra_sources=extra_sources,
        )
        self.reports_sent = 0
        self.bytes_sent = 0
        self.streams_opened = 0
        self.last_error: str | None = None
        self.last_report: float | None = None

    def _rtt(self) -> float | None:
        connection = self._client.connection
        return None if connection is None else connection.rtt

    def status(self) -> dict[str, object]:
        """For the local API's /status (``sources={"node_status": reporter.status}``)."""
        return {
            "interval_seconds": self._settings.interval,
            "reports_sent": self.reports_sent,
            "bytes_sent": self.bytes_sent,
            "streams_opened": self.streams_opened,
            "last_report": self.last_report,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        """Report while a tunnel session is up; wait for one while it is not. Runs forever."""
        while True:
            connection = self._client.connection
            if connection is None or connection.terminated:
                await asyncio.sleep(self._settings.idle_poll)
                continue
            try:
                await self.report_over(connection)
            except StreamError as error:
                self.last_error = str(error)
                if not connection.terminated:
                    log.warning("status stream failed; retrying: %s", error)
                    await asyncio.sleep(self._settings.retry_delay)

    async def report_over(self, connection: TunnelConnection) -> None:
        """One status stream over ``connection``, until the stream or the session ends."""
        settings = self._settings
        stream = await connection.open_stream(STATUS_TARGET, timeout=settings.open_timeout)
        self.streams_opened += 1
        encoder = ReportEncoder(interval=settings.interval, full_every=settings.full_every)
        log.info("reporting node status every %ss", settings.interval)
        try:
            while _usable(connection):
                metrics = await asyncio.to_thread(self.collector.sample)
                line = encoder.encode(metrics, now=time.monotonic())
                await stream.write(line)
                self.reports_sent += 1
                self.bytes_sent += len(line)
                self.last_report = time.time()
                self.last_error = None
                await _sleep_while_usable(connection, settings.interval)
            # Draining (agent stopping, or server going away): end our side so the drain
            # does not wait for a status stream that would never finish on its own.
            stream.end()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DRAIN_CHECK * 4):
                    await stream.wait_closed()
        finally:
            stream.reset()
