"""``GET /tunnel``: where agents hold their one WebSocket session, authenticated by mTLS.

The session's identity is the verified client certificate's subject. Every time the store
changes (a revocation by the CLI, a re-join) each live session's certificate is checked
again, and a session that is no longer current is closed at once.

Admission: at most ``max_session_setups`` sessions are set up at once (request received,
HELLOs not yet exchanged). Beyond that the upgrade is answered 503 with a ``Retry-After``
before any certificate check, store access or WebSocket work, and each refused agent is given
its own time to come back, spaced at the rate the server has lately managed (``Admission``).

CA rotation: while one is in progress, each session tells its agent the CA state at start and
on every change the CLI makes (``identity.rotation``), on a stream to the agent's built-in
``ca-announce`` target; a refusal is logged and counted, never a reason to end the session.
The announcer task of a session exists only while it has something to announce: the CA
watcher starts one per session when the state moves, so thousands of idle sessions do not
each hold a task waiting for a rotation that rarely comes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from tunnel_aio import (
    StreamError,
    StreamRejectedError,
    TunnelClosedError,
    TunnelConnection,
    TunnelStream,
)
from tunnel_protocol import ErrorCode, Role, TunnelSettings
from tunnel_server.app_keys import (
    ADMISSION_KEY,
    AUTHORITY_KEY,
    METRICS_KEY,
    NODE_EVENTS_KEY,
    REGISTRY_KEY,
    SESSIONS_KEY,
    SETTINGS_KEY,
    STORE_KEY,
    TUNNEL_SETTINGS_KEY,
    VERIFIED_ADMIN_KEY,
)
from tunnel_server.identity import tls
from tunnel_server.identity.rotation import (
    ANNOUNCE_TARGET,
    CA_WATCH_KEY,
    MAX_ANSWER_BYTES,
    CaWatch,
)
from tunnel_server.tunnel import agent_services
from tunnel_server.tunnel.admission import Admission
from tunnel_server.tunnel.sessions import (
    AgentSession,
    SeenWriter,
    SessionMetrics,
    SessionRegistry,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tunnel_server.store import Store

log = logging.getLogger("tunnel_server.tunnel")

AGENT_VERSION_HEADER = "X-EdgeFleet-Agent-Version"
"""Informational only (shown in `nodes`); identity never comes from a header."""

SEEN_KEY: web.AppKey[SeenWriter] = web.AppKey("tunnel_seen", SeenWriter)


def _refuse(request: web.Request, status: int, reason: str, message: str) -> web.Response:
    request.app[METRICS_KEY].refused.labels(reason).inc()
    log.info("tunnel refused", extra={"kv": {"reason": reason, "remote": request.remote}})
    return web.json_response({"error": reason, "message": message}, status=status)


def _busy(request: web.Request, admission: Admission) -> web.Response:
    """503 at once, without touching the certificate, the store or the WebSocket."""
    request.app[METRICS_KEY].refused.labels("busy").inc()
    if admission.refusing == 1:
        log.warning(
            "too many sessions being set up, answering 503 with Retry-After",
            extra={"kv": {"in_progress": admission.in_progress, "limit": admission.limit}},
        )
    seconds = admission.retry_after()
    return web.json_response(
        {"error": "busy", "message": f"too many agents are connecting; retry in {seconds} s"},
        status=503,
        headers={"Retry-After": str(seconds)},
    )


async def tunnel(request: web.Request) -> web.StreamResponse:
    admission = request.app[ADMISSION_KEY]
    if not admission.try_enter():
        return _busy(request, admission)
    if admission.refusing:
        log.info("admitting sessions again", extra={"kv": {"refused": admission.refusing}})
        admission.refusing = 0
    setup = _SetUp(admission)
    try:
        return await _session(request, setup)
    finally:
        setup.done(completed=False)  # refused, or ended before its HELLO: no-op otherwise


class _SetUp:
    """One admission slot, given back once: when the HELLOs are exchanged or the attempt ends."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def done(self, *, completed: bool) -> None:
        if self._admission is not None:
            self._admission.leave(completed=completed)
            self._admission = None

    async def watch(self, connection: TunnelConnection) -> None:
        try:
            await connection.wait_ready()
        except TunnelClosedError:
            self.done(completed=False)
        else:
            self.done(completed=True)


async def _session(request: web.Request, setup: _SetUp) -> web.StreamResponse:
    identity = tls.peer_identity(request)
    if identity is None:
        return _refuse(
            request,
            401,
            "unauthenticated",
            "the tunnel needs a current client certificate from this server's CA: run "
            "`edge-agent join` (a revoked or replaced node must join again)",
        )
    if request.transport is None or request.transport.is_closing():
        # The agent gave up while its upgrade waited (a reconnect storm): do no more work.
        return web.Response(status=499)
    settings = request.app[TUNNEL_SETTINGS_KEY]
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_frame_payload + 4096, heartbeat=None, compress=False
    )
    await ws.prepare(request)
    holder: list[AgentSession] = []

    async def on_stream(stream: TunnelStream) -> None:
        await agent_services.serve(stream, session=holder[0], app=request.app)

    connection = TunnelConnection(
        ws,
        role=Role.SERVER,
        name=identity.name,
        settings=settings,
        on_stream=on_stream,
        logger=logging.getLogger("tunnel_server.tunnel.session"),
    )
    version = request.headers.get(AGENT_VERSION_HEADER, "")[:64] or None
    session = AgentSession(
        identity=identity,
        connection=connection,
        remote=request.remote or "?",
        agent_version=version,
    )
    holder.append(session)
    registry, metrics = request.app[SESSIONS_KEY], request.app[METRICS_KEY]
    events = request.app.get(NODE_EVENTS_KEY)
    if events is not None and registry.get(identity.name) is None:  # not a replacing session
        events.note(
            identity.name, "online", f"tunnel session from {session.remote}", now=time.time()
        )
    if registry.add(session):
        metrics.reconnects.inc()
    metrics.connects.inc()
    seen = request.app[SEEN_KEY]
    seen.connected(identity.name, agent_version=version, now=time.time())
    log.info("agent connected", extra={"kv": {"node": identity.name, "remote": session.remote}})
    try:
        async with asyncio.TaskGroup() as group:
            session.tasks = group
            group.create_task(setup.watch(connection), name=f"tunnel[{identity.name}].setup")
            _start_announcer(session, request.app[CA_WATCH_KEY])
            await connection.run()
            session.tasks = None
            if session.announcer is not None:
                session.announcer.cancel()
    finally:
        session.tasks = None
        registry.remove(session)
        seen.seen(identity.name)
        metrics.bytes.labels("in").inc(connection.bytes_received)
        metrics.bytes.labels("out").inc(connection.bytes_sent)
        ended = connection.termination
        if connection.session.error is not None:
            metrics.frame_errors.inc()
        log.info(
            "agent disconnected",
            extra={"kv": {"node": identity.name, "reason": ended.text if ended else "?"}},
        )
        if events is not None and registry.get(identity.name) is None:  # no newer session
            events.note(identity.name, "offline", ended.text if ended else "?", now=time.time())
    return ws


ANNOUNCE_TIMEOUT = 30.0
"""Seconds an agent has to store an announcement and answer (a write and an fsync or two)."""


def _start_announcer(session: AgentSession, watch: CaWatch) -> None:
    """Tell this session's agent the CA state if a rotation is on and no announcer runs."""
    if not watch.authority.rotating() or session.tasks is None or session.connection.terminated:
        return
    if session.announcer is not None and not session.announcer.done():
        return  # it checks the version again after each announcement
    session.announcer = session.tasks.create_task(
        _announce_ca(session.connection, watch, session.name),
        name=f"tunnel[{session.name}].ca-announce",
    )


async def _announce_ca(connection: TunnelConnection, watch: CaWatch, node: str) -> None:
    """Announce the CA state until the agent has the latest one (or the rotation is over)."""
    try:
        await connection.wait_ready()
    except TunnelClosedError:
        return
    announced: int | None = None
    while watch.authority.rotating() and watch.version != announced:
        announced = watch.version
        result = await _announce_once(connection, watch.payload(), node)
        watch.announcements.labels(result).inc()


async def _announce_once(connection: TunnelConnection, payload: bytes, node: str) -> str:
    """Send one announcement; the agent's answer word (``stored``...) or why there is none."""
    try:
        async with asyncio.timeout(ANNOUNCE_TIMEOUT):
            stream = await connection.open_stream(ANNOUNCE_TARGET)
            await stream.write(payload)
            stream.end()
            raw = bytearray()
            while (chunk := await stream.read()) and len(raw) <= MAX_ANSWER_BYTES:
                raw += chunk
    except StreamRejectedError as error:
        log.info(
            "agent takes no CA announcements", extra={"kv": {"node": node, "error": str(error)}}
        )
        return "unsupported"
    except (StreamError, TimeoutError) as error:
        log.info(
            "CA announcement failed", extra={"kv": {"node": node, "error": str(error) or "timeout"}}
        )
        return "failed"
    if len(raw) > MAX_ANSWER_BYTES:
        stream.reset()
    try:
        answer = json.loads(bytes(raw[:MAX_ANSWER_BYTES]))
        status = str(answer["status"]) if isinstance(answer, dict) else "?"
    except (ValueError, KeyError):
        status = "?"
    if status not in ("stored", "unchanged"):
        log.warning(
            "agent refused the CA announcement",
            extra={"kv": {"node": node, "answer": bytes(raw[:200]).decode(errors="replace")}},
        )
        return "refused"
    log.info("agent has the CA state", extra={"kv": {"node": node, "result": status}})
    return status


async def _watch_ca(app: web.Application) -> None:
    """Notice the CLI's ``ca rotate|promote|retire`` (files in the data dir); tell every agent."""
    watch, interval = app[CA_WATCH_KEY], app[SETTINGS_KEY].store_poll_interval
    while True:
        await asyncio.sleep(interval)
        version = watch.version
        await watch.poll()
        if watch.version != version:
            for session in app[SESSIONS_KEY].all():
                _start_announcer(session, watch)


async def _watch_revocations(app: web.Application) -> None:
    """Cut off sessions whose certificate stopped being current: revoked, replaced, expired.

    The full check (a store lookup per session) runs when the store's revision moves; the
    expiry check is a comparison per session and runs every poll.
    """
    store: Store = app[STORE_KEY]
    interval = app[SETTINGS_KEY].store_poll_interval
    seen = store.revision()
    while True:
        await asyncio.sleep(interval)
        current = store.revision()
        changed, seen = current != seen, current
        if changed and VERIFIED_ADMIN_KEY in app:
            app[VERIFIED_ADMIN_KEY].clear()
        now = datetime.now(UTC)
        for session in app[SESSIONS_KEY].all():
            expired = session.identity.not_after <= now
            if expired or (changed and not tls.is_current(store, session.identity)):
                reason = "expired" if expired else "revoked or replaced"
                log.warning("cutting off node", extra={"kv": {"node": session.name, "why": reason}})
                session.connection.close(
                    ErrorCode.CANCEL, f"this node's certificate is no longer valid ({reason})"
                )


LAST_SEEN_INTERVAL = 30.0
"""Seconds between ``last_seen`` refreshes of connected nodes: fine for a fleet view, and
cheap for SQLite even with thousands of sessions."""

SEEN_FLUSH_INTERVAL = 1.0
"""Seconds between writes of the connects' and disconnects' ``last_seen`` (``SeenWriter``)."""


async def _last_seen(app: web.Application) -> None:
    """Connected nodes count as seen: refresh ``last_seen`` while their session lives.

    Every ``SEEN_FLUSH_INTERVAL`` the connects and disconnects since the last write, every
    ``LAST_SEEN_INTERVAL`` every connected node too; one transaction each time.
    """
    seen = app[SEEN_KEY]
    every = round(LAST_SEEN_INTERVAL / SEEN_FLUSH_INTERVAL)
    ticks = 0
    try:
        while True:
            await asyncio.sleep(SEEN_FLUSH_INTERVAL)
            ticks += 1
            connected = [s.name for s in app[SESSIONS_KEY].all()] if ticks % every == 0 else []
            seen.flush(now=time.time(), also=connected)
    finally:  # the server stops: what is queued is written, if the store still can
        try:
            seen.flush(now=time.time())
        except Exception as error:  # noqa: BLE001 - shutting down: say so, do not mask the stop
            log.warning("last_seen not written at stop", extra={"kv": {"error": str(error)}})


async def _background(app: web.Application) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(_watch_revocations(app), name="tunnel.revocation-watcher"),
            group.create_task(_last_seen(app), name="tunnel.last-seen"),
            group.create_task(_watch_ca(app), name="tunnel.ca-watcher"),
        ]
        yield
        for session in app[SESSIONS_KEY].all():
            session.connection.close(ErrorCode.NO_ERROR, "server shutting down")
        for task in tasks:
            task.cancel()


async def _go_away(app: web.Application) -> None:
    """On shutdown, end every session first.

    Their handlers then return, so aiohttp need not wait its whole grace period for them.
    """
    for session in app[SESSIONS_KEY].all():
        session.connection.close(ErrorCode.NO_ERROR, "server shutting down")


def setup(app: web.Application, *, tunnel_settings: TunnelSettings | None = None) -> None:
    """Mount ``/tunnel``; needs the store, authority, settings and registry keys set."""
    registry = SessionRegistry()
    app[SESSIONS_KEY] = registry
    app[SEEN_KEY] = SeenWriter(app[STORE_KEY])
    app[TUNNEL_SETTINGS_KEY] = tunnel_settings or TunnelSettings()
    app[METRICS_KEY] = SessionMetrics(app[REGISTRY_KEY], registry)
    server_settings = app[SETTINGS_KEY]
    app[ADMISSION_KEY] = Admission(
        limit=server_settings.max_session_setups,
        retry_after_max=server_settings.retry_after_max,
        registry=app[REGISTRY_KEY],
    )
    app[CA_WATCH_KEY] = CaWatch(app[AUTHORITY_KEY], app[REGISTRY_KEY])
    agent_services.setup(app)
    app.router.add_get("/tunnel", tunnel)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_go_away)
