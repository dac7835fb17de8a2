r"""Idle-agent load: hold N tunnel sessions to one tunnel-server, each a distinct joined node.

    .venv/bin/python scripts/bench/agents_load.py --server https://127.0.0.1:PORT \\
        --server-data-dir DIR --count N --workdir DIR [--backoff-base 1] [--backoff-cap 60]

Started by ``bench_agents.py`` (the tunnel benchmark), one process on the same machine as the
server. What it does, in order:

1. creates N single-use bootstrap tokens with the server's Python API on its data dir
   (``tunnel_server.identity.tokens.create_token`` on ``SqliteStore.open``), names
   ``load-00000``...;
2. joins each one like ``edge-agent join``: a P-256 key made here, a CSR, ``POST /api/v1/join``
   over TLS that trusts only the server's CA; key + certificate go to one PEM per node;
3. prints ``{"event": "joined", ...}`` and waits for ``connect`` on stdin;
4. opens N WebSocket sessions with mTLS to ``/tunnel``, each speaking the tunnel protocol through
   ``tunnel_aio.TunnelConnection(role=CLIENT)``; the first connects are paced (at most
   ``--connect-concurrency`` handshakes in flight) since bring-up is not a measured figure;
5. from then on every node behaves like ``edge-agent run``: when its session ends it reconnects
   after a full-jitter backoff (uniform in [0, min(cap, base * 2**attempts)], attempts reset
   after a session that lived ``healthy_after`` seconds), without pacing; a 503 with
   ``Retry-After`` is followed the way the agent follows it
   (``edge_agent.tunnel_client.retry_after_delay``).

With ``--kind cluster`` the tokens are cluster tokens (each node joins as a registered cluster);
with ``--fleet`` as well, every session also runs a simulated cluster agent's ``fleet`` stream
(``fleet_sim.FleetSim``: hello, leases, Applied+Available status for every Work), and the
``status`` lines carry its counters under ``fleet``.

Stdout gets one JSON object per line: ``joined``, ``connected`` (all N up), ``all_connected``
(N up again after a loss; ``t`` is ``time.monotonic()``, the system-wide CLOCK_MONOTONIC, so
the parent can compare it with its own clock), and ``status`` once a second. ``stop`` or EOF
on stdin, or SIGTERM, ends it. Everything stays on 127.0.0.1 (the server URL must be loopback).

The process keeps asyncio's per-TLS-connection read buffer at 32 KiB instead of 256 KiB
(``SSLProtocol.max_size``) so that one Python process can hold 10,000 client sessions; the
server under test is not changed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import signal
import ssl
import sys
import time
from asyncio import sslproto
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from fleet_sim import FleetCounters, FleetSim

from edge_agent.identity import generate_key, key_pem, make_csr
from edge_agent.settings import TunnelClientSettings
from edge_agent.tunnel_client import (
    RETRY_AFTER_STATUSES,
    parse_retry_after,
    retry_after_delay,
    spread_attempts,
)
from tunnel_aio import TunnelConnection
from tunnel_protocol import Role, TunnelSettings
from tunnel_server.identity.tokens import TokenSpec, create_token
from tunnel_server.store import NodeKind, SqliteStore

LOAD_SSL_BUFFER = 32 * 1024
HEALTHY_AFTER_S = 30.0
CONNECT_TIMEOUT_S = 15.0
STOP_GRACE_S = 5.0


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}, separators=(",", ":")), flush=True)


def raise_fd_limit(need: int) -> int:
    """Raise RLIMIT_NOFILE to the hard limit; the soft limit reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter, like ``edge_agent.tunnel_client``: uniform in [0, min(cap, base*2**n)]."""
    ceiling = min(cap, base * 2 ** min(attempts, 32))
    return rng.uniform(0.0, ceiling)


@dataclass(slots=True)
class Node:
    name: str
    pem: Path
    context: ssl.SSLContext | None = None
    sim: FleetSim | None = None
    """Its simulated cluster agent's fleet stream (``--fleet``), kept across sessions."""


@dataclass(slots=True)
class Swarm:
    url: str
    ca_pem: str
    nodes: list[Node]
    base: float
    cap: float
    connect_concurrency: int
    spread_attempts: int = 0
    """Backoff step to start from after a session that lived drops (the agent's own rule)."""
    connected: int = 0
    ever_all: bool = False
    lost_since: float | None = None
    failures: Counter[str] = field(default_factory=Counter)
    sessions_opened: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    first_round: asyncio.Semaphore | None = None
    fleet: FleetCounters | None = None
    """Summed counters of the simulated fleet agents (``--fleet``), else None."""

    def up(self) -> None:
        self.connected += 1
        self.sessions_opened += 1
        if self.connected == len(self.nodes):
            now = time.monotonic()
            if not self.ever_all:
                self.ever_all = True
                emit("connected", count=self.connected, t=now)
            else:
                since = None if self.lost_since is None else round(now - self.lost_since, 3)
                emit("all_connected", count=self.connected, t=now, since_first_loss_s=since)
            self.lost_since = None

    def down(self) -> None:
        if self.connected == len(self.nodes) and self.lost_since is None:
            self.lost_since = time.monotonic()
        self.connected -= 1

    def context(self, node: Node) -> ssl.SSLContext:
        if node.context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_verify_locations(cadata=self.ca_pem)
            context.load_cert_chain(node.pem)
            node.context = context
        return node.context


async def _session(
    swarm: Swarm, http: aiohttp.ClientSession, node: Node, gate: asyncio.Semaphore | None
) -> None:
    """One session of ``node``: connect (through ``gate`` if given), hold until it ends."""
    settings = TunnelSettings()
    async with contextlib.AsyncExitStack() as stack:
        if gate is not None:
            await stack.enter_async_context(gate)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            ws = await http.ws_connect(
                swarm.url + "/tunnel",
                ssl=swarm.context(node),
                max_msg_size=settings.max_frame_payload + 4096,
                autoping=False,
                heartbeat=None,
                compress=0,
            )
    async with ws:
        connection = TunnelConnection(ws, role=Role.CLIENT, name=node.name, on_stream=None)
        async with asyncio.TaskGroup() as group:
            run = group.create_task(connection.run(), name=f"load[{node.name}]")
            await connection.wait_ready()
            swarm.up()
            fleet = None
            if node.sim is not None:
                fleet = group.create_task(node.sim.run(connection), name=f"fleet[{node.name}]")
            try:
                stop = group.create_task(swarm.stopping.wait())
                await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not run.done():
                    connection.close()
                stop.cancel()
            finally:
                if fleet is not None:
                    fleet.cancel()
                swarm.down()


async def _agent(swarm: Swarm, http: aiohttp.ClientSession, node: Node, seed: int) -> None:
    """``edge-agent run``'s loop for one node, until the swarm stops."""
    rng = random.Random(seed)  # noqa: S311 - jitter, not cryptography
    settings = TunnelClientSettings(backoff_base=swarm.base, backoff_cap=swarm.cap)
    attempts = 0
    gate = swarm.first_round  # only the very first connect is paced
    while not swarm.stopping.is_set():
        started = time.monotonic()
        asked: float | None = None
        try:
            await _session(swarm, http, node, gate)
        except aiohttp.WSServerHandshakeError as error:
            swarm.failures[f"HTTP {error.status}"] += 1
            if error.status in RETRY_AFTER_STATUSES and error.headers is not None:
                asked = parse_retry_after(error.headers.get("Retry-After"), limit=swarm.cap)
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as error:
            swarm.failures[type(error).__name__] += 1
        gate = None
        if swarm.stopping.is_set():
            return
        if time.monotonic() - started >= HEALTHY_AFTER_S:
            attempts = swarm.spread_attempts
        if asked is None:
            delay = backoff_delay(attempts, swarm.base, swarm.cap, rng)
        else:
            delay = retry_after_delay(asked, settings, rng)
        attempts = min(attempts + 1, 32)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await swarm.stopping.wait()


# ---------------------------------------------------------------- join


def make_tokens(server_data_dir: Path, names: list[str], kind: NodeKind = "node") -> list[str]:
    store = SqliteStore.open(server_data_dir)
    try:
        now = time.time()
        return [
            str(create_token(store, TokenSpec(kind=kind, name=name, ttl=7200.0), now=now))
            for name in names
        ]
    finally:
        store.close()


def _save(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


async def join_all(
    server: str, ca_pem: str, *, tokens: list[str], names: list[str], folder: Path, concurrency: int
) -> list[Node]:
    """Join every name with its token; a node's key and certificate go to ``folder/NAME.pem``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca_pem)
    nodes: list[Node] = []
    queue = list(zip(names, tokens, strict=True))
    queue.reverse()

    async def worker(http: aiohttp.ClientSession) -> None:
        while queue:
            name, token = queue.pop()
            key = generate_key()
            body = {"token": token, "csr": make_csr(key, name).decode(), "name": name}
            async with http.post(f"{server}/api/v1/join", json=body, ssl=context) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"join of {name} answered {response.status}: {answer}")
            pem = _save(folder / f"{name}.pem", key_pem(key) + str(answer["certificate"]).encode())
            nodes.append(Node(name=name, pem=pem))

    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=connector) as http,
        asyncio.TaskGroup() as group,
    ):
        for i in range(concurrency):
            group.create_task(worker(http), name=f"join-{i}")
    nodes.sort(key=lambda n: n.name)
    return nodes


# ---------------------------------------------------------------- main


async def _stdin_commands(swarm: Swarm, connect: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = line.decode().strip()
        if command == "connect":
            connect.set()
        elif command == "stop":
            break
    swarm.stopping.set()
    connect.set()


async def _status(swarm: Swarm) -> None:
    while not swarm.stopping.is_set():
        fleet = {} if swarm.fleet is None else {"fleet": swarm.fleet.document()}
        emit(
            "status",
            connected=swarm.connected,
            t=time.monotonic(),
            sessions_opened=swarm.sessions_opened,
            failures=dict(swarm.failures),
            **fleet,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await swarm.stopping.wait()


async def main_async(args: argparse.Namespace, ca_pem: str, folder: Path) -> int:
    loop = asyncio.get_running_loop()
    names = [f"load-{i:05d}" for i in range(args.count)]
    started = time.monotonic()
    tokens = make_tokens(args.server_data_dir, names, args.kind)
    tokens_s = time.monotonic() - started
    nodes = await join_all(
        args.server,
        ca_pem,
        tokens=tokens,
        names=names,
        folder=folder,
        concurrency=args.join_concurrency,
    )
    emit(
        "joined",
        count=len(nodes),
        tokens_s=round(tokens_s, 2),
        join_s=round(time.monotonic() - started - tokens_s, 2),
        fd_limit=raise_fd_limit(args.count + 256),
    )
    swarm = Swarm(
        url=args.server,
        ca_pem=ca_pem,
        nodes=nodes,
        base=args.backoff_base,
        cap=args.backoff_cap,
        connect_concurrency=args.connect_concurrency,
        first_round=asyncio.Semaphore(args.connect_concurrency),
        spread_attempts=spread_attempts(
            TunnelClientSettings(backoff_base=args.backoff_base, reconnect_spread=args.spread)
        ),
    )
    if args.fleet:
        swarm.fleet = FleetCounters()
        for node in nodes:
            node.sim = FleetSim(name=node.name, counters=swarm.fleet)
    loop.add_signal_handler(signal.SIGTERM, swarm.stopping.set)
    connect = asyncio.Event()
    # Like the agent: pooled connections (kept after a 503) live as long as a node may wait.
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, keepalive_timeout=args.backoff_cap + 5.0
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        asyncio.TaskGroup() as group,
    ):
        commands = group.create_task(_stdin_commands(swarm, connect), name="load.stdin")
        await connect.wait()
        agents = [
            group.create_task(_agent(swarm, http, node, seed=i), name=f"agent[{node.name}]")
            for i, node in enumerate(nodes)
            if not swarm.stopping.is_set()
        ]
        group.create_task(_status(swarm), name="load.status")
        await swarm.stopping.wait()
        commands.cancel()
        if agents:
            _done, pending = await asyncio.wait(agents, timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
    emit("stopped", sessions_opened=swarm.sessions_opened, failures=dict(swarm.failures))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="hold N idle tunnel sessions (see module doc)")
    parser.add_argument("--server", required=True, help="https://127.0.0.1:PORT")
    parser.add_argument("--server-data-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--backoff-base", type=float, default=1.0)
    parser.add_argument("--backoff-cap", type=float, default=60.0)
    parser.add_argument(
        "--spread",
        type=float,
        default=TunnelClientSettings().reconnect_spread,
        help="the agent's reconnect_spread (seconds; 0 turns it off)",
    )
    parser.add_argument("--join-concurrency", type=int, default=16)
    parser.add_argument(
        "--kind", choices=("node", "cluster"), default="node", help="the tokens' kind"
    )
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="run a simulated cluster agent's fleet stream in every session (needs --kind cluster)",
    )
    parser.add_argument("--connect-concurrency", type=int, default=128)
    args = parser.parse_args(argv)
    if not 0 < args.count <= 100_000:
        parser.error("--count must be within 1..100000")
    if args.fleet and args.kind != "cluster":
        parser.error("--fleet needs --kind cluster (the fleet stream is for cluster agents)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if urlsplit(args.server).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser_error = "agents_load: the server must be on loopback"
        raise SystemExit(parser_error)
    sslproto.SSLProtocol.max_size = LOAD_SSL_BUFFER  # see the module doc
    raise_fd_limit(args.count + 256)
    ca_pem = (args.server_data_dir / "ca.crt").read_text()
    folder = args.workdir / "load-nodes"
    folder.mkdir(parents=True, exist_ok=True)
    return asyncio.run(main_async(args, ca_pem, folder))


if __name__ == "__main__":
    sys.exit(main())
