"""The agent service ``status``: agents stream their node status reports to the cloud.

Wire format (version 1): the agent opens one stream to the target ``status`` per tunnel session
and writes newline-delimited JSON objects, one report per line::

    {"v": 1, "type": "full", "seq": 1, "interval": 10.0, "metrics": {"cpu.percent": 3.5, ...}}
    {"v": 1, "type": "delta", "seq": 2, "interval": 10.0, "metrics": {"cpu.percent": 4.0},
     "removed": ["twins.devices"]}

The first report of a stream is a full one; later ones carry only what changed, with a full
report now and then (the agent's ``full_every``). ``interval`` is the agent's reporting
interval in seconds: the server derives the node's lease from it (see ``status_history``).
Metric keys are ``[a-z0-9_.-]{1,128}``; values are JSON scalars (strings at most 256 chars).

The server never writes on the stream. A line over ``MAX_LINE_BYTES``, a line that is not such
an object, or too many keys resets the stream with PROTOCOL_ERROR and a text saying why; the
agent logs it and opens a new stream later. When the stream ends, for whatever reason, the node
is marked offline at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from tunnel_aio import StreamError, TunnelClosedError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.app_keys import (
    AGENT_SERVICES_KEY,
    AUTHORITY_KEY,
    HISTORY_KEY,
    REGISTRY_KEY,
    SESSIONS_KEY,
    SETTINGS_KEY,
    STORE_KEY,
)
from tunnel_server.status.fleet_metrics import FleetCollector, server_certificates
from tunnel_server.status.history import Metrics, StatusHistory, StatusSettings
from tunnel_server.tunnel.sessions import AgentSession

log = logging.getLogger("tunnel_server.status_service")

STATUS_TARGET = "status"
PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024
"""A full report is ~2 KB; 64 KB leaves room for extra sources and refuses floods."""
MAX_KEYS = 512
MAX_STRING = 256
_KEY_RE = re.compile(r"[a-z0-9_.-]{1,128}")


class ReportError(ValueError):
    """A report line breaks the wire format; the text goes to the agent in the RESET."""


@dataclass(frozen=True, kw_only=True)
class Report:
    kind: Literal["full", "delta"]
    seq: int
    interval: float | None
    metrics: Metrics
    removed: list[str]


def _metrics(raw: object) -> Metrics:
    if not isinstance(raw, dict):
        raise ReportError("'metrics' must be an object of key -> scalar")
    if len(raw) > MAX_KEYS:
        raise ReportError(f"more than {MAX_KEYS} metric keys")
    out: Metrics = {}
    for key, value in raw.items():
        if not _KEY_RE.fullmatch(key):
            raise ReportError(f"metric key {key[:40]!r} is not [a-z0-9_.-]{{1,128}}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ReportError(f"metric {key} is not a finite number")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise ReportError(f"metric {key} is longer than {MAX_STRING} characters")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ReportError(f"metric {key} must be a string, number, boolean or null")
        out[key] = value
    return out


def parse_report(line: bytes) -> Report:
    """One report line as a ``Report``; raises ReportError saying what is wrong."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        raise ReportError("a report line is not valid JSON") from None
    if not isinstance(data, dict):
        raise ReportError("a report line must be a JSON object")
    if data.get("v") != PROTOCOL_VERSION:
        raise ReportError(f"unsupported report version {data.get('v')!r}; this server speaks 1")
    kind = data.get("type")
    if kind not in ("full", "delta"):
        raise ReportError("'type' must be 'full' or 'delta'")
    seq = data.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ReportError("'seq' must be a non-negative integer")
    interval = data.get("interval")
    if interval is not None and (
        not isinstance(interval, int | float)
        or isinstance(interval, bool)
        or not 0 < interval <= 86400
    ):
        raise ReportError("'interval' must be seconds in (0, 86400]")
    removed = data.get("removed", [])
    if not isinstance(removed, list) or len(removed) > MAX_KEYS:
        raise ReportError(f"'removed' must be a list of at most {MAX_KEYS} keys")
    if not all(isinstance(key, str) and _KEY_RE.fullmatch(key) for key in removed):
        raise ReportError("'removed' holds a key that is not [a-z0-9_.-]{1,128}")
    return Report(
        kind=kind,
        seq=seq,
        interval=None if interval is None else float(interval),
        metrics=_metrics(data.get("metrics", {})),
        removed=list(removed),
    )


async def read_lines(stream: TunnelStream, *, limit: int) -> AsyncIterator[bytes]:
    """Lines of ``stream`` without their newline; ReportError for a line over ``limit``."""
    buffer = bytearray()
    while chunk := await stream.read():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if len(line) > limit:
                raise ReportError(f"report line over {limit} bytes")
            if line.strip():
                yield line
        if len(buffer) > limit:
            raise ReportError(f"report line over {limit} bytes")
    if buffer.strip():
        yield bytes(buffer)


async def serve_status(stream: TunnelStream, session: AgentSession, app: web.Application) -> None:
    """Receive one agent's status stream until it ends; the node is online while it reports."""
    history = app[HISTORY_KEY]
    stream.accept()
    reason = "status stream ended"
    log.debug("status stream opened", extra={"kv": {"node": session.name}})
    try:
        async for line in read_lines(stream, limit=MAX_LINE_BYTES):
            report = parse_report(line)
            history.report(
                session.name,
                kind=report.kind,
                metrics=report.metrics,
                removed=report.removed,
                interval=report.interval,
                now=time.time(),
                source=stream,
            )
        stream.end()
    except ReportError as error:
        reason = f"bad status report: {error}"
        log.warning("bad status report", extra={"kv": {"node": session.name, "error": error}})
        stream.reset(ErrorCode.PROTOCOL_ERROR, str(error))
    except StreamError as error:
        closed = isinstance(error, TunnelClosedError) or error.code is ErrorCode.NO_ERROR
        reason = "tunnel session closed" if closed else "status stream reset by the agent"
        log.debug("status stream failed", extra={"kv": {"node": session.name, "error": error}})
    finally:
        history.disconnected(session.name, now=time.time(), reason=reason, source=stream)


async def _maintain(history: StatusHistory) -> None:
    """Expire leases often (offline shows within a second), flush and prune on their own clocks."""
    settings = history.settings
    next_flush = next_prune = 0.0
    while True:
        await asyncio.sleep(min(0.25, settings.flush_interval))
        now = time.time()
        history.expire(now)
        if now >= next_flush:
            history.flush()
            next_flush = now + settings.flush_interval
        if now >= next_prune:
            history.prune(now)
            next_prune = now + settings.prune_interval


def setup(app: web.Application, *, settings: StatusSettings | None = None) -> None:
    """Register the ``status`` agent service, the history and the fleet's gauges (/metrics).

    Needs the tunnel endpoint, the store and the authority set up.
    """
    history = StatusHistory.open(
        app[SETTINGS_KEY].data_dir, settings=settings or StatusSettings(), now=time.time()
    )
    app[HISTORY_KEY] = history
    app[AGENT_SERVICES_KEY][STATUS_TARGET] = serve_status
    # Nodes online and certificate expiry on /metrics (alertable from the server's view).
    authority = app[AUTHORITY_KEY]
    certificates = server_certificates(
        ca=authority.certificate, serving_path=authority.serving_cert_path
    )
    app[REGISTRY_KEY].register(
        FleetCollector(
            store=app[STORE_KEY],
            sessions=app[SESSIONS_KEY],
            server_certificates=lambda: certificates,
        )
    )

    async def background(_app: web.Application) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(_maintain(history), name="status.maintain")
            yield
            task.cancel()
        history.close()

    app.cleanup_ctx.append(background)
