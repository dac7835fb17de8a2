"""Peer links: this replica's tunnel sessions to the other replicas, to forward agent streams.

Rules:

- One link per peer replica, made on first use and kept: a WebSocket to the peer's
  ``/peer/v1/tunnel`` (its advertised peer address, the server's own TLS listener) carrying a
  ``TunnelConnection`` of our tunnel protocol, this side the client. A forwarded request is one
  stream on it, so it has what every tunnel stream has: per-stream credit (backpressure both
  ways), half-close, reset codes, bounded frames, at most ``max_streams`` at once per peer.
  No TCP or TLS handshake per request: the forwarded p50 pays one hop, not a connect.
- The stream's wire target is ``<node>/<target>``; the peer opens ``target`` on its *own* session
  of ``node`` or refuses (REFUSED_STREAM): a forwarded stream is never forwarded again
  (``peer_route``). Its REJECT (target not allowed, dial failed) comes back unchanged, so the
  caller answers as for a local agent. The returned stream's ``target`` is set back to
  ``target`` (errors and the request histogram read as for a local stream).
- mTLS both ways with the server's CA: we present a replica certificate (O
  ``edgefleet:replica``, CN ``replica:<name>``), issued at start by this replica from the shared
  CA key and again once half its lifetime passed; the peer presents its serving certificate,
  checked against our CAs only (no system store). The host name is not checked: every
  replica's serving certificate names the public name, not its pod IP, and only the CA key's
  holders (the replicas) can make a server certificate it verifies.
- A dial is bounded by ``dial_timeout`` and the open timeout the caller gives; one dial per
  peer at a time (others wait for it). A dial that could not connect (refused, reset, no
  answer in time) marks the peer dead in the ``HolderView`` (when one is given: the Lease
  watch's mirror) until its Lease is renewed again or a dial succeeds; while it is marked,
  requests waiting for the dial and later ones are not dialled again (``opener`` answers
  "reconnecting"). A peer that answered but refused the link (401, 429) is not marked. A
  link that ended (peer gone, keepalive timeout) is dropped and dialled again on the next
  use; an open that the link's end failed (before the peer accepted it, so nothing of the
  request was sent) dials once more.
- ``NotHeldError``: the peer does not hold the agent (a stale holder record: it just moved);
  the caller may look for the new holder and try once more.
- ``close()`` ends every link (server shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp
import prometheus_client

from tunnel_aio import StreamError, StreamRejectedError, TunnelClosedError, TunnelConnection
from tunnel_protocol import ErrorCode, Role, TunnelSettings
from tunnel_server.replicas.holder_view import HolderView

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from tunnel_aio import TunnelStream
    from tunnel_server.replicas.mirror import LeaseMirror

log = logging.getLogger("tunnel_server.replicas.peers")

PEER_PATH = "/peer/v1/tunnel"
"""The route on every replica's TLS listener where peers hold their link."""
SEPARATOR = "/"
"""Between node and target in a forwarded stream's wire target: in no node name."""
NOT_HELD = "does not hold node"
"""In the REJECT text of a peer that does not hold the agent (``peer_route``; older replicas
wrote it too): REFUSED_STREAM with it is a stale holder record, not the agent's refusal."""
WAKE_EVERY = 0.25
"""Seconds between looks at this replica's own sessions while a request waits for an agent's
new holder (a Lease change wakes it at once; a session here has no event to wait on)."""


@dataclass(frozen=True, kw_only=True)
class PeerSettings:
    """Peer forwarding between replicas (docs/ha.md, "Forwarding")."""

    max_streams: int = 1024
    """Streams open at once on one peer link, each way (the tunnel's own per-session cap):
    beyond it an open is refused (REFUSED_STREAM) and the caller sees a 502 at once instead of
    memory growing on both replicas."""

    initial_window: int = 256 * 1024
    """Bytes of credit per forwarded stream: as an agent's session, so a forwarded stream is
    no slower than the agent's own window allows."""

    certificate_lifetime: float = 24 * 3600.0
    """Seconds a replica certificate is valid: made again once half of it passed, so a
    replica whose CA key leaks out of the Secret stops being trusted within a day of the CA's
    rotation, and a stolen replica key within a day."""

    open_timeout: float = 10.0
    """Seconds the serving replica waits for its agent to accept a forwarded stream (the
    caller's own open timeout bounds the whole, dial included)."""

    max_links_per_peer: int = 4
    """Links one peer replica may hold to us at once: one is used; more is a reconnect race or
    a misbehaving peer, refused with 429 beyond this."""

    dial_timeout: float = 3.0
    """Seconds a dial (TCP, TLS, WebSocket) to a peer may take before the peer is marked dead:
    a LAN's handshake takes milliseconds; below the callers' open timeout (10 s), so a pod IP
    that vanished (no RST) costs one caller 3 s, not every caller 10 s."""

    reconnect_window: float = 60.0
    """Seconds after a holder replica's death during which its agents' requests are answered
    503 ``agent_reconnecting`` (with ``Retry-After``) rather than ``node_offline``: an agent
    reconnects within its backoff (edge-agent: at most 60 s)."""

    reconnect_wait: float = 2.0
    """Seconds a request for an agent whose holder died (or moved) waits for its new holder
    before it is answered 503: nothing was sent to the agent yet, so any request may wait;
    a Lease change wakes it at once."""

    retry_after: int = 1
    """Seconds in the ``Retry-After`` of an ``agent_reconnecting`` answer: client-go (kubectl)
    retries any 5xx with an integer ``Retry-After``, up to 10 times."""


def tunnel_settings(settings: PeerSettings) -> TunnelSettings:
    """The tunnel settings of a peer link (both ends).

    Every forwarded request ends with a reset of its stream ("exchange over"), which the
    rapid-reset budget counts as unproductive: a peer link carries many callers' requests, so
    its budget is a hundred times an agent's.
    """
    base = TunnelSettings()
    return TunnelSettings(
        max_concurrent_streams=settings.max_streams,
        initial_window=settings.initial_window,
        unproductive_stream_burst=base.unproductive_stream_burst * 100,
        unproductive_stream_rate=base.unproductive_stream_rate * 100,
    )


class IssuedCertificate(Protocol):
    """What we use of ``identity.pki.ReplicaCertificate`` (replicas do not import identity)."""

    @property
    def cert_pem(self) -> bytes: ...
    @property
    def key_pem(self) -> bytes: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...


class PeerUnreachableError(StreamError):
    """The replica holding the agent could not be reached (dial failed, link gone).

    ``dead``: the dial could not connect at all (refused, reset, no answer in time): the
    peer is marked dead. False: it answered but refused the link (401, 429), or ended it.
    """

    def __init__(self, message: str, *, code: ErrorCode, dead: bool = False) -> None:
        super().__init__(message, code=code)
        self.dead = dead


class NotHeldError(StreamRejectedError):
    """The peer does not hold the agent: the holder record was stale (the agent moved)."""


class PeerMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.streams = prometheus_client.Counter(
            "tunnel_server_peer_streams",
            "Agent streams forwarded between replicas, by direction (out: opened on a peer for"
            " a caller here; in: served here for a peer) and result (accepted, rejected: the"
            " agent refused, not_held: this replica does not hold the agent, unreachable: the"
            " peer could not be reached, failed; out only: retried: opened again on the"
            " agent's new holder after a stale record, reconnecting: answered 503 while the"
            " holder is dead and the agent not back)",
            ["direction", "result"],
            registry=registry,
        )
        self.links = prometheus_client.Gauge(
            "tunnel_server_peer_links",
            "Peer links held, by direction (out: dialled by us, in: accepted from a peer)",
            ["direction"],
            registry=registry,
        )
        self.dead = prometheus_client.Gauge(
            "tunnel_server_peers_marked_dead",
            "Peer replicas a dial found unreachable here, their Lease not renewed since",
            registry=registry,
        )


class _Link:
    """One live link to a peer replica."""

    def __init__(self, connection: TunnelConnection, http: aiohttp.ClientSession) -> None:
        self.connection = connection
        self.http = http


class PeerLinks:
    """This replica's links to its peers; ``open(...)`` gives a forwarded stream."""

    def __init__(
        self,
        *,
        name: str,
        issue: Callable[[], IssuedCertificate],
        trusted_pem: Callable[[], bytes],
        settings: PeerSettings,
        registry: prometheus_client.CollectorRegistry,
        mirror: LeaseMirror | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.clock = clock
        """The time at which Leases are judged (``Replicas.judged_now``: frozen at the last
        moment the API was seen, so an API outage does not make every holder look dead)."""
        self.settings = settings
        self.tunnel = tunnel_settings(settings)
        self.metrics = PeerMetrics(registry)
        self._issue = issue
        self._trusted_pem = trusted_pem
        self._context: ssl.SSLContext | None = None
        self._renew_at = 0.0
        self._links: dict[str, _Link] = {}
        self._dialling: dict[str, asyncio.Lock] = {}
        self._group: asyncio.TaskGroup | None = None
        self.inbound: set[TunnelConnection] = set()
        """Links peers hold to us now (``peer_route``)."""
        self.inbound_by: dict[str, int] = {}
        """Links peers hold to us now, by peer replica (``peer_route``)."""
        self.metrics.links.labels("out").set_function(lambda: len(self._links))
        self.metrics.links.labels("in").set_function(lambda: len(self.inbound))
        self.view: HolderView | None = None
        """Holders by the Lease watch, with peers a dial found dead (None: no mirror given)."""
        self._waiting: set[asyncio.Event] = set()
        if mirror is not None:
            self.view = HolderView(mirror, me=name, reconnect_window=settings.reconnect_window)
            mirror.listeners.append(self._wake)
            view = self.view
            self.metrics.dead.set_function(lambda: len(view.marked()))

    # ------------------------------------------------------------------ waiting for holders

    def _wake(self) -> None:
        for event in self._waiting:
            event.set()

    async def changed(self, deadline: float) -> None:
        """Return on the next Lease change, after ``WAKE_EVERY`` s, or at ``deadline`` (loop)."""
        left = min(WAKE_EVERY, deadline - asyncio.get_running_loop().time())
        if left <= 0:
            return
        event = asyncio.Event()
        self._waiting.add(event)
        try:
            async with asyncio.timeout(left):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            self._waiting.discard(event)

    def _mark_dead(self, replica: str, error: str) -> None:
        if self.view is not None and self.view.unreachable(replica, self.clock()):
            log.warning(
                "peer marked dead: its agents are answered 'reconnecting' until its Lease is"
                " renewed or a dial succeeds",
                extra={"kv": {"peer": replica, "error": error}},
            )

    def _mark_alive(self, replica: str) -> None:
        if self.view is not None and self.view.reached(replica):
            log.info("peer reached again", extra={"kv": {"peer": replica}})

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Hold the links' tasks until cancelled; then every link is closed."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                await asyncio.Event().wait()  # the links' tasks run in this group
        finally:
            self._group = None
            self.close()

    def close(self) -> None:
        """End every link, ours and the peers' (shutdown: their handlers return at once)."""
        for link in self._links.values():
            link.connection.close(ErrorCode.NO_ERROR, "replica shutting down")
        for connection in self.inbound:
            connection.close(ErrorCode.NO_ERROR, "replica shutting down")

    # ------------------------------------------------------------------ TLS

    def ssl_context(self) -> ssl.SSLContext:
        """Our client context: a replica certificate made again once half its life passed."""
        now = time.time()
        if self._context is not None and now < self._renew_at:
            return self._context
        issued = self._issue()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # see the module's rules: the CA is what is checked
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self._trusted_pem().decode())
        # ssl loads a key pair from files only: a private folder, gone once loaded.
        with tempfile.TemporaryDirectory(prefix="edgefleet-peer-") as folder:
            cert, key = os.path.join(folder, "peer.crt"), os.path.join(folder, "peer.key")  # noqa: PTH118 - plain paths
            for path, data in ((cert, issued.cert_pem), (key, issued.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
            context.load_cert_chain(cert, key)
        lifetime = (issued.not_after - issued.not_before).total_seconds()
        self._context = context
        self._renew_at = now + lifetime / 2
        return context

    # ------------------------------------------------------------------ streams

    async def open(
        self,
        *,
        replica: str,
        address: str,
        node: str,
        target: str,
        timeout: float,  # noqa: ASYNC109 - the agent's dial time is part of the protocol
    ) -> TunnelStream:
        """A stream to ``target`` on ``node``'s agent, through ``replica`` at ``address``.

        Raises StreamRejectedError (the agent or the peer refused; REFUSED_STREAM when the peer
        does not hold the agent), PeerUnreachableError, or another StreamError.
        """
        wire = f"{node}{SEPARATOR}{target}"
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            stream = await self._open(replica, address, wire, deadline)
        except StreamRejectedError as rejected:
            if rejected.code is ErrorCode.REFUSED_STREAM and NOT_HELD in str(rejected):
                self.metrics.streams.labels("out", "not_held").inc()
                raise NotHeldError(str(rejected), code=rejected.code) from None
            self.metrics.streams.labels("out", "rejected").inc()
            raise
        except PeerUnreachableError:
            self.metrics.streams.labels("out", "unreachable").inc()
            raise
        except StreamError:
            self.metrics.streams.labels("out", "failed").inc()
            raise
        self.metrics.streams.labels("out", "accepted").inc()
        stream.target = target
        return stream

    async def _open(self, replica: str, address: str, wire: str, deadline: float) -> TunnelStream:
        """The stream on the link; a link that ended meanwhile is dialled once more."""
        for attempt in (1, 2):
            link = await self._link(replica, address, deadline)
            left = max(0.1, deadline - asyncio.get_running_loop().time())
            try:
                return await link.connection.open_stream(wire, timeout=left)
            except StreamRejectedError:
                raise
            except StreamError as ended:
                # Not accepted, so nothing of the request was sent: safe to open again.
                if not isinstance(ended, TunnelClosedError) and not link.connection.terminated:
                    raise
                if self._links.get(replica) is link:
                    del self._links[replica]
                if attempt == 2:
                    raise PeerUnreachableError(
                        f"the link to replica {replica} at {address} ended: {ended}",
                        code=ErrorCode.CANCEL,
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _link(self, replica: str, address: str, deadline: float) -> _Link:
        link = self._links.get(replica)
        if link is not None and not link.connection.terminated:
            return link
        lock = self._dialling.setdefault(replica, asyncio.Lock())
        try:
            async with asyncio.timeout_at(deadline), lock:
                link = self._links.get(replica)
                if link is not None and not link.connection.terminated:
                    return link
                if self.view is not None and replica in self.view.marked():
                    # A dial just failed (maybe the one this request waited for): not again
                    # before its Lease is renewed.
                    raise PeerUnreachableError(
                        f"replica {replica} (holding the agent) is unreachable at {address}",
                        code=ErrorCode.CANCEL,
                        dead=True,
                    )
                return await self._dial(replica, address)
        except TimeoutError:
            raise PeerUnreachableError(
                f"replica {replica} (holding the agent) did not answer at {address} in time",
                code=ErrorCode.CANCEL,
            ) from None

    async def _dial(self, replica: str, address: str) -> _Link:
        group = self._group
        if group is None:
            raise PeerUnreachableError("this replica is shutting down", code=ErrorCode.CANCEL)
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_context(), limit=1),
            headers={"User-Agent": f"tunnel-server replica {self.name}"},
        )
        try:
            async with asyncio.timeout(self.settings.dial_timeout):
                ws = await http.ws_connect(
                    f"https://{address}{PEER_PATH}",
                    heartbeat=None,  # the tunnel's own PING keeps it alive
                    compress=0,
                    max_msg_size=self.tunnel.max_frame_payload + 4096,
                    autoping=False,
                )
        except aiohttp.WSServerHandshakeError as refused:
            await http.close()  # it answered: alive, but it would not take our link
            raise PeerUnreachableError(
                f"replica {replica} at {address} refused the peer link: {refused.status}"
                f" {refused.message}",
                code=ErrorCode.CANCEL,
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            await http.close()
            text = str(error) or f"no answer within {self.settings.dial_timeout} s"
            self._mark_dead(replica, text)
            raise PeerUnreachableError(
                f"replica {replica} (holding the agent) is unreachable at {address}: {text}",
                code=ErrorCode.CANCEL,
                dead=True,
            ) from None
        except BaseException:
            await http.close()
            raise
        connection = TunnelConnection(
            ws,
            role=Role.CLIENT,
            name=f"peer:{replica}",
            settings=self.tunnel,
            logger=log,
        )
        link = _Link(connection, http)
        self._links[replica] = link
        group.create_task(self._hold(replica, link), name=f"replicas.peer-link[{replica}]")
        try:
            await connection.wait_ready()
        except TunnelClosedError as error:
            raise PeerUnreachableError(
                f"replica {replica} at {address} ended the link: {error}", code=ErrorCode.CANCEL
            ) from None
        self._mark_alive(replica)
        log.info("peer link up", extra={"kv": {"peer": replica, "address": address}})
        return link

    async def _hold(self, replica: str, link: _Link) -> None:
        try:
            await link.connection.run()
        except Exception:
            log.exception("peer link to %s failed", replica)
        finally:
            if self._links.get(replica) is link:
                del self._links[replica]
            with contextlib.suppress(Exception):
                await link.http.close()
            ended = link.connection.termination
            log.info(
                "peer link down",
                extra={"kv": {"peer": replica, "reason": ended.text if ended else "?"}},
            )
