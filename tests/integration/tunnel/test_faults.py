"""Failures and attacks: kill -9 either side, revocation, stolen names, bad bytes."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from edge_agent.identity import Identity
from tests.harness.daemons import Agent, Server
from tests.harness.waiting import eventually_async
from tests.integration.tunnel.conftest import System, Target


async def get_hello(system: System, node: str) -> tuple[int, str]:
    url = f"{system.server.url}/api/v1/nodes/{node}/proxy/web/hello"
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=system.server.ssl_context())
        ) as http,
        http.get(url, headers={"Authorization": f"Bearer {system.server.admin_token}"}) as answer,
    ):
        return answer.status, await answer.text()


async def eventually(system: System, node: str, status: int, *, within: float = 30.0) -> str:
    deadline = time.monotonic() + within
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        last = await get_hello(system, node)
        if last[0] == status:
            return last[1]
        await asyncio.sleep(0.1)
    pytest.fail(f"{node}: wanted {status}, last answer {last}")


async def test_agent_killed_and_restarted(system: System, target: Target) -> None:
    agent = system.agents["edge-a"]
    assert agent.process is not None
    agent.process.kill()
    body = await eventually(system, "edge-a", 503)
    assert "no tunnel session" in body
    assert (await get_hello(system, "edge-b"))[0] == 200, "the other node is unaffected"
    agent.start()
    agent.wait_connected()
    assert await eventually(system, "edge-a", 200) == "hello from the target"
    assert target.port


async def test_server_killed_and_restarted(system: System, target: Target) -> None:
    server = system.server
    assert server.process is not None
    server.process.kill()
    server.start()  # same port, same data dir: agents come back by themselves
    for name in system.agents:
        assert await eventually(system, name, 200) == "hello from the target"
    assert server.metric("tunnel_server_sessions") == 2
    assert target.port


async def test_garbage_and_oversized_frames_end_only_that_session(
    system: System, target: Target
) -> None:
    identity = Identity.load(system.agents["edge-b"].data_dir)
    for payload in (b"\x00garbage that is no frame", b"\x01\x05" + b"\xff" * 200_000):
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                system.server.url + "/tunnel", ssl=identity.client_ssl_context(), max_msg_size=0
            ) as ws,
        ):
            await ws.send_bytes(payload)
            closed = await ws.receive(timeout=10)
            while closed.type is aiohttp.WSMsgType.BINARY:  # the server's HELLO, GO_AWAY
                closed = await ws.receive(timeout=10)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    # The impostor session replaced edge-b's real one; the real agent reconnects by itself.
    assert await eventually(system, "edge-b", 200) == "hello from the target"
    assert system.server.metric("tunnel_server_frame_errors_total") >= 1
    assert await eventually(system, "edge-a", 200) == "hello from the target"
    assert target.port


async def test_no_certificate_no_tunnel(system: System) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(system.server.url + "/tunnel", ssl=system.server.ssl_context())
    assert refused.value.status == 401


async def test_a_node_cannot_take_another_nodes_name(system: System, target: Target) -> None:
    """Claiming edge-b in local files changes nothing: the certificate says edge-a."""
    real = system.agents["edge-a"]
    impostor = Agent(name="edge-a-copy", workdir=real.workdir, server=system.server, targets={})
    shutil.copytree(real.data_dir, impostor.data_dir)
    meta_path = impostor.data_dir / "identity.json"
    meta = json.loads(meta_path.read_text())
    meta["name"] = "edge-b"
    meta_path.write_text(json.dumps(meta))
    # Two processes with one certificate would keep replacing each other's session; let the
    # impostor be the only holder of edge-a's certificate while we look.
    real.stop()
    impostor.start()
    try:
        impostor.wait_connected()
        # edge-b's session is still the real edge-b, which serves the target
        assert (await get_hello(system, "edge-b"))[0] == 200
        # the impostor holds edge-a's session (its certificate says edge-a); it serves no targets
        status, _ = await get_hello(system, "edge-a")
        assert status == 403
    finally:
        impostor.stop()
        real.start()
    real.wait_connected()
    assert await eventually(system, "edge-a", 200) == "hello from the target"
    assert target.port


async def test_revoked_node_is_cut_off_at_once(system: System, target: Target) -> None:
    system.server.cli("nodes", "revoke", "edge-b")
    body = await eventually(system, "edge-b", 503, within=5.0)
    assert "revoked" in body or "no tunnel session" in body
    agent = system.agents["edge-b"]
    assert agent.process is not None
    wanted = "refused this node's certificate (HTTP 401)"

    async def tail() -> str:
        assert agent.process is not None
        return agent.process.tail()

    # The agent retries after its backoff (at most 2 s here).
    await eventually_async(tail, lambda text: wanted in text, what=f"{wanted!r} in the agent log")
    assert (await get_hello(system, "edge-a"))[0] == 200
    assert target.port


async def test_a_client_that_never_finishes_its_request_is_dropped(tmp_path: Path) -> None:
    server = Server(workdir=tmp_path, extra_args=("--idle-timeout", "1s"))
    server.start()
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=server.ssl_context(), server_hostname="127.0.0.1"
        )
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        await writer.drain()
        async with asyncio.timeout(15):  # guard only: the server closes after about 1 s
            assert await reader.read() == b""
        writer.close()
        status, _ = server.get("/healthz")
        assert status == 200, "the server itself is fine"
    finally:
        server.stop()
