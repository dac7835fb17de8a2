"""Load process for the console benchmark: many simulated agents reporting node status.

Each simulated agent has a real identity (a key made here, a certificate signed by the
server's CA through the server's Python API, recorded in its store), holds a real mTLS tunnel
session (``tunnel_aio``, like the agent) and streams status reports over the ``status`` target
with the agent's own encoder: a full report, then deltas, every ``--interval`` seconds.

    python scripts/bench/console_load.py --data-dir D --url https://127.0.0.1:P --agents 200 \
        --registered 1000 --interval 2 --prefix load

Prints ``READY <connected>`` once every agent reports, then runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import ssl
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge_agent.identity import generate_key, key_pem, make_csr  # noqa: E402
from edge_agent.node_status import ReportEncoder  # noqa: E402
from tunnel_aio import StreamError, TunnelConnection  # noqa: E402
from tunnel_protocol import Role  # noqa: E402
from tunnel_server.identity import tokens  # noqa: E402
from tunnel_server.identity.pki import CertificateAuthority  # noqa: E402
from tunnel_server.store import NodeRecord, SqliteStore  # noqa: E402


def register(data_dir: Path, names: list[str], keys_dir: Path | None) -> None:
    """Create each node through the server's Python API: token, redeem, certificate."""
    authority = CertificateAuthority.load(data_dir)
    store = SqliteStore.open(data_dir)
    now = time.time()
    try:
        for name in names:
            if store.get_node(name) is not None:
                continue
            spec = tokens.TokenSpec(kind="node", name=name, ttl=3600)
            token = tokens.create_token(store, spec, now=now)
            certificate = None
            if keys_dir is not None:
                key = generate_key()
                issued = authority.sign_csr(make_csr(key, name), subject_name=name, kind="node")
                (keys_dir / f"{name}.key").write_bytes(key_pem(key))
                (keys_dir / f"{name}.crt").write_text(issued.pem)
                certificate = issued.record()
            node = NodeRecord(name=name, kind="node", state="approved", created_at=now)
            store.redeem_token(token.id, now=now, node=node, certificate=certificate)
    finally:
        store.close()


def context_for(name: str, keys_dir: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(keys_dir / f"{name}.crt", keys_dir / f"{name}.key")
    return context


def metrics(rng: random.Random, boot: float) -> dict[str, str | int | float | bool | None]:
    return {
        "agent.version": "0.1.0-load",
        "os.name": "Debian GNU/Linux 12 (bookworm)",
        "os.release": "6.1.0-load",
        "boot.time": boot,
        "cpu.count": 4,
        "cpu.percent": round(rng.uniform(0, 100), 1),
        "load.1": round(rng.uniform(0, 4), 2),
        "memory.total": 8 * 1024**3,
        "memory.percent": round(rng.uniform(10, 95), 1),
        "disk.total": 64 * 1024**3,
        "disk.percent": round(rng.uniform(10, 99), 1),
        "net.rx_bps": rng.randrange(0, 10**6),
        "net.tx_bps": rng.randrange(0, 10**6),
        "tunnel.rtt_ms": round(rng.uniform(0.1, 3), 1),
    }


async def agent(
    name: str,
    *,
    url: str,
    context: ssl.SSLContext,
    interval: float,
    ready: asyncio.Queue[str],
) -> None:
    rng = random.Random(name)  # noqa: S311 - simulated metrics, not secrets
    boot = time.time() - rng.uniform(3600, 10**6)
    async with aiohttp.ClientSession() as http, http.ws_connect(
        url + "/tunnel", ssl=context, autoping=False, heartbeat=None, compress=0,
        max_msg_size=1 << 20,
    ) as ws:  # fmt: skip
        connection = TunnelConnection(ws, role=Role.CLIENT, name=name)
        async with asyncio.TaskGroup() as group:
            group.create_task(connection.run(), name=f"load[{name}].session")
            stream = await connection.open_stream("status")
            encoder = ReportEncoder(interval=interval, full_every=300)
            await asyncio.sleep(rng.uniform(0, interval))  # agents are not in lockstep
            first = True
            while True:
                await stream.write(encoder.encode(metrics(rng, boot), now=time.monotonic()))
                if first:
                    ready.put_nowait(name)
                    first = False
                await asyncio.sleep(interval)


async def run(args: argparse.Namespace) -> None:
    keys_dir = args.work / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{args.prefix}-{i:04d}" for i in range(args.agents)]
    extra = [f"{args.prefix}-idle-{i:04d}" for i in range(max(0, args.registered - args.agents))]
    register(args.data_dir, names, keys_dir)
    register(args.data_dir, extra, None)
    ca = args.data_dir / "ca.crt"
    ready: asyncio.Queue[str] = asyncio.Queue()
    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for index, name in enumerate(names):
            context = context_for(name, keys_dir, ca)
            group.create_task(
                _forever(name, url=args.url, context=context, interval=args.interval, ready=ready),
                name=f"load[{name}]",
            )
            if index % 50 == 49:
                await asyncio.sleep(0.05)  # a gentle ramp: reconnect storms are another bench
        for _ in names:
            await ready.get()
        print(f"READY {len(names)} {time.monotonic() - started:.1f}", flush=True)


async def _forever(name: str, **kwargs: object) -> None:
    while True:
        try:
            await agent(name, **kwargs)  # type: ignore[arg-type]
        except (aiohttp.ClientError, OSError, StreamError, TimeoutError) as error:
            print(f"{name}: {error}; reconnecting", file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="the server's data dir")
    parser.add_argument("--work", type=Path, required=True, help="folder for agent keys")
    parser.add_argument("--url", required=True)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--registered", type=int, default=0, help="total nodes in the store")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--prefix", default="load")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
