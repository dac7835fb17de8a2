"""Through the node proxy to a service on an edge node: real server, agents and target."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp
import pytest

from tests.harness.waiting import eventually_async
from tests.integration.tunnel.conftest import System, Target


def proxy_url(system: System, node: str, target: str, path: str) -> str:
    return f"{system.server.url}/api/v1/nodes/{node}/proxy/{target}/{path}"


def client(system: System) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {system.server.admin_token}"},
        connector=aiohttp.TCPConnector(ssl=system.server.ssl_context()),
    )


async def test_plain_request_on_each_node(system: System, target: Target) -> None:
    async with client(system) as http:
        for node in system.agents:
            async with http.get(proxy_url(system, node, "web", "hello")) as answer:
                assert answer.status == 200
                assert await answer.text() == "hello from the target"
    assert target.port


async def test_caller_credentials_do_not_reach_the_target(system: System, target: Target) -> None:
    async with (
        client(system) as http,
        http.get(proxy_url(system, "edge-a", "web", "echo-request?x=1&y=2")) as answer,
    ):
        seen = await answer.json()
    assert seen == {"path": "/echo-request?x=1&y=2", "authorization": None, "host": "web"}
    assert target.port


async def test_streaming_response_streams(system: System, target: Target) -> None:
    async with (
        client(system) as http,
        http.get(proxy_url(system, "edge-b", "web", "stream")) as answer,
    ):
        first = await answer.content.readline()
        assert first == b"first\n", "the first chunk arrives before the target finishes"
        target.gate.set()
        assert await answer.content.read() == b"second\n"


async def test_100_mb_upload_with_checksum(system: System, target: Target) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    expected = hashlib.sha256()
    for _ in range(100):
        expected.update(chunk)

    async def body() -> object:
        for _ in range(100):
            yield chunk

    async with (
        client(system) as http,
        http.post(proxy_url(system, "edge-a", "web", "sha256"), data=body()) as answer,
    ):
        assert answer.status == 200
        result = await answer.json()
        # The caller's connection filled the server's small TLS read buffer, so it holds the
        # large one now (tunnel_server/tunnel/tls_buffer.py); idle connections keep the small one.
        assert system.server.metric("tunnel_server_tls_large_read_buffers") >= 1
        assert system.server.metric("tunnel_server_tls_connections") >= 3  # 2 agents + caller
    assert result == {"sha256": expected.hexdigest(), "bytes": 100 * len(chunk)}
    assert target.port


async def test_100_mb_download(system: System, target: Target) -> None:
    size = 100 * 1024 * 1024
    received = 0
    async with (
        client(system) as http,
        http.get(proxy_url(system, "edge-b", "web", f"bulk?bytes={size}")) as answer,
    ):
        assert answer.status == 200
        async for data in answer.content.iter_any():
            received += len(data)
    assert received == size
    assert target.port


async def test_websocket_passes_through(system: System, target: Target) -> None:
    async with (
        client(system) as http,
        http.ws_connect(proxy_url(system, "edge-a", "web", "ws")) as ws,
    ):
        for text in ("one", "two", "three"):
            await ws.send_str(text)
            message = await ws.receive(timeout=10)
            assert message.data == f"echo: {text}"
    assert target.port


async def test_slow_reader_does_not_stall_another_stream(system: System, target: Target) -> None:
    """One client stops reading a large download; a second request on the same node works."""
    async with client(system) as http:
        stalled = await http.get(proxy_url(system, "edge-a", "web", "bulk?bytes=67108864"))
        await stalled.content.readexactly(1024)  # then never read again
        for _ in range(5):
            async with http.get(proxy_url(system, "edge-a", "web", "bulk?bytes=4194304")) as answer:
                assert len(await answer.read()) == 4194304
        stalled.close()
    await wait_no_streams(system)
    # The stalled download's reset crossed server and agent and ended the handler at the target.
    async with asyncio.timeout(10.0):
        await target.in_flight.idle()


@pytest.mark.parametrize(
    ("path", "token", "status", "code"),
    [
        ("/api/v1/nodes/edge-a/proxy/web/hello", "wrong.token", 401, "invalid_token"),
        ("/api/v1/nodes/nobody/proxy/web/hello", None, 404, "node_not_found"),
        ("/api/v1/nodes/edge-a/proxy/elsewhere/hello", None, 403, "target_not_allowed"),
        ("/api/v1/nodes/edge-a/proxy/closed/hello", None, 502, "target_unreachable"),
    ],
)
async def test_refusals_are_clear(
    system: System, path: str, token: str | None, status: int, code: str
) -> None:
    headers = {"Authorization": f"Bearer {token or system.server.admin_token}"}
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=system.server.ssl_context())
        ) as http,
        http.get(system.server.url + path, headers=headers) as answer,
    ):
        body = json.loads(await answer.read())
    assert answer.status == status
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert body["reason"] == code
    assert body["detail"]


async def wait_no_streams(system: System) -> None:
    """Stream teardown crosses three processes: wait until it is done."""

    async def streams() -> float:
        return system.server.metric("tunnel_server_streams")

    # What stays open is each agent's long-lived node status stream, one per agent.
    await eventually_async(
        streams,
        lambda open_: open_ == len(system.agents),
        what="one stream per agent (its status stream)",
        every=0.1,
    )


async def test_no_stream_or_task_leaks_after_all_that(system: System) -> None:
    await wait_no_streams(system)
    assert system.server.metric("tunnel_server_sessions") == 2

    # Every proxied exchange above started tasks (request body, upgrade pumps, stream
    # handlers); all of them must be gone. The scrape itself runs in one task.
    def counts() -> list[tuple[float, float]]:
        server = [(system.server.metric("tunnel_server_asyncio_tasks"), system.baseline_tasks)]
        agents = [
            (agent.metric("edge_agent_asyncio_tasks"), system.agent_baseline_tasks[name])
            for name, agent in system.agents.items()
        ]
        return server + agents

    async def task_counts() -> list[tuple[float, float]]:
        return counts()

    # Teardown crosses processes: pumps end a moment after the stream.
    await eventually_async(
        task_counts,
        lambda pairs: all(now <= baseline for now, baseline in pairs),
        what="task counts (now, baseline) back to their baselines",
        every=0.1,
    )


def test_no_secret_reaches_a_log(system: System) -> None:
    secrets = [system.server.admin_token, system.server.admin_token.partition(".")[2]]
    for agent in system.agents.values():
        assert agent.token is not None
        secrets += [agent.token, agent.token.partition(".")[2]]
    logs = [system.server.workdir / "tunnel-server.log"]
    logs += [system.server.workdir / f"agent-{name}.log" for name in system.agents]
    for path in logs:
        text = path.read_text()
        leaked = [s[:4] + "..." for s in secrets if s and s in text]
        assert not leaked, f"{path.name} contains secrets starting {leaked}"
    assert all(len(s) >= 16 for s in secrets if s), "the check looks for real secrets"
