"""The agent's one outbound tunnel: connect, serve the cloud's streams, reconnect, renew.

Rules:

* One WebSocket over TLS to ``<server>/tunnel``, presenting this node's certificate and
  trusting only the CA pinned at join. Never the system trust store.
* The cloud opens streams by *target name*. We dial only names in our own allow-list
  (``[tunnel.targets]``); anything else is refused with TARGET_NOT_ALLOWED, so the cloud can
  never make this node connect anywhere the operator did not name. Parts of the agent may
  serve a target themselves (``builtin_targets``, e.g. cluster mode's ``kube-apiserver``),
  or every target under a prefix (``builtin_prefixes``, e.g. the gateway's ``service/``,
  whose handler checks the rest of the name against its own allow-list): their handler gets
  the stream and answers it. ``[tunnel.targets]`` names cannot hold ``/``, so a prefix ending
  in ``/`` never shadows a dialled target.
* Reconnects back off exponentially with full jitter (a random delay in [0, ceiling]) so a
  fleet that lost the server does not return in one wave. A session that lived for
  ``healthy_after`` seconds resets the ceiling.
* A server setting up too many sessions at once answers 503 with ``Retry-After``: the next
  try waits that long plus jitter (at least ``backoff_base``, at most ``backoff_cap``), since
  the server spaces the times it hands out at the rate it can take agents in.
* The certificate is renewed once two thirds of its life has passed; the live session keeps
  running on the old one (still valid) and the next connection uses the new one.
* SIGTERM drains: GO_AWAY, wait for open streams up to ``drain_grace``, then close.
* CA rotation: the cloud announces its next CA on a stream to our built-in ``ca-announce``
  target; ``ca_rotation`` checks and stores it, and from then on TLS trusts it beside the
  pinned CA. When the cloud says the next CA became current, the certificate is renewed at
  once (not at two thirds of its life), from the new CA, which then becomes the pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

import aiohttp
import prometheus_client

from edge_agent import __version__, ca_rotation
from edge_agent.identity import Identity, NotJoinedError, spki_hash
from edge_agent.join import JoinError, describe_error, renew, renew_certificate
from tunnel_aio import StreamError, TunnelConnection, TunnelStream, connect_pipe
from tunnel_protocol import ErrorCode, Role, TunnelSettings

if TYPE_CHECKING:
    from pathlib import Path

    from edge_agent.settings import JoinSettings, TunnelClientSettings

log = logging.getLogger("edge_agent.tunnel")

AGENT_VERSION_HEADER = "X-EdgeFleet-Agent-Version"

SessionTask = Callable[[TunnelConnection], Awaitable[None]]
BuiltinTarget = Callable[[TunnelStream], Awaitable[None]]
"""Serves a stream the cloud opened to a target the agent implements itself: it must accept
(or reject) the stream, and returns when the exchange is over."""


class TunnelMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.connected = prometheus_client.Gauge(
            "edge_agent_tunnel_connected", "1 while the tunnel session is up", registry=registry
        )
        self.reconnects = prometheus_client.Counter(
            "edge_agent_tunnel_connects", "Tunnel sessions established", registry=registry
        )
        self.failures = prometheus_client.Counter(
            "edge_agent_tunnel_connect_failures",
            "Failed connection attempts",
            ["reason"],
            registry=registry,
        )
        self.streams = prometheus_client.Counter(
            "edge_agent_tunnel_streams", "Streams the cloud opened", ["result"], registry=registry
        )
        self.tasks = prometheus_client.Gauge(
            "edge_agent_asyncio_tasks",
            "Live asyncio tasks in the agent: a leak shows as growth at a steady load",
            registry=registry,
        )
        self.tasks.set_function(lambda: len(asyncio.all_tasks()))
        self.rtt = prometheus_client.Gauge(
            "edge_agent_tunnel_rtt_seconds", "Last keepalive round-trip time", registry=registry
        )
        self.certificate_expiry = prometheus_client.Gauge(
            "edge_agent_certificate_expiry_timestamp_seconds",
            "When this node's client certificate expires (Unix s); set at each connection"
            " attempt and renewal, absent until the first attempt (not joined yet)",
            registry=registry,
        )


RETRY_AFTER_STATUSES = frozenset({429, 503})
"""Answers whose ``Retry-After`` the agent follows (RFC 9110 section 10.2.3)."""

_DELAY_SECONDS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, *, limit: float, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, at most ``limit``.

    Either delay-seconds (``120``) or an HTTP-date (``Fri, 27 Nov 2026 08:00:00 GMT``; a date in
    the past means 0). None when absent or not understood: the usual backoff applies then.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        return limit if len(text) > 9 else min(float(text), limit)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime form or "-0000": HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return min(max(when.timestamp() - now, 0.0), limit)


def retry_after_delay(
    seconds: float, settings: TunnelClientSettings, rng: random.Random | None = None
) -> float:
    """The wait before the next try when the server asked for ``seconds``.

    Plus jitter up to one second and a fifth of it (Retry-After comes in whole seconds; agents
    told the same second must not return together); at least ``backoff_base``, so a broken
    proxy answering ``0`` cannot make us spin, and at most ``backoff_cap``.
    """
    jitter = (rng or random).uniform(0.0, 1.0 + seconds / 5)
    return min(settings.backoff_cap, max(settings.backoff_base, seconds + jitter))


def spread_attempts(settings: TunnelClientSettings) -> int:
    """The backoff step whose ceiling first reaches ``reconnect_spread``."""
    if settings.reconnect_spread <= settings.backoff_base:
        return 0
    return math.ceil(math.log2(settings.reconnect_spread / settings.backoff_base))


class TunnelClient:
    """Keeps the session up for as long as ``run()`` runs."""

    def __init__(
        self,
        *,
        data_dir: Path,
        settings: TunnelClientSettings,
        join_settings: JoinSettings,
        registry: prometheus_client.CollectorRegistry,
        protocol: TunnelSettings | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._settings = settings
        self._join_settings = join_settings
        self._protocol = protocol or TunnelSettings()
        self.metrics = TunnelMetrics(registry)
        self.connection: TunnelConnection | None = None
        self.connected_since: float | None = None
        self.last_error: str | None = None
        self.attempts = 0
        self._ssl: tuple[tuple[bytes, bytes | None], ssl.SSLContext] | None = None
        self._stopping = asyncio.Event()
        self.up = asyncio.Event()
        """Set while a session is established; parts that need the cloud can wait on it."""
        self.settled = asyncio.Event()
        """Set once the first connection attempt had an outcome: a session, or a failure
        saying the cloud cannot be reached now (not a 503 "busy", which says it can). Parts
        that would rather start online wait on this instead of a fixed time."""
        self.session_tasks: dict[str, SessionTask] = {}
        """Work that needs the tunnel (twin sync, status reports): each runs, under its name,
        for as long as a session lives, and starts again on the next session. A task that
        fails is logged and does not end the session."""
        self.builtin_targets: dict[str, BuiltinTarget] = {}
        """Targets a part of the agent serves itself (name -> handler), before the
        allow-list of dialled targets is consulted; set before ``run()``."""
        self.builtin_prefixes: dict[str, BuiltinTarget] = {}
        """Families of targets a part serves itself (prefix -> handler, e.g. ``service/``):
        a name no exact builtin target has goes to the handler of its longest matching
        prefix, which must refuse what it does not serve; set before ``run()``."""
        self._renew_now = asyncio.Event()
        """Set when the cloud promoted the next CA: renew from it without waiting."""

    # ------------------------------------------------------------------ public

    def status(self) -> dict[str, object]:
        """For the local API's /status."""
        connection = self.connection
        up = connection is not None and not connection.terminated
        return {
            "connected": up,
            "connected_since": self.connected_since if up else None,
            "rtt_seconds": connection.rtt if connection else None,
            "open_streams": connection.open_streams if connection else 0,
            "failed_attempts": self.attempts,
            "last_error": self.last_error,
            "ca": self._ca_status(),
            "targets": sorted(
                {
                    *self._settings.targets,
                    *self.builtin_targets,
                    *(f"{prefix}*" for prefix in self.builtin_prefixes),
                }
            ),
        }

    def _ca_status(self) -> dict[str, str | None]:
        """The pinned CA's hash and the announced next CA's (None outside a rotation)."""
        try:
            identity = Identity.load(self._data_dir)
        except (NotJoinedError, OSError, ValueError, KeyError):
            return {"pinned": None, "next": None}
        next_ca = ca_rotation.load_next(self._data_dir)
        return {
            "pinned": identity.ca_hash,
            "next": None if next_ca is None else spki_hash(next_ca),
        }

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Connect, serve, reconnect, until ``stop()``; then drain the live session."""
        # One HTTP client for every attempt: after a 503 the server keeps the TLS connection
        # open, and the next try (same certificate, same SSL context) reuses it instead of
        # paying for another handshake on both ends. Kept idle a little longer than we may wait.
        connector = aiohttp.TCPConnector(keepalive_timeout=self._settings.backoff_cap + 5.0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._settings.connect_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await self._run(http)

    async def _run(self, http: aiohttp.ClientSession) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            asked: float | None = None
            try:
                await self._session_once(http)
            except NotJoinedError as error:
                self._fail("not_joined", str(error))
            except aiohttp.WSServerHandshakeError as error:
                if error.status in (401, 403):
                    self._fail(
                        "refused",
                        f"the server refused this node's certificate (HTTP {error.status}): it "
                        "was revoked, replaced by a re-join, or expired; join again with a new "
                        "token (`edge-agent join`)",
                    )
                elif (asked := self._retry_after(error)) is None:
                    self._fail("handshake", f"tunnel upgrade failed: HTTP {error.status}")
            except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as error:
                self._fail("connect", describe_error(error))
            if time.monotonic() - started >= self._settings.healthy_after:
                # A session that lived dropped: the server likely restarted and its whole fleet
                # noticed at once. Start the backoff at the spread, not at one second.
                self.attempts = spread_attempts(self._settings)
            if self._stopping.is_set():
                break
            await self._backoff(asked)

    # ------------------------------------------------------------------ internals

    def _fail(self, reason: str, message: str) -> None:
        self.metrics.failures.labels(reason).inc()
        self.last_error = message
        self.settled.set()
        log.warning("tunnel unavailable", extra={"kv": {"reason": reason, "error": message}})

    def _retry_after(self, error: aiohttp.WSServerHandshakeError) -> float | None:
        """The wait the server asked for with a 503 (or 429) and ``Retry-After``, jittered."""
        if error.status not in RETRY_AFTER_STATUSES or error.headers is None:
            return None
        seconds = parse_retry_after(
            error.headers.get("Retry-After"), limit=self._settings.backoff_cap
        )
        if seconds is None:
            return None
        delay = retry_after_delay(seconds, self._settings)
        self.metrics.failures.labels("busy").inc()
        self.last_error = (
            f"server busy (HTTP {error.status}): it asked us to retry in {seconds:g} s"
        )
        log.info(
            "server busy, retrying when it asked",
            extra={
                "kv": {
                    "status": error.status,
                    "retry_after": seconds,
                    "in_seconds": round(delay, 2),
                }
            },
        )
        return delay

    async def _backoff(self, asked: float | None = None) -> None:
        """Wait before the next try: ``asked`` (the server's Retry-After), else the backoff."""
        ceiling = min(self._settings.backoff_cap, self._settings.backoff_base * 2**self.attempts)
        self.attempts = min(self.attempts + 1, 32)
        if asked is None:
            delay = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
            log.info("reconnecting", extra={"kv": {"in_seconds": round(delay, 2)}})
        else:
            delay = asked  # logged with the reason already
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()

    async def _session_once(self, http: aiohttp.ClientSession) -> None:
        identity = Identity.load(self._data_dir)
        ws = await asyncio.wait_for(
            http.ws_connect(
                identity.server + "/tunnel",
                ssl=self._ssl_context(identity),
                headers={AGENT_VERSION_HEADER: __version__},
                max_msg_size=self._protocol.max_frame_payload + 4096,
                autoping=False,
                heartbeat=None,
                compress=0,
            ),
            timeout=self._settings.connect_timeout,
        )
        async with ws:
            await self._serve(ws, identity)

    def _ssl_context(self, identity: Identity) -> ssl.SSLContext:
        """The same context while the certificate is the same: pooled connections key on it."""
        # Keyed on the certificate and the announced next CA: a new one of either needs a new
        # context (trusting the next CA is what lets us reach a server that promoted it). Their
        # bytes, not parsed: a running agent does not load cryptography (issue 18).
        key = (identity.certificate_pem, identity.next_ca_pem())
        # Every attempt loads the identity from disk: the one a renewal or re-join wrote.
        self.metrics.certificate_expiry.set(identity.not_after.timestamp())
        if self._ssl is None or self._ssl[0] != key:
            self._ssl = (key, identity.client_ssl_context())
        return self._ssl[1]

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse, identity: Identity) -> None:
        connection = TunnelConnection(
            ws,
            role=Role.CLIENT,
            name=identity.name,
            on_stream=self._on_stream,
            settings=self._protocol,
            logger=logging.getLogger("edge_agent.tunnel.session"),
        )
        self.connection = connection
        async with asyncio.TaskGroup() as group:
            run = group.create_task(connection.run(), name="tunnel.session")
            await connection.wait_ready()
            self.connected_since = time.time()
            self.up.set()
            self.settled.set()
            self.metrics.connected.set(1)
            self.metrics.reconnects.inc()
            self.last_error = None
            log.info("tunnel up", extra={"kv": {"server": identity.server, "node": identity.name}})
            helpers = [
                group.create_task(self._renewer(identity, connection), name="tunnel.renewer"),
                group.create_task(self._watch_stop(connection), name="tunnel.stop-watch"),
                group.create_task(self._rtt(connection), name="tunnel.rtt"),
            ]
            helpers += [
                group.create_task(self._guard(name, task, connection), name=f"tunnel.{name}")
                for name, task in self.session_tasks.items()
            ]
            await run
            for helper in helpers:
                helper.cancel()
        self.up.clear()
        self.metrics.connected.set(0)
        ended = connection.termination
        log.info("tunnel down", extra={"kv": {"reason": ended.text if ended else "?"}})

    async def _guard(self, name: str, task: SessionTask, connection: TunnelConnection) -> None:
        try:
            await task(connection)
        except (StreamError, ConnectionError, TimeoutError) as error:
            log.info("session task %s ended with the session: %s", name, error)
        except Exception:  # one part's bug must not drop the tunnel for all (logged)
            log.exception("session task %s failed", name)

    async def _watch_stop(self, connection: TunnelConnection) -> None:
        await self._stopping.wait()
        await connection.drain(self._settings.drain_grace)

    async def _rtt(self, connection: TunnelConnection) -> None:
        while True:
            await asyncio.sleep(5.0)
            if connection.rtt is not None:
                self.metrics.rtt.set(connection.rtt)

    async def _renewer(self, identity: Identity, connection: TunnelConnection) -> None:
        fraction = self._join_settings.renew_fraction
        while True:
            if identity.needs_renewal(fraction=fraction) or self._renew_now.is_set():
                self._renew_now.clear()
                try:
                    identity = await renew_over_tunnel(identity, connection)
                except (JoinError, StreamError, ValueError, OSError) as error:
                    # OSError: the pinned CA could not be read. Any of these must leave the
                    # session running; HTTPS is the fallback, a later check the retry.
                    log.warning("renewal over the tunnel failed, trying HTTPS: %s", error)
                    try:
                        identity = await renew(identity, settings=self._join_settings)
                    except (JoinError, aiohttp.ClientError, OSError, TimeoutError) as failed:
                        log.warning("certificate renewal failed; will retry: %s", failed)
                        identity = Identity.load(self._data_dir)
                log.info("certificate valid until %s", identity.not_after.isoformat())
                self.metrics.certificate_expiry.set(identity.not_after.timestamp())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.renew_check_interval):
                    await self._renew_now.wait()

    async def _on_ca_announcement(self, stream: TunnelStream) -> None:
        """The cloud's CA state (``ca_rotation``): check, store, answer; never ends the session."""
        stream.accept()
        raw = bytearray()
        try:
            async with asyncio.timeout(ca_rotation.READ_TIMEOUT):
                while chunk := await stream.read():
                    raw += chunk
                    if len(raw) > ca_rotation.MAX_ANNOUNCEMENT_BYTES:
                        limit = ca_rotation.MAX_ANNOUNCEMENT_BYTES
                        log.warning("CA announcement refused: over %s bytes", limit)
                        stream.reset(ErrorCode.CANCEL, "CA announcement too large")
                        return
        except TimeoutError:
            wait = ca_rotation.READ_TIMEOUT
            log.warning("CA announcement refused: not ended within %s s", wait)
            stream.reset(ErrorCode.CANCEL, "CA announcement not ended in time")
            return
        try:
            pinned = Identity.load(self._data_dir).pinned_ca()
            outcome, ca_hash = ca_rotation.apply_announcement(
                bytes(raw), pinned=pinned, data_dir=self._data_dir
            )
        except ca_rotation.AnnouncementError as error:
            log.warning("CA announcement refused: %s", error)
            answer = {"status": "refused", "message": str(error)}
        else:
            if outcome is ca_rotation.Outcome.STORED:
                log.warning("CA rotation: stored the next CA %s announced by the server", ca_hash)
            elif outcome is ca_rotation.Outcome.PROMOTED:
                log.warning("CA rotation: the server promoted %s; renewing from it", ca_hash)
                self._renew_now.set()
            status = "unchanged" if outcome is ca_rotation.Outcome.UNCHANGED else "stored"
            answer = {"status": status, "next": ca_hash or ""}
        await stream.write(json.dumps(answer).encode())
        stream.end()

    def _prefix_handler(self, target: str) -> BuiltinTarget | None:
        """The handler of the longest of ``builtin_prefixes`` that ``target`` starts with."""
        matching = [prefix for prefix in self.builtin_prefixes if target.startswith(prefix)]
        return self.builtin_prefixes[max(matching, key=len)] if matching else None

    async def _on_stream(self, stream: TunnelStream) -> None:
        """The cloud asks for a stream to one of our targets."""
        if stream.target == ca_rotation.TARGET:  # ours, before any part's or the allow-list
            self.metrics.streams.labels("builtin").inc()
            await self._on_ca_announcement(stream)
            return
        builtin = self.builtin_targets.get(stream.target) or self._prefix_handler(stream.target)
        if builtin is not None:
            self.metrics.streams.labels("builtin").inc()
            await builtin(stream)
            return
        address = self._settings.targets.get(stream.target)
        if address is None:
            self.metrics.streams.labels("not_allowed").inc()
            stream.reject(
                ErrorCode.TARGET_NOT_ALLOWED,
                f"target {stream.target!r} is not in this node's allow-list ([tunnel.targets])",
            )
            return
        host, port = address
        try:
            async with asyncio.timeout(self._settings.dial_timeout):
                pipe = await connect_pipe(host, port)
        except (OSError, TimeoutError) as error:
            self.metrics.streams.labels("unreachable").inc()
            reason = str(error) or type(error).__name__
            stream.reject(ErrorCode.TARGET_UNREACHABLE, reason)
            return
        self.metrics.streams.labels("accepted").inc()
        try:
            stream.accept()
        except BaseException:
            pipe.close()  # the stream died while we dialled: drop the connection with it
            raise
        await pipe.run(stream)


RENEW_TARGET = "renew"
MAX_RENEW_ANSWER = 64 * 1024
"""Bytes: a certificate and the CA fit in 8 KB; a larger answer is refused."""


async def renew_over_tunnel(identity: Identity, connection: TunnelConnection) -> Identity:
    """Renew over the live session: the CSR on a stream to the cloud's ``renew`` service."""

    async def send_csr(csr: bytes) -> dict[str, Any]:
        stream = await connection.open_stream(RENEW_TARGET)
        await stream.write(json.dumps({"csr": csr.decode()}).encode())
        stream.end()
        raw = bytearray()
        while chunk := await stream.read():
            raw += chunk
            if len(raw) > MAX_RENEW_ANSWER:
                stream.reset(ErrorCode.CANCEL, "answer too large")
                raise JoinError(f"renew answer larger than {MAX_RENEW_ANSWER} bytes")
        answer = json.loads(raw)
        if not isinstance(answer, dict):
            raise JoinError(f"renew answer is not a JSON object: {bytes(raw[:80])!r}")
        if answer.get("status") != "issued":
            raise JoinError(f"renewal refused: {answer.get('message', answer)}")
        return answer

    return await renew_certificate(identity, send_csr, via="over the tunnel")
