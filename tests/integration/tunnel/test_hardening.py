"""The tunnel server from outside, as issue 9 tried it: exact paths, bounded bodies, quiet logs.

A real ``tunnel-server`` process and a real agent; behind the agent a target that records the
exact request line it received. Every test also reads the server's own log: a peer's
misbehaviour is one line with a reason, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from edge_agent.identity import Identity
from tests.harness.daemons import Agent, Server
from tests.harness.procs import free_port
from tests.harness.waiting import eventually, eventually_async
from tunnel_protocol import (
    SUPPORTED_VERSIONS,
    Accept,
    Data,
    Fin,
    FrameType,
    Hello,
    Open,
    Reset,
    decode_frame,
    encode_frame,
    split_frames,
)
from tunnel_protocol.frames import UNNEGOTIATED_VERSION

NODE = "edge-h"
RAW_CLIENT = "edge-raw"
"""Joined but never started: its certificate drives a hand-written tunnel client."""
PROXY = f"/api/v1/nodes/{NODE}/proxy"


class RecordingTarget:
    """A plain TCP HTTP server that keeps each request line exactly as it arrived.

    ``/slow`` answers with a chunked body that never ends: a chunk every 20 ms until the
    connection is gone, which it then counts in ``gone``.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.lines: list[bytes] = []
        self.gone = 0
        self.changed = threading.Condition()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, name="recording-target", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            line = head.split(b"\r\n", 1)[0]
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
            if line.split(b" ")[1].startswith(b"/slow"):
                self._slow(conn)
                return
            if line.split(b" ")[1].startswith(b"/broken"):  # a bad chunk after the first
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"6\r\nfirst\n\r\nnot a chunk size\r\n"
                )
                return
            body = json.dumps({"line": line.decode("latin-1")}).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )

    def _slow(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while not self._stopping:
                conn.sendall(b"6\r\nchunk\n\r\n")
                time.sleep(0.02)
        with self.changed:
            self.gone += 1
            self.changed.notify_all()

    def wait(self, predicate: object, timeout: float = 30.0) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout=timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        self._stopping = True
        self._sock.close()


class ServerLog:
    """The server's log from a point on: what a test made it write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = path.stat().st_size

    def text(self) -> str:
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            return handle.read().decode("utf-8", "replace")

    async def wait_for(self, needle: str) -> str:
        """The log text once ``needle`` is in it (30 s at most: the server logs at once)."""

        async def text() -> str:
            return self.text()

        return await eventually_async(
            text, lambda text: needle in text, what=f"{needle!r} in the server log"
        )

    def assert_quiet(self, *, max_lines: int) -> None:
        text = self.text()
        assert "Traceback" not in text, text
        assert "TaskGroup" not in text, text
        assert len(text.splitlines()) <= max_lines, text


@dataclass
class Edge:
    server: Server
    agent: Agent
    target: RecordingTarget
    raw_identity: Identity
    streams_idle: float = 0.0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.server.workdir / "tunnel-server.log"

    def log(self) -> ServerLog:
        return ServerLog(self.log_path)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    workdir = tmp_path_factory.mktemp("hardening")
    target = RecordingTarget()
    server = Server(workdir=workdir)
    server.start()
    agent = Agent(
        name=NODE, workdir=workdir, server=server, targets={"raw": f"127.0.0.1:{target.port}"}
    )
    raw = Agent(name=RAW_CLIENT, workdir=workdir, server=server)
    try:
        agent.join()
        raw.join()
        agent.start()
        agent.wait_connected()
        # The agent's status stream: the steady state.
        eventually(
            lambda: server.metric("tunnel_server_streams"),
            lambda streams: streams >= 1,
            what="the agent's status stream open",
        )
        yield Edge(
            server=server,
            agent=agent,
            target=target,
            raw_identity=Identity.load(raw.data_dir),
            streams_idle=server.metric("tunnel_server_streams"),
        )
    finally:
        agent.stop()
        server.stop()
        target.stop()


@dataclass
class Answer:
    status: int
    head: bytes
    body: bytes

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data


def tls_context(edge: Edge) -> ssl.SSLContext:
    return edge.server.ssl_context()


@contextlib.asynccontextmanager
async def tls_connection(
    edge: Edge,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", edge.server.port, ssl=tls_context(edge), server_hostname="127.0.0.1"
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def exchange(edge: Edge, head: bytes, *, body: bytes = b"") -> Answer:
    """Send exactly ``head`` (and ``body``); the answer (its Content-Length, or until EOF)."""
    async with tls_connection(edge) as (reader, writer):
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(30):
            status_head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
            length = None
            for line in status_head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            rest = await (reader.read() if length is None else reader.readexactly(length))
    status = int(status_head.split(b" ", 2)[1])
    return Answer(status=status, head=status_head, body=rest)


def request(edge: Edge, method: str, target: bytes, *, headers: bytes = b"") -> bytes:
    auth = f"Authorization: Bearer {edge.server.admin_token}\r\n".encode()
    return (
        method.encode()
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + auth
        + headers
        + b"\r\n"
    )


# ---------------------------------------------------------------- item 1: the exact raw path


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        ("/a%3Fb=c", "/a%3Fb=c"),
        ("/a%2Fb", "/a%2Fb"),
        ("/%2e%2e/x", "/%2e%2e/x"),
        ("/a%23frag", "/a%23frag"),
        ("/a%20b", "/a%20b"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/p?x=a%2Bb&y=%26&z=%3D&e=", "/p?x=a%2Bb&y=%26&z=%3D&e="),
        ("/q?", "/q?"),
        ("", "/"),
        ("/", "/"),
        ("/a//b/./c", "/a//b/./c"),
        ("/../x", "/../x"),
    ],
)
async def test_proxy_sends_on_exactly_the_raw_path(edge: Edge, sent: str, received: str) -> None:
    log = edge.log()
    answer = await exchange(edge, request(edge, "GET", f"{PROXY}/raw{sent}".encode()))
    assert answer.status == 200, answer
    assert answer.json() == {"line": f"GET {received} HTTP/1.1"}
    log.assert_quiet(max_lines=0)


@pytest.mark.parametrize(
    "sent",
    [
        b"/a%00b",
        b"/x?q=%0d%0aX-Injected:%201",
        b"/x?q=%0A",
    ],
)
async def test_what_cannot_be_sent_on_gets_400(edge: Edge, sent: bytes) -> None:
    log = edge.log()
    before = len(edge.target.lines)
    answer = await exchange(edge, request(edge, "GET", PROXY.encode() + b"/raw" + sent))
    assert answer.status == 400, answer
    assert answer.json()["reason"] == "bad_path"
    assert len(edge.target.lines) == before, "nothing reached the target"
    log.assert_quiet(max_lines=1)


@pytest.mark.parametrize("target", ["web%00", "web%20", "%20", "w%0Aeb"])
async def test_bad_target_names_get_400(edge: Edge, target: str) -> None:
    log = edge.log()
    answer = await exchange(edge, request(edge, "GET", f"{PROXY}/{target}/hello".encode()))
    assert answer.status == 400, answer
    assert answer.json()["reason"] == "bad_target"
    log.assert_quiet(max_lines=1)


# ---------------------------------------------------------------- item 3: quiet logs


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX\x01: 1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /healthz?\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/nodes?q=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET " + PROXY.encode() + b"/raw/caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["space-in-name", "control-in-name", "header-over-8k", "ff-in-query", "ff-api", "utf8"],
)
async def test_malformed_requests_cost_one_line(edge: Edge, head: bytes) -> None:
    log = edge.log()
    answer = await exchange(edge, head)
    assert answer.status == 400, answer
    text = log.text()
    log.assert_quiet(max_lines=1)
    assert "refused a request the peer got wrong" in text, text


@contextlib.asynccontextmanager
async def raw_tunnel(edge: Edge) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A hand-written tunnel client (docs/tunnel-protocol.md) past the HELLO exchange."""
    hello = Hello(
        versions=SUPPORTED_VERSIONS,
        max_frame_payload=65536,
        initial_window=256 * 1024,
        max_concurrent_streams=1024,
    )
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            edge.server.url + "/tunnel",
            ssl=edge.raw_identity.client_ssl_context(),
            max_msg_size=0,
        ) as ws,
    ):
        await ws.send_bytes(encode_frame(hello, version=UNNEGOTIATED_VERSION))
        answer = await ws.receive(timeout=10)
        assert answer.type is aiohttp.WSMsgType.BINARY, answer
        yield ws


def bad_frame() -> bytes:
    """An OPEN on stream 0: a protocol error that ends the session."""
    return struct.pack("!BBHII", 1, FrameType.OPEN, 0, 0, 5) + b"renew"


async def test_open_flood_then_bad_frame_logs_no_tracebacks(edge: Edge) -> None:
    """100 OPENs to ``renew`` and a bad frame in one message: one session end, no tracebacks."""
    log = edge.log()
    opens = b"".join(
        encode_frame(Open(stream_id=2 * n + 1, target="renew"), version=1) for n in range(100)
    )
    async with raw_tunnel(edge) as ws:
        await ws.send_bytes(opens + bad_frame())
        with contextlib.suppress(TimeoutError):
            while (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.BINARY:
                pass  # REJECTs, RESETs, the GO_AWAY: until the server closes
    await log.wait_for(f"agent disconnected node={RAW_CLIENT}")
    log.assert_quiet(max_lines=5)


async def test_data_before_accept_logs_no_traceback(edge: Edge) -> None:
    """OPEN then DATA before our ACCEPT: the peer broke the protocol, no handler fails."""
    log = edge.log()
    async with raw_tunnel(edge) as ws:
        await ws.send_bytes(
            encode_frame(Open(stream_id=1, target="renew"), version=1)
            + encode_frame(Data(stream_id=1, data=b'{"csr": "x"}'), version=1)
        )
        answer = await ws.receive(timeout=10)  # the RESET of stream 1, or the session's end
        assert answer.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.CLOSE), answer
    await log.wait_for(f"agent disconnected node={RAW_CLIENT}")
    log.assert_quiet(max_lines=5)


async def test_client_gone_mid_response_logs_no_traceback(edge: Edge) -> None:
    log = edge.log()
    gone = edge.target.gone
    async with tls_connection(edge) as (reader, writer):
        writer.write(request(edge, "GET", f"{PROXY}/raw/slow".encode()))
        await writer.drain()
        async with asyncio.timeout(30):
            assert b"chunk" in await reader.readuntil(b"chunk")
        writer.transport.abort()
    # The reset crossed server, tunnel and agent: the target saw its connection end.
    await asyncio.to_thread(edge.target.wait, lambda: edge.target.gone > gone)

    async def streams() -> float:
        return edge.server.metric("tunnel_server_streams")

    await eventually_async(
        streams, lambda open_: open_ <= edge.streams_idle, what="the reset stream closed"
    )
    log.assert_quiet(max_lines=1)


async def test_target_breaking_mid_answer_cuts_the_client_off(edge: Edge) -> None:
    """After the head no 502 can follow: the client sees a truncated answer.

    Not one that looks complete, nor a second response glued onto the first.
    """
    log = edge.log()
    async with tls_connection(edge) as (reader, writer):
        writer.write(request(edge, "GET", f"{PROXY}/raw/broken".encode()))
        await writer.drain()
        async with asyncio.timeout(30):
            data = await reader.read()
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert b"first\n" in data
    assert not data.endswith(b"0\r\n\r\n"), "the chunked answer must not look complete"
    assert data.count(b"HTTP/1.1") == 1, data
    log.assert_quiet(max_lines=1)


# ---------------------------------------------------------------- item 2: bounded JSON


def nested(depth: int) -> bytes:
    return b'{"token": ' + b"[" * depth + b"]" * depth + b"}"


async def post(
    edge: Edge, path: str, body: bytes, *, ssl_context: ssl.SSLContext, token: str | None = None
) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(edge.server.url + path, data=body, headers=headers, ssl=ssl_context) as answer,
    ):
        return answer.status, await answer.json()


@pytest.mark.parametrize(
    "body",
    [b"[" * 7_000 + b"]" * 7_000, nested(7_000), b'{"a":' * 40 + b"1" + b"}" * 40],
    ids=["array-7000", "object-7000", "object-40"],
)
@pytest.mark.parametrize("path", ["/api/v1/join", "/api/v1/renew", "/api/v1/tokens"])
async def test_deep_json_gets_400_on_every_json_route(edge: Edge, path: str, body: bytes) -> None:
    log = edge.log()
    context = edge.raw_identity.client_ssl_context()  # renew wants the client certificate
    status, answer = await post(
        edge, path, body, ssl_context=context, token=edge.server.admin_token
    )
    assert (status, answer["reason"]) == (400, "bad_json"), answer
    assert answer["detail"]
    log.assert_quiet(max_lines=1)


# ---------------------------------------------------------------- item 4: documented limits


TEN_MB = 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/sessions"),
        ("GET", "/api/v1/nodes"),
        ("GET", "/api/v1/overview"),
        ("GET", "/api/v1/tokens"),
        ("DELETE", "/api/v1/sessions/current"),
        ("GET", "/api/v1/join/abc"),
        ("GET", "/api/v1/ca"),
        ("GET", "/healthz"),
        ("GET", "/api/v1/devices"),
    ],
)
async def test_ten_megabytes_to_a_route_that_takes_no_body_get_413(
    edge: Edge, method: str, path: str
) -> None:
    """Announced with Content-Length: refused before a byte of the body is read."""
    head = request(edge, method, path.encode(), headers=f"Content-Length: {TEN_MB}\r\n".encode())
    answer = await exchange(edge, head)
    assert answer.status == 413, answer
    assert answer.json()["reason"] == "body_too_large"


async def test_chunked_body_to_a_route_that_takes_no_body_gets_413(edge: Edge) -> None:
    """Not announced: refused once it passes the limit, the rest never read."""
    head = request(edge, "GET", b"/api/v1/nodes", headers=b"Transfer-Encoding: chunked\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    async with tls_connection(edge) as (reader, writer):
        writer.write(head)

        async def upload() -> None:
            with contextlib.suppress(OSError, ssl.SSLError):
                for _ in range(TEN_MB // 65536):
                    writer.write(chunk)
                    await writer.drain()

        sending = asyncio.ensure_future(upload())  # noqa: TID251 - cancelled right below
        try:
            async with asyncio.timeout(30):
                status_line = await reader.readline()
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
    assert status_line.split(b" ")[1] == b"413", status_line


async def test_a_small_body_on_a_bodyless_route_is_ignored(edge: Edge) -> None:
    head = request(edge, "GET", b"/api/v1/overview", headers=b"Content-Length: 2\r\n")
    answer = await exchange(edge, head, body=b"{}")
    assert answer.status == 200, answer


@pytest.mark.parametrize("path", ["/api/v1/join", "/api/v1/renew"])
async def test_join_and_renew_nested_20000_deep_get_400(edge: Edge, path: str) -> None:
    """The issue's own body: 40 KB, under the join limit (64 KiB), nested 20,000 deep."""
    log = edge.log()
    context = edge.raw_identity.client_ssl_context()
    status, answer = await post(edge, path, nested(20_000), ssl_context=context)
    assert (status, answer["reason"]) == (400, "bad_json"), answer
    log.assert_quiet(max_lines=1)


async def test_renew_stream_with_deep_json_answers_bad_request(edge: Edge) -> None:
    """The renew service reads JSON from a tunnel stream: the same bounded decoding."""
    log = edge.log()
    answer = b""
    async with raw_tunnel(edge) as ws:
        await ws.send_bytes(encode_frame(Open(stream_id=1, target="renew"), version=1))
        accepted = False
        while not accepted:
            message = await ws.receive(timeout=10)
            assert message.type is aiohttp.WSMsgType.BINARY, message
            frames = [decode_frame(piece)[1] for piece in split_frames(message.data)]
            accepted = any(isinstance(f, Accept) and f.stream_id == 1 for f in frames)
        await ws.send_bytes(
            encode_frame(Data(stream_id=1, data=b"[" * 16_000 + b"]" * 16_000), version=1)
            + encode_frame(Fin(stream_id=1), version=1)
        )
        ended = False
        while not ended:
            message = await ws.receive(timeout=10)
            assert message.type is aiohttp.WSMsgType.BINARY, message
            for piece in split_frames(message.data):
                _, frame = decode_frame(piece)
                assert not isinstance(frame, Reset), frame
                if isinstance(frame, Data) and frame.stream_id == 1:
                    answer += frame.data
                ended = ended or (isinstance(frame, Fin) and frame.stream_id == 1)
    assert json.loads(answer)["error"] == "bad_request", answer
    await log.wait_for(f"agent disconnected node={RAW_CLIENT}")
    log.assert_quiet(max_lines=5)
