"""kube-apiserver's egress selector: ``CONNECT <node address>:<kubelet port>`` to an edge kubelet.

kube-apiserver, given an ``EgressSelectorConfiguration`` whose ``cluster`` selection uses
``HTTPConnect`` (docs/egress.md), dials this server for every connection to a kubelet (logs,
exec, attach, port-forward, ``nodes/proxy``): over a Unix socket (``--egress-uds``, mode 0600)
or over TCP with mutual TLS (``--egress-listen``, client certificate from ``--egress-client-ca``).

One connection, one CONNECT: we read the head (``connect_head``, bounded in size and time), map
the host to an edge node — a node-kind session of that name, or the one cloud Node listing that
host in ``status.addresses`` (``cloud_nodes``) — check the port is that node's kubelet port,
open a tunnel stream to the node's ``kubelet`` target (the agent dials it from its own
allow-list), answer ``200 Connection established`` and relay bytes both ways. kube-apiserver's
TLS to the kubelet passes end to end: we never see the kubelet's certificate nor the
apiserver's client credentials. With replicas (docs/ha.md), a node whose session another
replica holds is reached through that replica's peer link (``replicas.opener``).

Every refusal answers a status whose reason phrase says why (kube-apiserver quotes it, so
kubectl shows it) and closes that one connection; nothing else is disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import prometheus_client

from tunnel_aio import StreamError, StreamRejectedError, TunnelClosedError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.app_keys import (
    AUTHORITY_KEY,
    NODES_SYNCED_KEY,
    REGISTRY_KEY,
    SESSIONS_KEY,
    STORE_KEY,
    UPSTREAM_KEY,
)
from tunnel_server.fleet import nodes_watch
from tunnel_server.fleet.connect_head import (
    ConnectTarget,
    HeadError,
    parse_connect_head,
    split_head,
)
from tunnel_server.replicas import opener

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from aiohttp import web

    from tunnel_server.fleet.cloud_nodes import CloudNodes
    from tunnel_server.settings import EgressSettings
    from tunnel_server.store import Store
    from tunnel_server.tunnel.sessions import AgentSession, SessionRegistry

log = logging.getLogger("tunnel_server.fleet.egress")

CHUNK = 64 * 1024
"""Bytes per socket read: one DATA frame at the default frame size."""
MAX_SOCKET_PATH = 107
"""Bytes of a Unix socket path on Linux (``sun_path`` holds 108 with the NUL)."""
MAX_REASON = 300
"""Characters of a refusal's reason phrase (kube-apiserver reads at most 1 MB of head)."""


Forward: TypeAlias = "Callable[[str, str, float], Awaitable[TunnelStream]]"
"""``(node, target, timeout)`` -> a stream opened through the replica holding the node."""


class Refusal(Exception):  # noqa: N818 - an answer, not a failure of ours
    """A CONNECT we do not serve: the status, a metric label and the reason phrase."""

    def __init__(self, status: int, result: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.result = result
        self.reason = reason


class _IdleError(Exception):
    """No byte either way for ``idle_timeout`` seconds."""


@dataclass(frozen=True, kw_only=True)
class Route:
    """Where a CONNECT goes: an edge node's live session."""

    node: str
    session: AgentSession | None
    """None: another replica holds the node's session; the stream is forwarded to it."""


class EgressMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.connects = prometheus_client.Counter(
            "tunnel_server_egress_connects",
            "CONNECTs from kube-apiserver by result (ok, or why they were refused)",
            ["result"],
            registry=registry,
        )
        self.open = prometheus_client.Gauge(
            "tunnel_server_egress_tunnels",
            "Relayed kubelet connections open now",
            registry=registry,
        )
        self.bytes = prometheus_client.Counter(
            "tunnel_server_egress_bytes",
            "Bytes relayed to (up) and from (down) kubelets, counted when a connection ends",
            ["direction"],
            registry=registry,
        )


def status_line(status: int, reason: str) -> bytes:
    """``HTTP/1.1 <status> <reason>``: printable ASCII only, so Go's parser takes it whole."""
    text = "".join(c if " " <= c <= "~" else "?" for c in reason)[:MAX_REASON]
    return f"HTTP/1.1 {status} {text}\r\n".encode("ascii")


def refusal_bytes(status: int, reason: str) -> bytes:
    body = (reason + "\n").encode("ascii", "replace")
    return (
        status_line(status, reason)
        + b"Content-Type: text/plain; charset=utf-8\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
        + body
    )


ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class Router:
    """Maps a CONNECT target to an edge node's session, or refuses with the reason."""

    def __init__(
        self,
        *,
        sessions: SessionRegistry,
        store: Store,
        nodes: CloudNodes,
        settings: EgressSettings,
        nodes_listed: asyncio.Event | None = None,
        elsewhere: Callable[[str], bool] | None = None,
    ) -> None:
        self._sessions = sessions
        self._elsewhere = elsewhere or (lambda _node: False)
        """Whether another replica holds a node's session (``replicas.opener.holder``)."""
        self._store = store
        self._nodes = nodes
        self._settings = settings
        self._nodes_listed = nodes_listed
        """Set once the cloud's Nodes were listed; None without ``--kube-upstream``."""

    def route(self, target: ConnectTarget) -> Route:
        name = self._node_name(target.host)
        session = self._sessions.get(name)
        if session is None:
            record = self._store.get_node(name)
            if record is not None and record.kind == "cluster":
                raise Refusal(
                    403,
                    "cluster",
                    f"{name} is a registered cluster, not an edge node: kubelets only",
                )
            if record is None:
                raise Refusal(
                    404,
                    "unknown_host",
                    f"node {name} (address {target.host}) has no EdgeFleet agent: join it with"
                    " `tunnel-server token create --kind node`",
                )
            if not self._elsewhere(name):
                raise Refusal(
                    503,
                    "offline",
                    f"edge node {name} is offline: it has no tunnel session now (state"
                    f" {record.state}); its agent reconnects by itself",
                )
        elif session.identity.kind != "node":
            raise Refusal(
                403, "cluster", f"{name} is a registered cluster, not an edge node: kubelets only"
            )
        cloud = self._nodes.by_name.get(name)
        expected = (cloud.kubelet_port if cloud else None) or self._settings.kubelet_port
        if target.port != expected:
            raise Refusal(
                403,
                "wrong_port",
                f"port {target.port} is not the kubelet port ({expected}) of edge node {name}:"
                " only kubelets are reachable through the egress",
            )
        return Route(node=name, session=session)

    def _node_name(self, host: str) -> str:
        # The node name first: kube-apiserver's default --kubelet-preferred-address-types
        # starts with Hostname, which a kubelet sets to its node name unless overridden.
        if self._sessions.get(host) is not None or host in self._nodes.by_name:
            return host
        names = self._nodes.names_for(host)
        if len(names) == 1:
            return names.pop()
        if names:
            listed = ", ".join(sorted(names)[:5])
            raise Refusal(
                409,
                "ambiguous",
                f"address {host} belongs to several nodes ({listed}): give kube-apiserver"
                " --kubelet-preferred-address-types with an address type unique per node",
            )
        if self._store.get_node(host) is not None:
            return host  # a joined name without a session: answered "offline" by route()
        if self._nodes_listed is not None and not self._nodes_listed.is_set():
            raise Refusal(
                503,
                "starting",
                f"{host} is not a node name, and the cloud cluster's Nodes (their addresses)"
                " have not been listed yet: try again in a moment",
            )
        raise Refusal(
            404,
            "unknown_host",
            f"no edge node has the name or address {host}"
            + (
                "" if self._nodes.by_name else " (nodes are known by name only: no --kube-upstream)"
            ),
        )


class EgressServer:
    """The CONNECT listeners and the relays they run."""

    def __init__(
        self,
        *,
        router: Router,
        settings: EgressSettings,
        metrics: EgressMetrics,
        forward: Forward | None = None,
    ) -> None:
        self._router = router
        self._forward = forward
        """Opens a stream through the replica holding a node (``replicas.opener``)."""
        self._settings = settings
        self._metrics = metrics
        self._per_node: dict[str, int] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._servers: list[asyncio.Server] = []

    # ------------------------------------------------------------------ listeners

    async def start_unix(self, path: Path) -> None:
        _remove_stale_socket(path)
        old = os.umask(0o177)  # the socket is created 0600: kube-apiserver runs as our user
        try:
            server = await asyncio.start_unix_server(self.handle, path=str(path), limit=CHUNK)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)  # noqa: PTH101 - Path.chmod would block the loop (ASYNC240)
        self._servers.append(server)
        log.info("egress selector on unix socket %s", path)

    async def start_tcp(self, host: str, port: int, context: ssl.SSLContext) -> list[str]:
        server = await asyncio.start_server(
            self.handle,
            host,
            port,
            ssl=context,
            ssl_handshake_timeout=self._settings.tls_handshake_timeout,
            limit=CHUNK,
        )
        self._servers.append(server)
        addresses = [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets]
        log.info("egress selector with mTLS on %s", ", ".join(addresses))
        return addresses

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.shutdown_grace):
                    await server.wait_closed()

    # ------------------------------------------------------------------ one connection

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (OSError, StreamError) as error:
            log.debug("egress connection ended: %s", error)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target: ConnectTarget | None = None
        try:
            try:
                head, early = await self._read_head(reader)
                target = parse_connect_head(head)
            except HeadError as bad:
                raise Refusal(bad.status, "bad_request", bad.reason) from None
            except TimeoutError:
                timeout = self._settings.head_timeout
                raise Refusal(
                    408, "timeout", f"no complete CONNECT head within {timeout:g} s"
                ) from None
            route = self._router.route(target)
        except Refusal as refusal:
            await self._refuse(writer, refusal, target)
            return
        await self._tunnel(reader, writer, route, target, early)

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        buffer = b""
        async with asyncio.timeout(self._settings.head_timeout):
            while True:
                split = split_head(buffer, max_bytes=self._settings.max_head_bytes)
                if split is not None:
                    return split
                data = await reader.read(self._settings.max_head_bytes)
                if not data:
                    raise HeadError(400, "the connection ended inside the request head")
                buffer += data

    async def _refuse(
        self, writer: asyncio.StreamWriter, refusal: Refusal, target: ConnectTarget | None
    ) -> None:
        self._metrics.connects.labels(refusal.result).inc()
        where = f" {target.host}:{target.port}" if target else ""
        log.info("egress CONNECT%s refused: %s %s", where, refusal.status, refusal.reason)
        writer.write(refusal_bytes(refusal.status, refusal.reason))
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.drain()

    async def _tunnel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        route: Route,
        target: ConnectTarget,
        early: bytes,
    ) -> None:
        node = route.node
        if self._per_node.get(node, 0) >= self._settings.max_per_node:
            limit = self._settings.max_per_node
            refusal = Refusal(429, "busy", f"{limit} connections to edge node {node} are open")
            await self._refuse(writer, refusal, target)
            return
        self._per_node[node] = self._per_node.get(node, 0) + 1
        try:
            stream = await self._open(route)
        except Refusal as refusal:
            self._leave(node)
            await self._refuse(writer, refusal, target)
            return
        try:
            self._metrics.connects.labels("ok").inc()
            self._metrics.open.inc()
            writer.write(ESTABLISHED)
            await writer.drain()
            await _Relay(reader, writer, stream).run(early=early, idle=self._settings.idle_timeout)
        finally:
            self._leave(node)
            self._metrics.open.dec()
            self._metrics.bytes.labels("up").inc(stream.bytes_written)
            self._metrics.bytes.labels("down").inc(stream.bytes_read)
            stream.reset(ErrorCode.CANCEL, "egress connection over")  # no-op once closed

    def _leave(self, node: str) -> None:
        self._per_node[node] -= 1
        if not self._per_node[node]:
            del self._per_node[node]

    async def _open(self, route: Route) -> TunnelStream:
        node, kubelet = route.node, self._settings.kubelet_target
        timeout = self._settings.open_timeout
        try:
            if route.session is not None:
                return await route.session.connection.open_stream(kubelet, timeout=timeout)
            if self._forward is None:
                raise Refusal(503, "offline", f"edge node {node} has no tunnel session here")
            return await self._forward(node, kubelet, timeout)
        except opener.AgentNotConnectedError:
            raise Refusal(503, "offline", f"edge node {node} went offline") from None
        except TunnelClosedError as gone:
            raise Refusal(503, "offline", f"edge node {node} went offline: {gone}") from None
        except StreamRejectedError as rejected:
            if rejected.code is ErrorCode.TARGET_NOT_ALLOWED:
                raise Refusal(
                    502,
                    "no_target",
                    f"edge node {node} has no {kubelet!r} target: add"
                    f' `{kubelet} = "127.0.0.1:10250"` to its [tunnel.targets]',
                ) from None
            raise Refusal(
                502, "unreachable", f"edge node {node} could not reach its kubelet: {rejected}"
            ) from None
        except StreamError as failed:
            raise Refusal(
                502, "unreachable", f"tunnel to edge node {node} failed: {failed}"
            ) from None


class _Relay:
    """Bytes both ways between a client connection and a tunnel stream, with an idle limit."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: TunnelStream
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()

    async def run(self, *, early: bytes, idle: float) -> None:
        name = f"egress[{self._stream.stream_id}]"
        try:
            async with asyncio.TaskGroup() as group:
                both = [
                    group.create_task(self._up(early), name=f"{name}.up"),
                    group.create_task(self._down(), name=f"{name}.down"),
                ]
                guard = group.create_task(self._watch(idle), name=f"{name}.idle") if idle else None
                await asyncio.wait(both)
                if guard is not None:
                    guard.cancel()
        except* _IdleError:
            log.info("egress connection to %s idle for %g s, closed", self._stream.target, idle)
            self._abort("idle")
        except* (OSError, StreamError, ssl.SSLError) as errors:
            log.debug("egress relay %s ended: %s", name, errors.exceptions[0])
            self._abort("the other side failed")

    def _abort(self, why: str) -> None:
        self._stream.reset(ErrorCode.CANCEL, why)
        self._writer.transport.abort()

    async def _up(self, early: bytes) -> None:
        if early:
            await self._stream.write(early)
        while data := await self._reader.read(CHUNK):
            self._last = self._loop.time()
            await self._stream.write(data)
        self._stream.end()

    async def _down(self) -> None:
        while data := await self._stream.read(CHUNK):
            self._last = self._loop.time()
            self._writer.write(data)
            await self._writer.drain()
        if self._writer.can_write_eof():
            self._writer.write_eof()

    async def _watch(self, idle: float) -> None:
        while True:
            left = self._last + idle - self._loop.time()
            if left <= 0:
                raise _IdleError
            await asyncio.sleep(left)


class EgressStartError(ValueError):
    """A listener of the egress selector cannot start; the message says why, in one line."""


def socket_path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be our socket, or None (absent, or a socket nobody listens on)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"--egress-uds {path}: {error.strerror}"
    if not stat.S_ISSOCK(mode):
        return f"--egress-uds {path} exists and is not a socket: choose another path"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return None  # a leftover of an earlier run: replaced at start
    finally:
        probe.close()
    return f"--egress-uds {path}: another process listens there (another tunnel-server?)"


def _remove_stale_socket(path: Path) -> None:
    """A socket left by a previous run is replaced; anything else stops the start."""
    problem = socket_path_problem(path)
    if problem is not None:
        raise EgressStartError(problem)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def client_ssl_context(app: web.Application, client_ca: Path) -> ssl.SSLContext:
    """Our serving certificate; client certificates required, signed by ``client_ca`` only."""
    authority = app[AUTHORITY_KEY]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(authority.serving_cert_path, authority.serving_key_path)
    context.load_verify_locations(cafile=str(client_ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _start(app: web.Application, server: EgressServer, settings: EgressSettings) -> None:
    if settings.uds_path is not None:
        try:
            await server.start_unix(settings.uds_path)
        except OSError as error:
            reason = error.strerror or str(error)
            raise EgressStartError(
                f"cannot serve --egress-uds {settings.uds_path}: {reason}"
            ) from None
    if settings.listen is not None:
        if settings.client_ca is None:
            raise EgressStartError("--egress-listen needs --egress-client-ca")
        host, port = settings.listen
        try:
            context = client_ssl_context(app, settings.client_ca)
            await server.start_tcp(host, port, context)
        except ssl.SSLError as error:
            raise EgressStartError(f"cannot serve --egress-listen {host}:{port}: {error}") from None
        except OSError as error:
            # asyncio's message repeats the address; the errno's text is enough.
            reason = os.strerror(error.errno).lower() if error.errno else str(error)
            raise EgressStartError(
                f"cannot serve --egress-listen {host}:{port}: {reason}"
            ) from None


def setup(app: web.Application, *, settings: EgressSettings) -> None:
    """Serve the egress selector while ``app`` runs (needs the tunnel set up)."""
    nodes = nodes_watch.shared_nodes(app)
    metrics = EgressMetrics(app[REGISTRY_KEY])

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        router = Router(
            sessions=app[SESSIONS_KEY],
            store=app[STORE_KEY],
            nodes=nodes,
            settings=settings,
            nodes_listed=app[NODES_SYNCED_KEY] if UPSTREAM_KEY in app else None,
            elsewhere=lambda node: opener.holder(app, node) is not None,
        )

        async def forward(node: str, target: str, timeout: float) -> TunnelStream:  # noqa: ASYNC109 - the agent's dial time
            return await opener.open_agent_stream(app, node, target, timeout=timeout)

        server = EgressServer(router=router, settings=settings, metrics=metrics, forward=forward)
        try:
            await _start(app, server, settings)
            yield
        finally:
            await server.close()
            if settings.uds_path is not None:
                with contextlib.suppress(OSError):
                    settings.uds_path.unlink()

    app.cleanup_ctx.append(lifecycle)
