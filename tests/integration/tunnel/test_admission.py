"""Admission control for reconnect storms, against a real server with both limits at 1.

* ``--max-session-setups 1``: while one agent session is being set up (request received, HELLO
  not yet exchanged) every other upgrade is answered 503 with ``Retry-After``; real agents wait
  as told, log it once at INFO, count it, and all connect once the way is free.
* ``--max-tls-handshakes 1``: while one TLS handshake runs, further connections wait before any
  TLS work; one whose client gave up meanwhile is closed without a handshake, and a connection
  that sends nothing holds no handshake slot.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import prometheus_client
import pytest
import pytest_asyncio

from edge_agent.identity import Identity
from tests.harness.daemons import Agent, Server
from tests.harness.waiting import eventually_async
from tunnel_server.tunnel.admission import Admission

HOLD_BUDGET = 8.0
"""Seconds the test may rely on one held set-up slot: the server ends a session without HELLO
after 10 s (``TunnelSettings.handshake_timeout``)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        workdir=tmp_path_factory.mktemp("admission"),
        extra_args=("--max-tls-handshakes", "1", "--max-session-setups", "1"),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def samples(text: str, name: str) -> dict[str, float]:
    """Every sample of metric ``name`` in a Prometheus text page, keyed by its labels."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name or key.startswith(name + "{"):
            found[key.removeprefix(name)] = float(value)
    return found


def server_samples(server: Server, name: str) -> dict[str, float]:
    _, body = server.get("/metrics")
    return samples(body.decode(), name)


def agent_busy(agent: Agent) -> float:
    url = f"http://127.0.0.1:{agent.local_api_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return 0.0  # not listening yet
    failures = samples(text, "edge_agent_tunnel_connect_failures_total")
    return failures.get('{reason="busy"}', 0.0)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_excess_upgrades_get_503_and_the_agents_still_all_connect(
    server: Server, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    holder = Agent(name="holder", workdir=tmp_path, server=server)
    holder.join()
    agents = [Agent(name=f"storm-{i}", workdir=tmp_path, server=server) for i in range(3)]
    for agent in agents:
        agent.join()
    refused_before = server_samples(server, "tunnel_server_session_refused_total").get(
        '{reason="busy"}', 0.0
    )
    context = Identity.load(holder.data_dir).client_ssl_context()
    # A real upgrade that never sends its HELLO holds the one set-up slot.
    held = await http.ws_connect(server.url + "/tunnel", ssl=context, autoping=False)
    held_at = time.monotonic()
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(server.url + "/tunnel", ssl=context)
        assert refused.value.status == 503
        assert refused.value.headers is not None
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 30

        handshakes = server_samples(server, "tunnel_server_tls_handshakes_total")
        for agent in agents:
            agent.start()

        async def busy() -> list[float]:
            return [agent_busy(agent) for agent in agents]

        # Within the budget of the held slot: after it, the server frees the slot itself.
        await eventually_async(
            busy,
            lambda counts: all(count >= 2 for count in counts),
            what="every agent told to wait twice (503 busy)",
            within=HOLD_BUDGET - (time.monotonic() - held_at),
            every=0.1,
        )
        # Each agent asked again over the TLS connection it kept: one handshake per agent
        # (and one for this request to /metrics), however many 503s.
        ok = '{result="ok"}'
        now = server_samples(server, "tunnel_server_tls_handshakes_total")
        assert now[ok] - handshakes[ok] <= len(agents) + 1
        assert server.metric("tunnel_server_sessions") == 1, (
            "only the holder got past the held slot"
        )
    finally:
        await held.close()
    try:
        for agent in agents:
            agent.wait_connected(timeout=30)
        assert server.metric("tunnel_server_sessions") == len(agents)
        refused_after = server_samples(server, "tunnel_server_session_refused_total")
        assert refused_after['{reason="busy"}'] >= refused_before + 1 + len(agents)
        for agent in agents:
            assert agent.process is not None
            log = agent.process.tail(200)
            assert "INFO    edge_agent.tunnel: server busy, retrying when it asked" in log
            assert "status=503" in log
            assert "HTTP 503" not in log, "a 503 with Retry-After is no warning"
        assert server.process is not None
        server_log = server.process.tail(400)
        assert "too many sessions being set up, answering 503 with Retry-After" in server_log
        assert "admitting sessions again" in server_log
    finally:
        for agent in agents:
            agent.stop()


def partial_client_hello(server: Server) -> socket.socket:
    """A client that started its TLS handshake and stalls: the handshake slot is taken."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # a record header promising 512 bytes, then 1
    return sock


async def get_healthz(http: aiohttp.ClientSession, server: Server) -> int:
    async with http.get(server.url + "/healthz", ssl=server.ssl_context()) as answer:
        return answer.status


async def test_handshakes_wait_for_a_slot_and_quitters_cost_no_handshake(
    server: Server, http: aiohttp.ClientSession
) -> None:
    dropped_before = server_samples(server, "tunnel_server_tls_dropped_total")
    failed_before = server_samples(server, "tunnel_server_tls_handshakes_total")
    stalled = partial_client_hello(server)
    try:
        await asyncio.sleep(0.3)  # its first bytes arrived: it holds the only slot
        waiting = asyncio.get_running_loop().create_task(get_healthz(http, server))
        await asyncio.sleep(1.0)
        assert not waiting.done(), "no second handshake while the slot is taken"
        # A client that connects, says something and gives up while it waits: no TLS for it.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as quitter:
            quitter.sendall(b"\x16\x03\x01")
        await asyncio.sleep(0.3)
    finally:
        stalled.close()
    async with asyncio.timeout(10):
        assert await waiting == 200
    dropped = server_samples(server, "tunnel_server_tls_dropped_total")
    key = '{reason="peer_gone"}'
    assert dropped[key] >= dropped_before.get(key, 0.0) + 1
    failed = server_samples(server, "tunnel_server_tls_handshakes_total")
    key = '{result="failed"}'
    assert failed[key] >= failed_before.get(key, 0.0) + 1, "the stalled handshake ended"


async def test_a_silent_connection_holds_no_handshake_slot(
    server: Server, http: aiohttp.ClientSession
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        await asyncio.sleep(0.3)  # accepted, but it sent no ClientHello
        async with asyncio.timeout(5):
            assert await get_healthz(http, server) == 200


# ---------------------------------------------------------------- Retry-After, without I/O


def admission(limit: int = 1, retry_after_max: float = 30.0) -> Admission:
    return Admission(
        limit=limit,
        retry_after_max=retry_after_max,
        registry=prometheus_client.CollectorRegistry(),
    )


def test_refused_agents_get_times_spaced_at_the_set_up_rate() -> None:
    gate = admission()
    window = gate._window_start
    for _ in range(100):  # 20 set-ups a second over a 5 s window
        assert gate.try_enter()
        gate.leave(completed=True)
    now = window + 5.0
    waits = [gate.retry_after(now) for _ in range(200)]
    assert waits == sorted(waits), "later refusals are told later times"
    assert waits[0] == 1
    assert waits[-1] == 11  # 200 agents at 20 a second: 10 s of work, from 1 s on
    assert max(waits.count(w) for w in set(waits)) <= 21, "no second gets more than the rate"


def test_reservations_beyond_the_maximum_are_spread_over_its_second_half() -> None:
    gate = admission(retry_after_max=10.0)
    now = time.monotonic()
    waits = [gate.retry_after(now) for _ in range(1000)]  # nothing measured: 10 a second
    assert max(waits) == 10
    late = waits[200:]
    assert min(late) >= 5
    assert len(set(late)) >= 4, "spread, not all on the maximum"


def test_the_limit_counts_set_ups_in_progress() -> None:
    gate = admission(limit=2)
    assert gate.try_enter()
    assert gate.try_enter()
    assert not gate.try_enter()
    assert gate.refusing == 1
    gate.leave(completed=False)
    assert gate.try_enter()
    unlimited = admission(limit=0)
    assert all(unlimited.try_enter() for _ in range(1000))
