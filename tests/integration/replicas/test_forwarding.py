"""Forwarding between replicas: two real ``tunnel-server run --store kubernetes`` processes.

An agent held by replica one is reached through replica two: the node proxy (a plain GET and
a WebSocket upgrade to a service on the node), the cluster proxy (``kubectl get`` and a
``kubectl get -w`` watch that streams a change made on the member). The peer route takes a
replica certificate only: an agent's certificate is refused there, and a replica's at the
agents' ``/tunnel``. When the holding replica dies, a request through the other is answered
503 ``agent_reconnecting`` within seconds, and works again once the agent came back on the
live replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

from tests.harness import kube
from tests.harness.daemons import Agent
from tests.harness.faultproxy import FaultProxy
from tests.harness.ha import Replica
from tests.harness.procs import free_port
from tests.harness.waiting import eventually
from tests.integration.clusters.members import kubectl_path, proxy_kubeconfig, register, run_kubectl
from tests.integration.replicas.test_server import replicas
from tunnel_server.identity.pki import CertificateAuthority

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any

__all__ = ["replicas"]


class Background:
    """An event loop in a thread, for the test's own servers (the test itself is synchronous)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return asyncio.run_coroutine_threadsafe(work(), self.loop).result(timeout=30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


async def _hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello from the node")


BIG = bytes(range(256)) * (64 * 1024)
"""16 MiB: many times the per-stream window (256 KiB) of both the peer link and the agent's."""


async def _big(_request: web.Request) -> web.Response:
    return web.Response(body=BIG, content_type="application/octet-stream")


async def _digest(request: web.Request) -> web.Response:
    """The SHA-256 and size of the request body, read as it streams in."""
    digest, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "size": size})


async def _echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is aiohttp.WSMsgType.TEXT:
            await ws.send_str("echo " + message.data)
    return ws


@pytest.fixture
def loop_thread() -> Iterator[Background]:
    background = Background()
    try:
        yield background
    finally:
        background.stop()


@pytest.fixture
def web_target(loop_thread: Background) -> Iterator[int]:
    """A service on the "node": ``/hello`` and a WebSocket echo at ``/ws``; its port."""
    port = free_port()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/hello", _hello)
    app.router.add_get("/ws", _echo)
    app.router.add_get("/big", _big)
    app.router.add_post("/digest", _digest)
    runner = web.AppRunner(app)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    async def stop() -> None:
        # The agent's connections may still be open (a WebSocket the tunnel half-closed):
        # closed here, not left to the garbage collector's ResourceWarning.
        if runner.server is not None:
            for connection in list(runner.server.connections):
                connection.force_close()
        await runner.cleanup()

    loop_thread.call(start)
    try:
        yield port
    finally:
        loop_thread.call(stop)


def proxied(replica: Replica, path: str) -> tuple[int, dict[str, Any]]:
    code, body = replica.get(path, token=replica.admin_token)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"text": body.decode(errors="replace")}
    return code, answer if isinstance(answer, dict) else {"value": answer}


def peer_streams(replica: Replica, direction: str, result: str) -> float:
    _, body = replica.get("/metrics")
    prefix = f'tunnel_server_peer_streams_total{{direction="{direction}",result="{result}"}} '
    for line in body.decode().splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


async def _ws_echo(replica: Replica, path: str) -> str:
    context = replica.ssl_context()
    headers = {"Authorization": f"Bearer {replica.admin_token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(replica.url + path, headers=headers, ssl=context) as ws,
    ):
        await ws.send_str("through two replicas")
        message = await ws.receive(timeout=30)
        await ws.close()
        return str(message.data)


async def _upgrade_status(url: str, context: ssl.SSLContext) -> int:
    """The status of a WebSocket upgrade to ``url`` with ``context``'s client certificate."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, ssl=context) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as error:
            return error.status


def client_context(replica: Replica, cert: Path, key: Path) -> ssl.SSLContext:
    context = replica.ssl_context()
    context.load_cert_chain(cert, key)
    return context


def held_by(replica: Replica, node: str) -> bool:
    """Whether ``replica``'s node proxy reaches ``node`` (a GET through the proxy)."""
    code, _ = proxied(replica, f"/api/v1/nodes/{node}/proxy/web/hello")
    return code == 200


def test_node_and_cluster_through_the_replica_not_holding_them(
    replicas: list[Replica], web_target: int, loop_thread: Background, tmp_path: Path
) -> None:
    one, two = replicas
    agent = Agent(
        name="edge-fw", workdir=tmp_path, server=one, targets={"web": f"127.0.0.1:{web_target}"}
    )
    agent.join()
    agent.start()
    plane = kube.launch("member-fw", tmp_path / "member-fw")
    member = None
    try:
        agent.wait_connected()
        # Through replica two once the watch shows one holding the agent.
        code, answer = eventually(
            lambda: proxied(two, "/api/v1/nodes/edge-fw/proxy/web/hello"),
            lambda got: got[0] == 200,
            what="the node proxy of replica two reaches the agent held by replica one",
            within=30,
        )
        assert answer == {"text": "hello from the node"}
        assert one.get("/api/v1/nodes/edge-fw/proxy/web/hello", token=one.admin_token)[0] == 200
        assert peer_streams(two, "out", "accepted") >= 1
        assert peer_streams(one, "in", "accepted") >= 1
        assert peer_streams(one, "out", "accepted") == 0  # one holds it: never forwarded

        # Bodies many windows long, both ways: the credit of both streams paces the copy.
        code, body = two.get("/api/v1/nodes/edge-fw/proxy/web/big", token=two.admin_token)
        assert code == 200
        assert hashlib.sha256(body).digest() == hashlib.sha256(BIG).digest()
        upload = urllib.request.Request(  # noqa: S310 - our own server
            two.url + "/api/v1/nodes/edge-fw/proxy/web/digest",
            data=BIG[: 8 * 1024 * 1024],
            headers={"Authorization": f"Bearer {two.admin_token}"},
            method="POST",
        )
        with urllib.request.urlopen(upload, timeout=60, context=two.ssl_context()) as done:  # noqa: S310 - ours
            assert json.loads(done.read()) == {
                "sha256": hashlib.sha256(BIG[: 8 * 1024 * 1024]).hexdigest(),
                "size": 8 * 1024 * 1024,
            }

        # An upgrade (WebSocket) through the forwarded stream, both ways.
        echoed = loop_thread.call(lambda: _ws_echo(two, "/api/v1/nodes/edge-fw/proxy/web/ws"))
        assert echoed == "echo through two replicas"

        # A target the node does not serve: the agent's refusal, passed on unchanged.
        code, answer = proxied(two, "/api/v1/nodes/edge-fw/proxy/nothere/x")
        assert (code, answer["reason"]) == (403, "target_not_allowed"), answer

        # The cluster proxy: a member cluster whose agent is held by replica one.
        plane.wait_ready()
        member = register(one, plane, "member-fw", tmp_path)
        through_two = proxy_kubeconfig(tmp_path / "two.kubeconfig", two, "member-fw")
        listed = eventually(
            lambda: run_kubectl(through_two, "get", "namespaces", "-o", "name", check=False),
            lambda done: done.returncode == 0,
            what="kubectl through replica two reaches the member held by replica one",
            within=30,
        )
        assert "namespace/default" in listed.stdout.split()
        member.direct("create", "configmap", "made-before-the-watch", "-n", "default")
        watch = subprocess.Popen(
            [
                str(kubectl_path()),
                "--kubeconfig",
                str(through_two),
                "get",
                "configmaps",
                "-n",
                "default",
                "-w",
                "-o",
                "name",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(iter(watch.stdout.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        try:
            eventually(
                lambda: list(lines),
                lambda seen: "configmap/made-before-the-watch\n" in seen,
                what="the watch through replica two lists what is there",
                within=30,
            )
            member.direct("create", "configmap", "made-during-the-watch", "-n", "default")
            eventually(
                lambda: list(lines),
                lambda seen: "configmap/made-during-the-watch\n" in seen,
                what="the watch through replica two streams a change made on the member",
                within=30,
            )
        finally:
            watch.terminate()
            watch.communicate(timeout=10)
            reader.join(timeout=10)
    finally:
        if member is not None:
            member.agent.stop()
        agent.stop()
        plane.stop()


def test_peer_route_takes_replica_certificates_only(
    replicas: list[Replica], loop_thread: Background, tmp_path: Path
) -> None:
    one, _two = replicas
    agent = Agent(name="edge-forged", workdir=tmp_path, server=one)
    agent.join()
    meta = json.loads((agent.data_dir / "identity.json").read_text())
    agent_cert, agent_key = agent.data_dir / meta["cert_file"], agent.data_dir / meta["key_file"]
    peer_url = one.url.replace("https://", "wss://") + "/peer/v1/tunnel"
    tunnel_url = one.url.replace("https://", "wss://") + "/tunnel"

    # An agent's own (valid, current) certificate is no replica's.
    forged = client_context(one, agent_cert, agent_key)
    assert loop_thread.call(lambda: _upgrade_status(peer_url, forged)) == 401
    # No certificate at all.
    assert loop_thread.call(lambda: _upgrade_status(peer_url, one.ssl_context())) == 401

    # A replica certificate from the shared CA: taken at the peer route, refused at /tunnel.
    authority = CertificateAuthority.load(one.data_dir)
    issued = authority.issue_replica_certificate("replica-test", lifetime=600)
    cert, key = tmp_path / "replica.crt", tmp_path / "replica.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    replica_context = client_context(one, cert, key)
    assert loop_thread.call(lambda: _upgrade_status(peer_url, replica_context)) == 101
    assert loop_thread.call(lambda: _upgrade_status(tunnel_url, replica_context)) == 401

    _, metrics = one.get("/metrics")
    assert 'tunnel_server_peer_streams_total{direction="in",result="refused_link"} 2.0' in (
        metrics.decode()
    )


def test_holder_dies_the_request_fails_clearly_then_works_on_the_live_replica(
    replicas: list[Replica], web_target: int, loop_thread: Background, tmp_path: Path
) -> None:
    one, two = replicas
    switch = FaultProxy("127.0.0.1", one.port)  # the agents' load balancer: one, then two
    loop_thread.call(switch.start)
    agent = Agent(
        name="edge-move", workdir=tmp_path, server=one, targets={"web": f"127.0.0.1:{web_target}"}
    )
    agent.join()
    identity = agent.data_dir / "identity.json"
    meta = json.loads(identity.read_text())
    identity.write_text(json.dumps({**meta, "server": f"https://127.0.0.1:{switch.port}"}))
    agent.start()
    try:
        agent.wait_connected()
        eventually(
            lambda: held_by(two, "edge-move"),
            bool,
            what="replica two reaches the agent through replica one",
            within=30,
        )
        assert one.process is not None
        loop_thread.loop.call_soon_threadsafe(switch.cut)  # the balancer sees one die too
        one.process.kill()
        killed = time.monotonic()
        code, answer = proxied(two, "/api/v1/nodes/edge-move/proxy/web/hello")
        assert time.monotonic() - killed < 15  # at once, not after a timeout
        # One's Lease still looks alive (15 s), but the refused dial marks it dead on two:
        # its agent is reconnecting (two waited 2 s for it), retry soon.
        assert (code, answer.get("reason")) == (503, "agent_reconnecting"), answer
        assert "replica-one" in answer["detail"], answer

        switch.target = ("127.0.0.1", two.port)
        loop_thread.loop.call_soon_threadsafe(switch.restore)
        agent.wait_connected(timeout=60)
        code, answer = eventually(
            lambda: proxied(two, "/api/v1/nodes/edge-move/proxy/web/hello"),
            lambda got: got[0] == 200,
            what="the agent back on replica two is reached there",
            within=30,
        )
        assert answer == {"text": "hello from the node"}
    finally:
        agent.stop()
        with contextlib.suppress(Exception):
            loop_thread.call(switch.stop)


def test_a_node_revoked_through_one_replica_is_cut_off_by_the_replica_holding_it(
    replicas: list[Replica], tmp_path: Path
) -> None:
    one, two = replicas
    agent = Agent(name="edge-rev", workdir=tmp_path, server=one)
    agent.join()
    agent.start()
    try:
        agent.wait_connected()
        # Two reaches it through one (the agent's own refusal of an unknown target: 403).
        eventually(
            lambda: proxied(two, "/api/v1/nodes/edge-rev/proxy/nothere/x")[0],
            lambda code: code == 403,
            what="replica two reaches the agent held by replica one",
            within=30,
        )
        assert one.metric("tunnel_server_sessions") == 1.0
        two.cli("nodes", "revoke", "edge-rev")
        revoked = time.monotonic()
        eventually(
            lambda: one.metric("tunnel_server_sessions"),
            lambda sessions: sessions == 0.0,
            what="replica one cuts off the session of the node revoked through replica two",
            within=30,
        )
        # The store's watch moves one's revision, its tunnel endpoint rechecks its sessions
        # (every 0.5 s): seconds, not a lease duration or a certificate's lifetime.
        assert time.monotonic() - revoked < 10
        _code, answer = eventually(
            lambda: proxied(two, "/api/v1/nodes/edge-rev/proxy/nothere/x"),
            lambda got: got[0] == 503,
            what="replica two no longer reaches the revoked node",
            within=30,
        )
        assert answer["reason"] == "node_offline", answer
        assert one.metric("tunnel_server_sessions") == 0.0  # it did not come back
    finally:
        agent.stop()
