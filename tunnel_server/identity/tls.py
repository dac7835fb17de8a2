"""TLS for the server, and who is on the other end of a request.

One listener serves both agents and joiners: client certificates are OPTIONAL at the TLS layer
(``/api/v1/join`` and ``/api/v1/ca`` have none yet) but, when presented, verified against our CAs
only (the current one; during a rotation also the next and the previous one). Endpoints that
need an identity (``/tunnel``, ``/api/v1/renew``) call ``peer_identity``, which reads the
certificate the TLS layer verified, never a header or a claimed name, and checks its serial
against the store so a revoked or replaced node gets ``None``.

``HandshakeGate`` is that listener: it caps the TLS handshakes in progress, so a reconnect storm
waits in the kernel's listen queue instead of starting thousands of handshakes that all finish
too late (see its docstring).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import prometheus_client
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunnel_server.app_keys import AUTHORITY_KEY, STORE_KEY
from tunnel_server.identity.peer import PeerIdentity
from tunnel_server.identity.pki import ORGANIZATIONS, CertificateAuthority, serial_hex
from tunnel_server.store import NodeKind, Store

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography.x509 import Certificate

log = logging.getLogger("tunnel_server.tls")

_KINDS_BY_ORG: dict[str, NodeKind] = {org: kind for kind, org in ORGANIZATIONS.items()}


def server_ssl_context(authority: CertificateAuthority) -> ssl.SSLContext:
    """TLS >= 1.2 with our serving certificate; client certificates optional, checked by our CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_SINGLE_ECDH_USE
    context.load_cert_chain(authority.serving_cert_path, authority.serving_key_path)
    # Our CAs only, no system store: the current one, and during a rotation the next and the
    # previous one (docs/security.md "Rotating the CA").
    context.load_verify_locations(cadata=authority.trusted_pem().decode())
    context.verify_mode = ssl.CERT_OPTIONAL
    # No TLS 1.3 session tickets: nobody could use them (their keys die with the process, and
    # asyncio clients such as the agent cannot offer a saved session), yet OpenSSL makes two
    # after every handshake, each holding the client's certificate: ~0.7 of ~2.3 ms of server
    # CPU and 1.5 KB per handshake with a client certificate (docs/benchmarks.md, issue 18).
    context.num_tickets = 0
    return context


def peer_certificate(request: web.BaseRequest) -> Certificate | None:
    """The client certificate the TLS handshake verified, or None (plain HTTP, none sent)."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return None if der is None else x509.load_der_x509_certificate(der)


def peer_identity(request: web.Request) -> PeerIdentity | None:
    """Verified ``PeerIdentity`` of the request's client certificate, or None.

    None when it has none, the certificate is not ours, or its node is unknown, not approved,
    or the serial is not one the store issued to that node.
    """
    certificate = peer_certificate(request)
    if certificate is None:
        return None
    return identity_from_certificate(
        certificate, authority=request.app[AUTHORITY_KEY], store=request.app[STORE_KEY]
    )


def identity_from_certificate(
    certificate: Certificate,
    *,
    authority: CertificateAuthority,
    store: Store,
    now: float | None = None,
) -> PeerIdentity | None:
    try:
        # Defence in depth: the TLS layer checked the chain; check the issuer again here,
        # against the CAs trusted now (a retired one stops here even before a restart).
        if authority.issuer_of(certificate) is None:
            return None
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku or len(names) != 1 or len(orgs) != 1:
        return None
    kind = _KINDS_BY_ORG.get(str(orgs[0].value))
    if kind is None:
        return None
    identity = PeerIdentity(
        name=str(names[0].value),
        kind=kind,
        serial=serial_hex(certificate),
        not_after=certificate.not_valid_after_utc,
    )
    return identity if is_current(store, identity, now=now) else None


def is_current(store: Store, identity: PeerIdentity, *, now: float | None = None) -> bool:
    """True while the identity may still be used: call again when ``store.revision()`` moves.

    False once the certificate expired, the node was revoked or deleted, or the node re-joined
    with a new key (its old certificates are forgotten then).
    """
    now = time.time() if now is None else now
    if identity.not_after <= datetime.fromtimestamp(now, UTC):
        return False
    record = store.get_certificate(identity.serial)
    if record is None or record.name != identity.name:
        return False
    node = store.get_node(identity.name)
    current = node is not None and node.state == "approved" and node.kind == identity.kind
    if not current:
        log.info(
            "refused certificate",
            extra={"kv": {"name": identity.name, "serial": identity.serial}},
        )
    return current


# ---------------------------------------------------------------- the listener

TCP_CLOSE_WAIT = 8
"""``tcpi_state`` of a connection whose peer has closed its end (linux/tcp_states.h)."""


def peer_gone(sock: socket.socket) -> bool:
    """True when the client already closed its end: it gave up while its connection waited.

    Read from the kernel (``TCP_INFO``, Linux), so it costs no I/O; False where unknown.
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return False
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, option, 1)
    except OSError:
        return True
    return state[0] == TCP_CLOSE_WAIT


def listening_sockets(host: str, port: int, *, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host`` (every address it resolves to)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)  # noqa: FBT003 - the stdlib signature
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class GateMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry, gate: HandshakeGate) -> None:
        self.in_progress = prometheus_client.Gauge(
            "tunnel_server_tls_handshakes_in_progress",
            "TLS handshakes running now (at most max_tls_handshakes)",
            registry=registry,
        )
        self.in_progress.set_function(lambda: gate.in_progress)
        self.waiting = prometheus_client.Gauge(
            "tunnel_server_tls_waiting",
            "Connections whose ClientHello arrived, waiting for a handshake slot",
            registry=registry,
        )
        self.waiting.set_function(lambda: gate.waiting)
        self.handshakes = prometheus_client.Counter(
            "tunnel_server_tls_handshakes",
            "TLS handshakes by result (ok, failed)",
            ["result"],
            registry=registry,
        )
        self.dropped = prometheus_client.Counter(
            "tunnel_server_tls_dropped",
            "Connections closed before any TLS work: peer_gone (the client gave up while it "
            "waited), no_hello (nothing sent within the handshake timeout), stale",
            ["reason"],
            registry=registry,
        )


class HandshakeGate:
    """The HTTPS listener: accepts connections, and runs at most ``limit`` TLS handshakes at once.

    Why: a handshake with a client certificate is the most expensive step of an agent's
    connect (~2.5 ms of CPU here). asyncio starts one for every accepted connection at once,
    so after a server restart thousands interleave, each finishes after its client's connect
    timeout, and the work is lost while the clients retry. Here:

    * a connection takes a handshake slot only once its first bytes (the ClientHello) arrived,
      so idle connections hold no slot; one that sends nothing within ``timeout`` is closed;
    * while every slot is busy, ready connections wait in arrival order and accepting pauses:
      further clients wait in the kernel's listen queue, and when that is full their SYNs are
      dropped and retried by the client's kernel (back-pressure that costs this process nothing);
    * a waiting connection whose client already gave up (``CLOSE_WAIT``), or that waited longer
      than ``timeout``, is closed without a handshake.

    Each completed handshake hands its TLS transport to ``protocol_factory()`` (aiohttp's
    ``web.Server``), exactly as ``loop.create_server(ssl=...)`` would.
    """

    def __init__(
        self,
        *,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext,
        limit: int,
        timeout: float,
        registry: prometheus_client.CollectorRegistry,
    ) -> None:
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._limit = max(1, limit)
        self._timeout = timeout
        self._listeners: list[socket.socket] = []
        self._idle: dict[socket.socket, asyncio.TimerHandle] = {}
        self._ready: collections.deque[tuple[socket.socket, float]] = collections.deque()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self.in_progress = 0
        self.metrics = GateMetrics(registry, self)

    @property
    def waiting(self) -> int:
        return len(self._ready)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self._listeners]

    def bind(self, host: str, port: int, *, backlog: int) -> None:
        """Listen on ``host:port``; raises ``OSError`` like ``create_server`` (port in use)."""
        self._listeners = listening_sockets(host, port, backlog=backlog)

    async def serve(self) -> None:
        """Accept and hand over connections until ``close()``."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                accepters = [
                    group.create_task(self._accept(sock), name="tls.accept")
                    for sock in self._listeners
                ]
                await self._closing.wait()
                for task in [*accepters, *self._handshakes]:
                    task.cancel()
        finally:
            self._group = None
            self._drop_waiting()
            for sock in self._listeners:
                sock.close()

    def close(self) -> None:
        """Stop accepting; waiting connections are closed, handshakes in progress cancelled."""
        self._closing.set()

    # ------------------------------------------------------------------ internals

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._room.wait()
            try:
                sock, _address = await loop.sock_accept(listener)
            except OSError as error:  # out of file descriptors: wait, do not spin
                log.warning("accept failed", extra={"kv": {"error": str(error)}})
                await asyncio.sleep(0.5)
                continue
            self._idle[sock] = loop.call_later(self._timeout, self._no_hello, sock)
            loop.add_reader(sock, self._readable, sock, time.monotonic())

    def _readable(self, sock: socket.socket, arrived: float) -> None:
        """The first bytes (or the end) of a new connection arrived."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:  # a spurious wake-up: keep waiting
            loop.add_reader(sock, self._readable, sock, arrived)
            return
        except OSError:
            first = b""
        self._idle.pop(sock).cancel()
        if not first or peer_gone(sock):
            self._drop(sock, "peer_gone")
        elif self.in_progress < self._limit and not self._ready:
            self._start(sock)
        else:
            self._ready.append((sock, arrived))
            self._room.clear()

    def _no_hello(self, sock: socket.socket) -> None:
        asyncio.get_running_loop().remove_reader(sock)
        del self._idle[sock]
        self._drop(sock, "no_hello")

    def _drop(self, sock: socket.socket, reason: str) -> None:
        self.metrics.dropped.labels(reason).inc()
        sock.close()

    def _start(self, sock: socket.socket) -> None:
        if self._group is None or self._closing.is_set():
            sock.close()
            return
        self.in_progress += 1
        if self.in_progress >= self._limit:
            self._room.clear()
        task = self._group.create_task(self._handshake(sock), name="tls.handshake")
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._factory, sock, ssl=self._ssl, ssl_handshake_timeout=self._timeout
            )
        except OSError as error:  # ssl.SSLError, a reset, the handshake timeout
            self.metrics.handshakes.labels("failed").inc()
            log.debug("TLS handshake failed", extra={"kv": {"error": str(error)}})
        else:
            self.metrics.handshakes.labels("ok").inc()
        finally:
            self.in_progress -= 1
            self._next()

    def _next(self) -> None:
        """A slot came free: the oldest ready connection whose client still waits gets it."""
        now = time.monotonic()
        while self._ready and self.in_progress < self._limit and not self._closing.is_set():
            sock, arrived = self._ready.popleft()
            if now - arrived > self._timeout:
                self._drop(sock, "stale")
            elif peer_gone(sock):
                self._drop(sock, "peer_gone")
            else:
                self._start(sock)
        if self.in_progress < self._limit and not self._ready:
            self._room.set()

    def _drop_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        for sock, timer in self._idle.items():
            timer.cancel()
            loop.remove_reader(sock)
            sock.close()
        self._idle.clear()
        while self._ready:
            self._ready.popleft()[0].close()
