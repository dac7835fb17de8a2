r"""Many light agents in one process, joined through the API: for replica tests and benches.

    python -m tests.harness.swarm --server https://127.0.0.1:PORT --ca CA.crt \
        --admin-token-file FILE --count N --prefix ha --workdir DIR

Rules:

* Joins like ``edge-agent join`` but without ``edge-agent``'s start-up cost: a bootstrap token
  per node from ``POST /api/v1/tokens`` (the admin token), a P-256 key and CSR, ``POST
  /api/v1/join``; so it works on any store (``agents_load.py`` of the tunnel bench writes
  tokens into a SQLite data dir, which a ``--store kubernetes`` server has not).
* Each node then holds one tunnel session (``tunnel_aio``) and reconnects as
  ``edge-agent run`` does (``edge_agent.tunnel_client``'s full-jitter backoff, its spread after
  a session that lived ``healthy_after``, its ``Retry-After``); ``--server`` is one address,
  as an agent takes one (put a balancer in front of several replicas).
* Every node serves one target, ``web``: any HTTP/1.1 request gets ``200 hello NAME`` (one
  response per stream, then the stream ends), so a node proxy request measures the tunnel
  and the replicas, not a service.
* Stdout: one JSON object per line: ``joined``, then ``status`` every ``--status-every``
  seconds (``connected``, ``sessions_opened``, ``failures``, ``t`` = ``time.monotonic()``, the
  system-wide clock the parent shares). ``stop`` or EOF on stdin, or SIGTERM, ends it.
* Loopback only: the server URL must name 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from edge_agent.identity import generate_key, key_pem, make_csr
from edge_agent.settings import TunnelClientSettings
from edge_agent.tunnel_client import (
    RETRY_AFTER_STATUSES,
    parse_retry_after,
    retry_after_delay,
    spread_attempts,
)
from tunnel_aio import TunnelConnection
from tunnel_aio.stream import TunnelStream
from tunnel_protocol import ErrorCode, Role, TunnelSettings

TARGET = "web"
"""The one target every light agent serves."""
MAX_REQUEST_HEAD = 16 * 1024
"""Bytes: the most of a request head read before the stream is reset (bounded input)."""
CONNECT_TIMEOUT_S = 15.0
STOP_GRACE_S = 5.0


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


@dataclass(slots=True)
class Node:
    name: str
    pem: Path
    context: ssl.SSLContext | None = None


@dataclass(slots=True)
class Swarm:
    url: str
    ca_pem: str
    nodes: list[Node]
    settings: TunnelClientSettings
    connected: int = 0
    sessions_opened: int = 0
    requests_served: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def context(self, node: Node) -> ssl.SSLContext:
        if node.context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cadata=self.ca_pem)
            context.load_cert_chain(node.pem)
            node.context = context
        return node.context


async def serve_web(stream: TunnelStream, name: str, swarm: Swarm) -> None:
    """Answer one HTTP request on ``stream`` with ``200 hello NAME``; other targets refused."""
    if stream.target != TARGET:
        stream.reject(ErrorCode.TARGET_NOT_ALLOWED, f"only {TARGET!r} is served here")
        return
    stream.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.read()
        if not chunk or len(head) + len(chunk) > MAX_REQUEST_HEAD:
            stream.reset(ErrorCode.CANCEL, "no complete request head")
            return
        head += chunk
    body = f"hello {name}".encode()
    await stream.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    stream.end()
    swarm.requests_served += 1


async def _session(swarm: Swarm, http: aiohttp.ClientSession, node: Node) -> None:
    """One session of ``node``: connect, hold it until it ends."""
    tunnel = TunnelSettings()
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        ws = await http.ws_connect(
            swarm.url + "/tunnel",
            ssl=swarm.context(node),
            max_msg_size=tunnel.max_frame_payload + 4096,
            autoping=False,
            heartbeat=None,
            compress=0,
        )

    async def on_stream(stream: TunnelStream) -> None:
        await serve_web(stream, node.name, swarm)

    async with ws:
        connection = TunnelConnection(ws, role=Role.CLIENT, name=node.name, on_stream=on_stream)
        async with asyncio.TaskGroup() as group:
            run = group.create_task(connection.run(), name=f"swarm[{node.name}]")
            await connection.wait_ready()
            swarm.connected += 1
            swarm.sessions_opened += 1
            try:
                stop = group.create_task(swarm.stopping.wait(), name=f"swarm[{node.name}].stop")
                await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not run.done():
                    connection.close()
                stop.cancel()
            finally:
                swarm.connected -= 1


async def _agent(swarm: Swarm, http: aiohttp.ClientSession, node: Node, seed: int) -> None:
    """``edge-agent run``'s reconnect loop for one node, until the swarm stops."""
    rng = random.Random(seed)  # noqa: S311 - jitter, not cryptography
    settings = swarm.settings
    attempts = 0
    while not swarm.stopping.is_set():
        started = time.monotonic()
        asked: float | None = None
        try:
            await _session(swarm, http, node)
        except aiohttp.WSServerHandshakeError as error:
            swarm.failures[f"HTTP {error.status}"] += 1
            if error.status in RETRY_AFTER_STATUSES and error.headers is not None:
                asked = parse_retry_after(
                    error.headers.get("Retry-After"), limit=settings.backoff_cap
                )
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as error:
            swarm.failures[type(error).__name__] += 1
        if swarm.stopping.is_set():
            return
        if time.monotonic() - started >= settings.healthy_after:
            attempts = spread_attempts(settings)
        if asked is None:
            ceiling = min(settings.backoff_cap, settings.backoff_base * 2 ** min(attempts, 32))
            delay = rng.uniform(0.0, ceiling)
        else:
            delay = retry_after_delay(asked, settings, rng)
        attempts = min(attempts + 1, 32)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await swarm.stopping.wait()


async def join_all(
    args: argparse.Namespace, ca_pem: str, admin_token: str, folder: Path
) -> list[Node]:
    """A token and a join per node, ``args.join_concurrency`` at a time."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca_pem)
    names = [f"{args.prefix}-{i:05d}" for i in range(args.count)]
    queue = list(reversed(names))
    nodes: list[Node] = []
    admin = {"Authorization": f"Bearer {admin_token}"}

    async def worker(http: aiohttp.ClientSession) -> None:
        while queue:
            name = queue.pop()
            async with http.post(
                f"{args.api or args.server}/api/v1/tokens",
                json={"name": name},
                headers=admin,
                ssl=context,
            ) as response:
                made = await response.json()
                if response.status != 201:
                    raise RuntimeError(f"token for {name}: {response.status} {made}")
            key = generate_key()
            body = {"token": made["token"], "csr": make_csr(key, name).decode(), "name": name}
            async with http.post(
                f"{args.api or args.server}/api/v1/join", json=body, ssl=context
            ) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"join of {name}: {response.status} {answer}")
            pem = folder / f"{name}.pem"
            pem.write_bytes(key_pem(key) + str(answer["certificate"]).encode())
            pem.chmod(0o600)
            nodes.append(Node(name=name, pem=pem))

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        asyncio.TaskGroup() as group,
    ):
        for i in range(args.join_concurrency):
            group.create_task(worker(http), name=f"swarm.join-{i}")
    nodes.sort(key=lambda n: n.name)
    return nodes


async def _stdin(swarm: Swarm) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stop":
            break
    swarm.stopping.set()


async def _status(swarm: Swarm, every: float) -> None:
    while not swarm.stopping.is_set():
        emit(
            "status",
            connected=swarm.connected,
            t=time.monotonic(),
            sessions_opened=swarm.sessions_opened,
            requests_served=swarm.requests_served,
            failures=dict(swarm.failures),
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await swarm.stopping.wait()


async def main_async(args: argparse.Namespace) -> int:
    ca_pem = args.ca.read_text()
    folder = args.workdir / "swarm-nodes"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    nodes = await join_all(args, ca_pem, args.admin_token_file.read_text().strip(), folder)
    emit("joined", count=len(nodes), join_s=round(time.monotonic() - started, 2))
    settings = TunnelClientSettings(
        backoff_base=args.backoff_base, backoff_cap=args.backoff_cap, reconnect_spread=args.spread
    )
    swarm = Swarm(url=args.server, ca_pem=ca_pem, nodes=nodes, settings=settings)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, swarm.stopping.set)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        asyncio.TaskGroup() as group,
    ):
        commands = None
        if not args.until_signal:
            commands = group.create_task(_stdin(swarm), name="swarm.stdin")
        agents = [
            group.create_task(_agent(swarm, http, node, seed=i), name=f"swarm.agent[{node.name}]")
            for i, node in enumerate(nodes)
        ]
        group.create_task(_status(swarm, args.status_every), name="swarm.status")
        await swarm.stopping.wait()
        if commands is not None:
            commands.cancel()
        _done, pending = await asyncio.wait(agents, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
    emit("stopped", sessions_opened=swarm.sessions_opened, failures=dict(swarm.failures))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="many light agents (see the module doc)")
    parser.add_argument("--server", required=True, help="https://127.0.0.1:PORT")
    parser.add_argument(
        "--api", default="", help="https://127.0.0.1:PORT for tokens and joins (default: --server)"
    )
    parser.add_argument("--ca", type=Path, required=True, help="the server's ca.crt")
    parser.add_argument("--admin-token-file", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="swarm", help="node names are PREFIX-00000...")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--join-concurrency", type=int, default=8)
    defaults = TunnelClientSettings()
    parser.add_argument("--backoff-base", type=float, default=defaults.backoff_base)
    parser.add_argument("--backoff-cap", type=float, default=defaults.backoff_cap)
    parser.add_argument("--spread", type=float, default=defaults.reconnect_spread)
    parser.add_argument("--status-every", type=float, default=0.5)
    parser.add_argument(
        "--until-signal",
        action="store_true",
        help="ignore stdin (a child with stdin on /dev/null); SIGTERM stops it",
    )
    args = parser.parse_args(argv)
    if not 0 < args.count <= 20_000:
        parser.error("--count must be within 1..20000")
    if not 0 < args.join_concurrency <= 64:
        parser.error("--join-concurrency must be within 1..64")
    for url in filter(None, (args.server, args.api)):
        if urlsplit(url).hostname != "127.0.0.1":
            parser.error("--server and --api must be on 127.0.0.1")
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
