"""A real tunnel server, two real joined agents, and an aiohttp target behind them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.typedefs import Handler

from tests.harness.daemons import Agent, Server
from tests.harness.procs import free_port
from tests.harness.waiting import eventually

STREAM_GATE = web.AppKey("stream_gate", asyncio.Event)


@dataclass
class InFlight:
    """Requests the target is still handling: a stream torn down upstream must end here too."""

    count: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def idle(self) -> None:
        """Return once no request is in flight (callers bound the wait with asyncio.timeout)."""
        while self.count:
            self.changed.clear()
            await self.changed.wait()


IN_FLIGHT = web.AppKey("in_flight", InFlight)


@web.middleware
async def count_in_flight(request: web.Request, handler: Handler) -> web.StreamResponse:
    in_flight = request.app[IN_FLIGHT]
    in_flight.count += 1
    try:
        return await handler(request)
    finally:
        in_flight.count -= 1
        in_flight.changed.set()


async def hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello from the target")


async def echo_request(request: web.Request) -> web.Response:
    """What the target saw: proves which headers crossed the proxy."""
    return web.json_response(
        {
            "path": request.path_qs,
            "authorization": request.headers.get("Authorization"),
            "host": request.headers.get("Host"),
        }
    )


async def sha256(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "bytes": size})


async def stream(request: web.Request) -> web.StreamResponse:
    """First chunk, then wait until the test saw it: only a streaming proxy gets past this."""
    gate = request.app[STREAM_GATE]
    reply = web.StreamResponse()
    await reply.prepare(request)
    await reply.write(b"first\n")
    await gate.wait()
    await reply.write(b"second\n")
    await reply.write_eof()
    return reply


async def bulk(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("bytes", "0"))
    reply = web.StreamResponse()
    reply.content_length = size
    await reply.prepare(request)
    chunk = b"z" * (1024 * 1024)
    while size > 0:
        await reply.write(chunk[: min(size, len(chunk))])
        size -= len(chunk)
    await reply.write_eof()
    return reply


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str(f"echo: {message.data}")
    return ws


@dataclass
class Target:
    port: int
    gate: asyncio.Event
    in_flight: InFlight


@pytest_asyncio.fixture
async def target() -> AsyncIterator[Target]:
    app = web.Application(client_max_size=2 * 1024**3, middlewares=[count_in_flight])
    gate = asyncio.Event()
    app[STREAM_GATE] = gate
    in_flight = InFlight()
    app[IN_FLIGHT] = in_flight
    app.router.add_get("/hello", hello)
    app.router.add_route("*", "/echo-request", echo_request)
    app.router.add_post("/sha256", sha256)
    app.router.add_get("/stream", stream)
    app.router.add_get("/bulk", bulk)
    app.router.add_get("/ws", websocket)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", TARGET_PORT).start()
    yield Target(port=TARGET_PORT, gate=gate, in_flight=in_flight)
    gate.set()
    # A reset that reaches the target after its loop closed leaves a transport whose
    # connection_lost never ran (an unraisable ResourceWarning): let teardown finish first.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10.0):
            await in_flight.idle()
    await runner.cleanup()
    await asyncio.sleep(0.1)


@dataclass
class System:
    server: Server
    agents: dict[str, Agent]
    baseline_tasks: float = 0.0
    """The server's asyncio task count right after the agents connected."""
    agent_baseline_tasks: dict[str, float] = field(default_factory=dict)


TARGET_PORT = free_port()
"""Fixed for the module so the agents' allow-lists (written at start) point at the target."""


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("system")
    server = Server(workdir=workdir)
    server.start()
    agents: dict[str, Agent] = {}
    try:
        for name in ("edge-a", "edge-b"):
            agent = Agent(
                name=name,
                workdir=workdir,
                server=server,
                targets={"web": f"127.0.0.1:{TARGET_PORT}", "closed": f"127.0.0.1:{free_port()}"},
            )
            agent.join()
            agent.start()
            agents[name] = agent
        for agent in agents.values():
            agent.wait_connected()
        # Steady state: each agent holds its node status stream (and its server-side task).
        eventually(
            lambda: server.metric("tunnel_server_streams"),
            lambda streams: streams >= len(agents),
            what="each agent's status stream open",
        )
        yield System(
            server=server,
            agents=agents,
            baseline_tasks=server.metric("tunnel_server_asyncio_tasks"),
            agent_baseline_tasks={
                name: agent.metric("edge_agent_asyncio_tasks") for name, agent in agents.items()
            },
        )
    finally:
        for agent in agents.values():
            agent.stop()
        server.stop()
