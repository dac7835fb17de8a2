"""The agent's gateway targets against a real member cluster, through a real tunnel.

One member cluster for the module (kube-apiserver, controller manager, scheduler, kwok). kwok
nodes run no pods, so the Services have no selector and the test writes their EndpointSlices
by hand (``managed-by`` the test, so no controller touches them), pointing at real HTTP servers
on this machine. Not on loopback: the API server refuses loopback (and link-local) addresses in
an EndpointSlice, so the servers listen on one of the machine's own non-loopback addresses
(``tests.harness.addresses``), which the kernel delivers locally all the same; on a machine that
has none the module fails loudly (tests never skip for want of something). Two endpoints of one
Service sit in two slices with different ports, as during a rolling update that changes the
target port.

A tunnel pair on loopback has a real ``TunnelClient``'s stream handler on the agent's end, the
``service/`` prefix wired to a ``GatewayPart`` whose informers watch the member; the test opens
streams from the cloud's end and writes raw HTTP/1.1 into them, as the cloud's gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import itertools
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from edge_agent import daemon
from edge_agent.cluster import credentials
from edge_agent.cluster.elastic.settings import ElasticSettings
from edge_agent.cluster.gateway.service import GatewayPart
from edge_agent.cluster.gateway.settings import GatewaySettings
from edge_agent.cluster.gateway.target import PREFIX
from edge_agent.cluster.settings import ClusterSettings
from edge_agent.cluster.works import WorkSettings
from edge_agent.settings import JoinSettings, NodeStatusSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient
from tests.harness import member
from tests.harness.addresses import local_address
from tests.harness.waiting import eventually, eventually_async
from tests.integration.clusters.members import write_kubeconfig
from tests.integration.tunnel_aio.test_connection import tunnel_pair
from tunnel_aio import StreamRejectedError, TunnelConnection
from tunnel_protocol import ErrorCode

pytestmark = [pytest.mark.kube, pytest.mark.timeout(400)]

PACKAGING = Path(__file__).resolve().parents[3] / "packaging" / "kubernetes" / "cluster-agent"
AGENT = "system:serviceaccount:edgefleet-system:cluster-agent"

MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME = "kubernetes.io/service-name"
HOST = local_address(socket.AF_INET)
HOST6 = local_address(socket.AF_INET6)
if HOST is None:
    pytest.fail(
        "no non-loopback IPv4 address on this machine: EndpointSlices cannot point at loopback;"
        " give the machine one (e.g. `ip addr add 192.0.2.2/32 dev lo`)",
        pytrace=False,
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the server's name and the path (HTTP/1.0: closes after)."""

    def do_GET(self) -> None:
        body = f"{self.server.name} {self.path}".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, host: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), _Handler)
        self.name = name
        self.port = int(self.server_address[1])


@dataclass
class Backends:
    cluster: member.MemberCluster
    a: int
    """Port of server ``a`` on HOST."""
    b: int
    """Port of server ``b`` on HOST."""
    dead: int
    """A port on HOST nobody listens on (connects are refused)."""


def _dead_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _endpoint(address: str, *, ready: bool | None = None) -> dict[str, Any]:
    conditions = {} if ready is None else {"ready": ready}
    return {"addresses": [address], "conditions": conditions}


def _slice(
    name: str,
    service: str,
    endpoints: list[dict[str, Any]],
    *,
    port: int,
    port_name: str = "",
    family: str = "IPv4",
    namespace: str = "demo",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {SERVICE_NAME: service, MANAGED_BY: "edgefleet-test"},
        },
        "addressType": family,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def _service(name: str, ports: list[dict[str, Any]], namespace: str = "demo") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": ports},  # no selector: the slices are the test's
    }


def _create(cluster: member.MemberCluster, obj: dict[str, Any]) -> None:
    namespace = obj["metadata"]["namespace"]
    if obj["kind"] == "Service":
        cluster.api("POST", f"/api/v1/namespaces/{namespace}/services", obj)
    else:
        cluster.api("POST", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", obj)


def _objects(a: int, b: int, dead: int, six: int | None) -> list[dict[str, Any]]:
    assert HOST is not None
    web_ports = [
        {"name": "http", "port": 80, "targetPort": "http"},
        {"name": "admin", "port": 81, "targetPort": 9090},
    ]
    one_port = [{"port": 80, "targetPort": 8080}]
    objects = [
        _service("web", web_ports),
        _slice("web-1", "web", [_endpoint(HOST)], port=a, port_name="http"),
        _slice("web-2", "web", [_endpoint(HOST, ready=True)], port=b, port_name="http"),
        _service("flaky", one_port),
        _slice("flaky-1", "flaky", [_endpoint(HOST)], port=a),
        _slice("flaky-2", "flaky", [_endpoint(HOST)], port=dead),
        _service("gone", one_port),
        _slice("gone", "gone", [_endpoint(HOST)], port=dead),
        _service("empty", one_port),
        _slice("empty", "empty", [_endpoint(HOST, ready=False)], port=a),
        _service("hidden", one_port, namespace="other"),
        _slice("hidden", "hidden", [_endpoint(HOST)], port=a, namespace="other"),
    ]
    if HOST6 is not None and six is not None:
        objects += [
            _service("six", one_port),
            _slice("six", "six", [_endpoint(HOST6)], port=six, family="IPv6"),
        ]
    return objects


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    assert HOST is not None
    servers = [_Server("a", HOST), _Server("b", HOST)]
    if HOST6 is not None:
        servers.append(_Server("six", HOST6))
    for server in servers:
        threading.Thread(target=server.serve_forever, name=server.name, daemon=True).start()
    six = servers[2].port if HOST6 is not None else None
    a, b, dead = servers[0].port, servers[1].port, _dead_port(HOST)
    try:
        with member.running_member(
            "gateway", tmp_path_factory.mktemp("member-gateway"), nodes=1
        ) as cluster:
            for namespace in ("demo", "other"):
                cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
            for obj in _objects(a, b, dead, six):
                _create(cluster, obj)
            yield Backends(cluster=cluster, a=a, b=b, dead=dead)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@dataclass
class Rig:
    part: GatewayPart
    cloud: TunnelConnection
    registry: prometheus_client.CollectorRegistry

    def count(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"edge_agent_gateway_{name}_total", labels) or 0.0


@contextlib.asynccontextmanager
async def gateway(
    backends: Backends, tmp_path: Path, *, kubeconfig: Path | None = None, **options: Any
) -> AsyncIterator[Rig]:
    """A GatewayPart watching the member, behind a TunnelClient's handler in a tunnel pair.

    As the member's admin, unless ``kubeconfig`` says otherwise.
    """
    settings = GatewaySettings(enabled=True, **{"services": ("demo/*",), **options})
    cluster = ClusterSettings(kubeconfig=kubeconfig or backends.cluster.kubeconfig)
    registry = prometheus_client.CollectorRegistry()
    part = GatewayPart(
        credentials=credentials.load(cluster), cluster=cluster, settings=settings, registry=registry
    )
    client = TunnelClient(
        data_dir=tmp_path,
        settings=TunnelClientSettings(),
        join_settings=JoinSettings(),
        registry=registry,
    )
    client.builtin_prefixes[PREFIX] = part.serve

    async def synced() -> bool:
        return part.synced

    async with asyncio.TaskGroup() as group:
        watching = group.create_task(part.run(), name="test.gateway")
        try:
            await eventually_async(synced, what="the gateway's informers listed", within=60)
            async with tunnel_pair(client_handler=client._on_stream) as pair:
                yield Rig(part=part, cloud=pair.server, registry=registry)
        finally:
            watching.cancel()


async def fetch(cloud: TunnelConnection, target: str, path: str = "/") -> str:
    """One HTTP/1.1 GET through a stream to ``target``: the answer's body."""
    stream = await cloud.open_stream(target)
    await stream.write(f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
    stream.end()
    raw = b""
    while chunk := await stream.read():
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), raw
    return body.decode()


async def refusal(cloud: TunnelConnection, target: str) -> tuple[ErrorCode, str]:
    with pytest.raises(StreamRejectedError) as caught:
        await cloud.open_stream(target)
    return caught.value.code, str(caught.value)


async def test_requests_reach_both_endpoints_round_robin(
    backends: Backends, tmp_path: Path
) -> None:
    async with gateway(backends, tmp_path) as rig:
        answers = [await fetch(rig.cloud, "service/demo/web:80", f"/{i}") for i in range(6)]
        servers = [answer.split()[0] for answer in answers]
        assert sorted(servers) == ["a", "a", "a", "b", "b", "b"], answers
        assert all(servers[i] != servers[i + 1] for i in range(5)), servers  # alternating
        assert [answer.split()[1] for answer in answers] == [f"/{i}" for i in range(6)]
        assert rig.count("streams", service="demo/web", result="accepted") == 6
        status = rig.part.status()
        assert status["services"]["demo/web"] == {"80": 2, "81": 0}  # type: ignore[index]
        assert status["synced"] is True
        await eventually_async(
            lambda: asyncio.sleep(0, rig.part.open_streams), lambda n: n == 0, what="all closed"
        )
        assert "other/hidden" not in status["services"]  # type: ignore[operator]


async def test_an_endpoint_made_not_ready_is_no_longer_used(
    backends: Backends, tmp_path: Path
) -> None:
    cluster = backends.cluster
    path = "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices/web-2"
    async with gateway(backends, tmp_path) as rig:

        async def ready_counts() -> dict[str, int]:
            return rig.part.ready_counts()["demo/web"]

        try:
            cluster.api("PATCH", path, {"endpoints": [_endpoint(str(HOST), ready=False)]})
            await eventually_async(
                ready_counts, lambda c: c["80"] == 1, what="b seen not ready", within=60
            )
            answers = [await fetch(rig.cloud, "service/demo/web:80") for _ in range(4)]
            assert [answer.split()[0] for answer in answers] == ["a"] * 4
            # Terminating counts as not ready, even with ready missing.
            terminating = {"addresses": [HOST], "conditions": {"terminating": True}}
            cluster.api("PATCH", path, {"endpoints": [terminating]})
            await eventually_async(
                lambda: asyncio.sleep(0, rig.part.slices.get("demo", "web-2")),
                lambda s: s is not None and "terminating" in str(s["endpoints"]),
                what="the terminating endpoint seen",
                within=60,
            )
            answers = [await fetch(rig.cloud, "service/demo/web:80") for _ in range(4)]
            assert [answer.split()[0] for answer in answers] == ["a"] * 4
        finally:
            cluster.api("PATCH", path, {"endpoints": [_endpoint(str(HOST), ready=True)]})
        await eventually_async(
            ready_counts, lambda c: c["80"] == 2, what="b ready again", within=60
        )
        answers = [await fetch(rig.cloud, "service/demo/web:80") for _ in range(2)]
        assert sorted(answer.split()[0] for answer in answers) == ["a", "b"]


async def test_a_dead_endpoint_is_ejected_and_requests_still_succeed(
    backends: Backends, tmp_path: Path
) -> None:
    async with gateway(backends, tmp_path, eject_after=2, eject_base=300.0, eject_max=600.0) as rig:
        answers = [await fetch(rig.cloud, "service/demo/flaky:80") for _ in range(10)]
        assert [answer.split()[0] for answer in answers] == ["a"] * 10
        # Round robin put the dead endpoint first every other request, twice: then ejected.
        assert rig.count("dial_failures", service="demo/flaky") == 2
        assert rig.count("ejections", service="demo/flaky") == 1
        assert rig.count("streams", service="demo/flaky", result="accepted") == 10
        ejected = rig.part.status()["ejected"]
        assert list(ejected) == [f"{HOST}:{backends.dead}"]  # type: ignore[call-overload]


async def test_no_endpoint_taking_connections_is_refused_with_the_last_error(
    backends: Backends, tmp_path: Path
) -> None:
    async with gateway(backends, tmp_path) as rig:
        code, text = await refusal(rig.cloud, "service/demo/gone:80")
        assert code is ErrorCode.TARGET_UNREACHABLE
        assert "could not connect to 1 of 1 ready endpoints of demo/gone:80" in text
        assert f"(last: {HOST}:{backends.dead}: connection refused)" in text, text
        assert rig.count("streams", service="demo/gone", result="unreachable") == 1


async def test_ipv6_endpoints_are_dialled(backends: Backends, tmp_path: Path) -> None:
    assert HOST6 is not None, "no non-loopback IPv6 address on this machine (`ip -6 addr add`)"
    async with gateway(backends, tmp_path) as rig:
        assert (await fetch(rig.cloud, "service/demo/six:80")).startswith("six ")
        assert rig.part.ready_counts()["demo/six"] == {"80": 1}


async def test_services_not_in_the_allow_list_are_refused(
    backends: Backends, tmp_path: Path
) -> None:
    async with gateway(backends, tmp_path, services=("demo/web",)) as rig:
        for target in ("service/other/hidden:80", "service/demo/flaky:80"):
            code, text = await refusal(rig.cloud, target)
            assert code is ErrorCode.TARGET_NOT_ALLOWED
            assert "not in this agent's allow-list ([cluster.gateway] services)" in text
        assert rig.count("streams", service="-", result="not_allowed") == 2
        assert (await fetch(rig.cloud, "service/demo/web:80")).split()[0] in ("a", "b")
        assert list(rig.part.status()["services"]) == ["demo/web"]  # type: ignore[call-overload]


async def test_an_empty_allow_list_allows_nothing(backends: Backends, tmp_path: Path) -> None:
    async with gateway(backends, tmp_path, services=()) as rig:
        code, _ = await refusal(rig.cloud, "service/demo/web:80")
        assert code is ErrorCode.TARGET_NOT_ALLOWED


@pytest.mark.parametrize(
    ("target", "reason", "result"),
    [
        ("service/demo/empty:80", "no ready endpoints for demo/empty:80", "no_endpoints"),
        ("service/demo/web:81", "no ready endpoints for demo/web:81", "no_endpoints"),
        ("service/demo/web:82", "service demo/web has no port 82", "no_port"),
        ("service/demo/nope:80", "no service demo/nope in this cluster", "no_service"),
    ],
)
async def test_what_cannot_be_served_is_refused_with_the_reason(
    backends: Backends, tmp_path: Path, target: str, reason: str, result: str
) -> None:
    async with gateway(backends, tmp_path) as rig:
        code, text = await refusal(rig.cloud, target)
        assert code is ErrorCode.TARGET_UNREACHABLE
        assert reason in text
        service = target.removeprefix("service/").split(":")[0]
        label = "-" if result == "no_service" else service
        assert rig.count("streams", service=label, result=result) == 1


async def test_bad_target_names_are_refused(backends: Backends, tmp_path: Path) -> None:
    bad = [
        "service/demo/web",
        "service/demo/web:http",
        "service/Demo/web:80",
        "service/demo/web:0",
        "service/demo/web:80/x",
        "service/demo//web:80",
        "service/" + "a" * 64 + "/web:80",
    ]
    async with gateway(backends, tmp_path) as rig:
        for target in bad:
            code, text = await refusal(rig.cloud, target)
            assert code is ErrorCode.TARGET_NOT_ALLOWED, target
            assert "expected service/<namespace>/<name>:<port>" in text, text
        assert rig.count("streams", service="-", result="bad_target") == len(bad)
        # The session is unharmed: a good stream still works.
        assert (await fetch(rig.cloud, "service/demo/web:80")).split()[0] in ("a", "b")


async def test_streams_beyond_the_limit_are_refused(backends: Backends, tmp_path: Path) -> None:
    async with gateway(backends, tmp_path, max_streams=1) as rig:
        held = await rig.cloud.open_stream("service/demo/web:80")  # open until we end it
        code, text = await refusal(rig.cloud, "service/demo/web:80")
        assert code is ErrorCode.REFUSED_STREAM
        assert "max_streams" in text
        assert rig.part.open_streams == 1
        held.end()
        while await held.read():
            pass
        await eventually_async(
            lambda: asyncio.sleep(0, rig.part.open_streams), lambda n: n == 0, what="released"
        )
        assert (await fetch(rig.cloud, "service/demo/web:80")).split()[0] in ("a", "b")


def _can(cluster: member.MemberCluster, verb: str, resource: str) -> str:
    done = cluster.kubectl("auth", "can-i", verb, resource, f"--as={AGENT}", "-A", check=False)
    return done.stdout.strip()


async def test_the_agents_packaged_rbac_is_what_the_gateway_needs(
    backends: Backends, tmp_path: Path
) -> None:
    """The cluster agent's own service account, with the manifests' RBAC, runs the gateway."""
    cluster = backends.cluster
    for name in ("00-namespace.yaml", "10-rbac.yaml"):
        cluster.kubectl("apply", "-f", str(PACKAGING / name))
    assert _can(cluster, "list", "endpointslices.discovery.k8s.io") == "no"
    assert _can(cluster, "watch", "services") == "no"
    cluster.kubectl("apply", "-f", str(PACKAGING / "30-gateway-rbac.yaml"))
    for verb, resource in itertools.product(
        ("list", "watch"), ("services", "endpointslices.discovery.k8s.io")
    ):
        eventually(
            functools.partial(_can, cluster, verb, resource),
            lambda answer: answer == "yes",
            what=f"the agent may {verb} {resource}",
            within=60,
        )
    for verb in ("create", "update", "delete"):
        assert _can(cluster, verb, "endpointslices.discovery.k8s.io") == "no"  # read only
    token = cluster.kubectl(
        "create", "token", "cluster-agent", "-n", "edgefleet-system", "--duration=1h"
    ).stdout.strip()
    kubeconfig = write_kubeconfig(
        tmp_path / "agent-kubeconfig", server=cluster.url, token=token, ca=cluster.plane.ca_path
    )
    async with gateway(backends, tmp_path, kubeconfig=kubeconfig) as rig:
        assert (await fetch(rig.cloud, "service/demo/web:80")).split()[0] in ("a", "b")
        assert rig.part.status()["last_error"] is None


async def test_the_daemon_wires_the_gateway_only_when_enabled(
    backends: Backends, tmp_path: Path
) -> None:
    def start(gateway: GatewaySettings) -> tuple[daemon._ClusterPart, TunnelClient]:
        registry = prometheus_client.CollectorRegistry()
        client = TunnelClient(
            data_dir=tmp_path,
            settings=TunnelClientSettings(),
            join_settings=JoinSettings(),
            registry=registry,
        )
        part = daemon._ClusterPart.start(
            ClusterSettings(kubeconfig=backends.cluster.kubeconfig),
            client,
            registry,
            data_dir=tmp_path,
            works=WorkSettings(),
            elastic=ElasticSettings(),
            gateway=gateway,
        )
        return part, client

    off, client = start(GatewaySettings(services=("demo/*",)))
    assert off.gateway is None
    assert client.builtin_prefixes == {}
    assert "gateway" not in off.status()
    off.target.close()

    part, client = start(GatewaySettings(enabled=True, services=("demo/web",)))
    assert part.gateway is not None
    assert client.builtin_prefixes == {PREFIX: part.gateway.serve}
    assert "service/*" in client.status()["targets"]  # type: ignore[operator]
    await part.api.open()
    try:
        async with asyncio.TaskGroup() as group:
            tasks = part.start_tasks(group, {}, NodeStatusSettings())
            assert "agent.cluster-gateway" in {task.get_name() for task in tasks}
            gateway = part.gateway

            async def status() -> object:
                return part.status()["gateway"]

            seen = await eventually_async(
                status,
                lambda s: isinstance(s, dict) and s["synced"] is True,
                what="the wired gateway listed",
                within=60,
            )
            assert seen["services"] == {"demo/web": {"80": 2, "81": 0}}  # type: ignore[index]
            assert seen["allowed"] == ["demo/web"]  # type: ignore[index]
            assert gateway.synced
            for task in tasks:
                task.cancel()
    finally:
        part.target.close()
        await part.api.close()


class _KeepAlive:
    """An HTTP/1.1 server that keeps connections: counts them and the requests it answered.

    ``close_after`` closes each connection after its answer without saying so (as a server
    whose keep-alive timeout fired), so the agent finds kept connections closed.
    """

    def __init__(
        self, *, chunked: bool = False, close_after: bool = False, silent: bool = False
    ) -> None:
        self.silent = silent
        """Never answer (read requests and wait)."""
        self.connections = 0
        self.requests: list[str] = []
        self.closed = 0
        self.chunked = chunked
        self.close_after = close_after

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                path = head.split(b" ", 2)[1].decode()
                self.requests.append(path)
                if self.silent:
                    continue
                body = f"keep {path}".encode()
                if self.chunked:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + f"{len(body):x}\r\n".encode()
                        + body
                        + b"\r\n0\r\n\r\n"
                    )
                else:
                    writer.write(
                        f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
                    )
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()


async def fetch11(cloud: TunnelConnection, target: str, path: str) -> bytes:
    """One GET as the gateway writes it (HTTP/1.1, ``Connection: close``): the whole answer."""
    stream = await cloud.open_stream(target)
    await stream.write(f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
    raw = b""
    while chunk := await stream.read():  # the agent ends the stream when the answer is whole
        raw += chunk
    return raw


@contextlib.asynccontextmanager
async def keep_service(backends: Backends, name: str, server: _KeepAlive) -> AsyncIterator[None]:
    assert HOST is not None
    listener = await asyncio.start_server(server.handle, HOST, 0)
    port = listener.sockets[0].getsockname()[1]
    _create(backends.cluster, _service(name, [{"port": 80, "targetPort": 8080}]))
    _create(backends.cluster, _slice(name, name, [_endpoint(HOST)], port=port))
    try:
        yield
    finally:
        listener.close()
        await listener.wait_closed()


async def test_connections_to_an_endpoint_are_kept_and_reused(
    backends: Backends, tmp_path: Path
) -> None:
    server = _KeepAlive()
    async with keep_service(backends, "keep", server), gateway(backends, tmp_path) as rig:
        target = "service/demo/keep:80"
        await eventually_async(
            lambda: asyncio.sleep(0, rig.part.ready_counts().get("demo/keep")),
            lambda counts: counts == {"80": 1},
            what="the agent sees demo/keep's endpoint",
        )
        answers = [await fetch11(rig.cloud, target, f"/{i}") for i in range(5)]
        assert [a.rpartition(b"\r\n\r\n")[2] for a in answers] == [
            f"keep /{i}".encode() for i in range(5)
        ]
        assert (server.connections, server.requests) == (1, [f"/{i}" for i in range(5)])
        assert rig.count("backend_connections", how="dialled") == 1
        assert rig.count("backend_connections", how="reused") == 4
        assert rig.part.pool.idle == 1

        # The endpoint leaves its Service: its kept connection is closed, not left idle.
        backends.cluster.api(
            "DELETE", "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices/keep"
        )
        await eventually_async(
            lambda: asyncio.sleep(0, rig.part.ready_counts().get("demo/keep")),
            lambda counts: counts == {"80": 0},
            what="the agent sees demo/keep without endpoints",
        )
        await eventually_async(
            lambda: asyncio.sleep(0, server.closed), lambda n: n == 1, what="the kept one closed"
        )
        assert rig.part.pool.idle == 0


async def test_chunked_answers_keep_the_connection_and_closed_ones_are_replaced(
    backends: Backends, tmp_path: Path
) -> None:
    chunked, closing = _KeepAlive(chunked=True), _KeepAlive(close_after=True)
    async with (
        keep_service(backends, "chunked", chunked),
        keep_service(backends, "closing", closing),
        gateway(backends, tmp_path) as rig,
    ):
        await eventually_async(
            lambda: asyncio.sleep(0, rig.part.ready_counts()),
            lambda counts: (
                counts.get("demo/chunked") == {"80": 1} and counts.get("demo/closing") == {"80": 1}
            ),
            what="the agent sees both endpoints",
        )
        for i in range(4):
            raw = await fetch11(rig.cloud, "service/demo/chunked:80", f"/{i}")
            assert raw.endswith(f"keep /{i}".encode() + b"\r\n0\r\n\r\n"), raw
        assert chunked.connections == 1
        # A server that closes every connection after its answer without a word: each request
        # is answered once, on a new connection when the kept one is found closed.
        for i in range(4):
            raw = await fetch11(rig.cloud, "service/demo/closing:80", f"/{i}")
            assert raw.endswith(f"keep /{i}".encode()), raw
        assert closing.requests == [f"/{i}" for i in range(4)]
        assert closing.connections == 4


async def test_a_stream_the_gateway_resets_closes_a_connection_left_unanswered(
    backends: Backends, tmp_path: Path
) -> None:
    silent = _KeepAlive(silent=True)
    async with keep_service(backends, "silent", silent), gateway(backends, tmp_path) as rig:
        await eventually_async(
            lambda: asyncio.sleep(0, rig.part.ready_counts().get("demo/silent")),
            lambda counts: counts == {"80": 1},
            what="the agent sees demo/silent's endpoint",
        )
        stream = await rig.cloud.open_stream("service/demo/silent:80")
        await stream.write(b"GET /wait HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        await eventually_async(
            lambda: asyncio.sleep(0, silent.requests), lambda seen: seen == ["/wait"], what="sent"
        )
        stream.reset(ErrorCode.CANCEL, "the gateway's timeout")  # as the gateway's watchdog
        await eventually_async(
            lambda: asyncio.sleep(0, (silent.closed, rig.part.open_streams)),
            lambda seen: seen == (1, 0),
            what="the agent closed the unanswered connection and let the stream go",
        )
        assert rig.part.pool.idle == 0
