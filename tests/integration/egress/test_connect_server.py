"""The egress selector server with real processes: a tunnel server, joined agents, a TLS "kubelet".

The client here speaks exactly what kube-apiserver's HTTPConnect egress dialer speaks (one
CONNECT per connection, then TLS to the kubelet through it); the kubelet is a TLS echo server
whose certificate the client verifies, so the TLS session is provably end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.harness.certs import KeyPair, TestCA
from tests.harness.daemons import (
    Agent,
    Server,
    join_agent,
    launch_agent,
    write_agent_config,
)
from tests.harness.procs import ManagedProcess, free_port
from tests.harness.waiting import eventually

KUBELET_PORT = free_port()
"""The fake kubelet's port, fixed for the module: the agents' allow-lists are written at start."""
APISERVER_HEAD = b"CONNECT {host}:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@dataclass
class System:
    server: Server
    socket: Path
    tls_port: int
    ca: TestCA
    kubelet: KeyPair
    client: KeyPair
    agents: dict[str, Agent]


def _join_cluster(server: Server, workdir: Path, name: str) -> ManagedProcess:
    """A cluster-kind agent session: a cluster identity that must never reach a kubelet."""
    data_dir = workdir / f"agent-{name}"
    join_agent(server, name, data_dir, kind="cluster")
    config = write_agent_config(
        workdir / f"agent-{name}.toml",
        {
            "tunnel": {"backoff_base": 0.2},
            "tunnel.targets": {"kubelet": f"127.0.0.1:{KUBELET_PORT}"},
        },
    )
    return launch_agent(
        label=f"edge-agent[{name}]",
        config=config,
        data_dir=data_dir,
        local_api_port=free_port(),
        log_path=workdir / f"agent-{name}.log",
    )


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("egress")
    # A Unix socket path must stay under 108 bytes; pytest's tmp paths can be longer.
    short = Path(tempfile.mkdtemp(prefix="egress-", dir="/tmp"))
    ca = TestCA(workdir / "pki")
    kubelet = ca.issue("kubelet", server=True, hosts=("edge-a", "127.0.0.1"))
    client = ca.issue("kube-apiserver-egress", server=False)
    tls_port = free_port()
    server = Server(
        workdir=workdir,
        extra_args=(
            "--egress-uds",
            str(short / "egress.sock"),
            "--egress-listen",
            f"127.0.0.1:{tls_port}",
            "--egress-client-ca",
            str(ca.cert_path),
        ),
    )
    agents: dict[str, Agent] = {}
    cluster: ManagedProcess | None = None
    try:
        server.start()
        for name, targets in (
            ("edge-a", {"kubelet": f"127.0.0.1:{KUBELET_PORT}"}),
            ("edge-nokubelet", {"web": f"127.0.0.1:{KUBELET_PORT}"}),
            ("edge-down", {"kubelet": f"127.0.0.1:{KUBELET_PORT}"}),
        ):
            agent = Agent(name=name, workdir=workdir, server=server, targets=targets)
            agent.join()
            agent.start()
            agents[name] = agent
        cluster = _join_cluster(server, workdir, "cluster-c")
        for agent in agents.values():
            agent.wait_connected()
        agents["edge-down"].stop()  # joined, but offline
        eventually(
            lambda: server.metric("tunnel_server_sessions"),
            lambda n: n == 3,  # edge-a, edge-nokubelet, cluster-c
            what="three sessions",
        )
        yield System(
            server=server,
            socket=short / "egress.sock",
            tls_port=tls_port,
            ca=ca,
            kubelet=kubelet,
            client=client,
            agents=agents,
        )
    finally:
        if cluster is not None:
            cluster.stop()
        for agent in agents.values():
            agent.stop()
        server.stop()
        shutil.rmtree(short, ignore_errors=True)


@dataclass
class Kubelet:
    connections: int = 0


@pytest_asyncio.fixture
async def kubelet(system: System) -> AsyncIterator[Kubelet]:
    """A TLS echo server standing in for the kubelet on the agents' side."""
    seen = Kubelet()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(system.kubelet.cert_path, system.kubelet.key_path)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        await close(writer)

    server = await asyncio.start_server(echo, "127.0.0.1", KUBELET_PORT, ssl=context)
    yield seen
    server.close()
    await server.wait_closed()


async def connect_uds(
    system: System, head: bytes
) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(system.socket))
    writer.write(head)
    status = await _status(reader)
    return status, reader, writer


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def _status(reader: asyncio.StreamReader) -> str:
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode()


def kubelet_context(system: System) -> ssl.SSLContext:
    """kube-apiserver's side: it verifies the kubelet's certificate (when given a CA)."""
    return ssl.create_default_context(cafile=str(system.ca.cert_path))


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"ping through the tunnel")
    await writer.drain()
    return await reader.readexactly(len(b"ping through the tunnel"))


async def test_connect_by_node_name_reaches_the_kubelet_over_tls_end_to_end(
    system: System, kubelet: Kubelet
) -> None:
    status, reader, writer = await connect_uds(system, APISERVER_HEAD.replace(b"{host}", b"edge-a"))
    assert status == "HTTP/1.1 200 Connection established"
    await writer.start_tls(kubelet_context(system), server_hostname="edge-a")
    assert await round_trip(reader, writer) == b"ping through the tunnel"
    await close(writer)
    assert kubelet.connections == 1


def test_socket_mode_is_0600(system: System) -> None:
    mode = system.socket.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.parametrize(
    ("host", "status", "words"),
    [
        (b"10.9.9.9", 404, "no edge node has the name or address 10.9.9.9"),
        (b"no-such-node", 404, "no edge node"),
        (b"cluster-c", 403, "registered cluster"),
        (b"edge-down", 503, "offline"),
        (b"edge-nokubelet", 502, "no 'kubelet' target"),
    ],
)
async def test_refusals_say_why_in_the_status_line(
    system: System, kubelet: Kubelet, host: bytes, status: int, words: str
) -> None:
    line, _, writer = await connect_uds(system, APISERVER_HEAD.replace(b"{host}", host))
    await close(writer)
    assert line.startswith(f"HTTP/1.1 {status} "), line
    assert words in line
    assert kubelet.connections == 0


async def test_wrong_port_is_refused(system: System) -> None:
    line, _, writer = await connect_uds(system, b"CONNECT edge-a:22 HTTP/1.1\r\n\r\n")
    await close(writer)
    assert line.startswith("HTTP/1.1 403 port 22 is not the kubelet port (10250)"), line


@pytest.mark.usefixtures("kubelet")
@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT edge-a HTTP/1.1\r\n\r\n",
        b"CONNECT edge-a:10250 HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 10000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
    ],
)
async def test_bad_heads_get_4xx_and_close_while_an_open_tunnel_keeps_working(
    system: System, head: bytes
) -> None:
    _, reader, writer = await connect_uds(system, APISERVER_HEAD.replace(b"{host}", b"edge-a"))
    await writer.start_tls(kubelet_context(system), server_hostname="edge-a")
    bad_reader, bad_writer = await asyncio.open_unix_connection(str(system.socket))
    bad_writer.write(head)
    line = await _status(bad_reader)
    assert line.split(" ")[1] in ("400", "405"), line
    await bad_reader.read()  # the reason as body, then the server closes
    assert bad_reader.at_eof()
    await close(bad_writer)
    assert await round_trip(reader, writer) == b"ping through the tunnel"
    await close(writer)


async def test_a_head_that_never_ends_is_cut_at_the_limit(system: System) -> None:
    reader, writer = await asyncio.open_unix_connection(str(system.socket))
    writer.write(b"CONNECT edge-a:10250 HTTP/1.1\r\nX: " + b"a" * 9000)
    line = await _status(reader)
    await close(writer)
    assert line == "HTTP/1.1 400 request head over 8192 bytes"


async def anonymous_connect(system: System, context: ssl.SSLContext) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", system.tls_port, ssl=context, server_hostname="127.0.0.1"
    )
    try:
        writer.write(APISERVER_HEAD.replace(b"{host}", b"edge-a"))
        await _status(reader)  # TLS 1.3: the refused handshake shows on the first read
    finally:
        await close(writer)


async def test_mtls_listener_requires_a_client_certificate(
    system: System, kubelet: Kubelet
) -> None:
    anonymous = ssl.create_default_context(cafile=str(system.server.data_dir / "ca.crt"))
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await anonymous_connect(system, anonymous)
    context = ssl.create_default_context(cafile=str(system.server.data_dir / "ca.crt"))
    context.load_cert_chain(system.client.cert_path, system.client.key_path)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", system.tls_port, ssl=context, server_hostname="127.0.0.1"
    )
    writer.write(APISERVER_HEAD.replace(b"{host}", b"edge-a"))
    assert await _status(reader) == "HTTP/1.1 200 Connection established"
    # TLS to the kubelet inside TLS to the egress server.
    await writer.start_tls(kubelet_context(system), server_hostname="edge-a")
    assert await round_trip(reader, writer) == b"ping through the tunnel"
    await close(writer)
    assert kubelet.connections == 1  # the anonymous client got nowhere near it


async def test_metrics_count_connects_by_result(system: System) -> None:
    _, _, writer = await connect_uds(system, APISERVER_HEAD.replace(b"{host}", b"nowhere"))
    await close(writer)
    _, body = await asyncio.to_thread(system.server.get, "/metrics")
    text = body.decode()
    assert 'tunnel_server_egress_connects_total{result="unknown_host"}' in text
    assert "tunnel_server_egress_tunnels " in text
