"""Replicas benchmark (issue 17): forwarding cost and failover of ``tunnel-server`` replicas.

    scripts/bench/ha --quick                     # 20 agents; last stdout line one JSON object
    scripts/bench/ha --agents 300
    scripts/bench/ha --out docs/benchmarks.md    # rewrites only the ha section

One run, everything on loopback: a real kube-apiserver (kine behind it, tests/harness/kube.py)
with the store's CRDs, three real ``tunnel-server run --store kubernetes`` replicas on one
namespace, a TCP balancer in front of them (tests/harness/balancer.py: an agent takes one
address), and ``--agents`` light agents (tests/harness/swarm.py: real tunnel sessions, each
answering ``web`` requests with ``200 hello NAME``, reconnecting with ``edge-agent``'s rule).

1. **Forwarding.** For sampled nodes, ``GET /api/v1/nodes/NODE/proxy/web/`` through the
   replica holding the agent (*direct*) and through one that does not (*forwarded*: peer
   link to the holder), alternated request by request (A/B/A/B) so both see the same load;
   at concurrency 1 and ``--concurrency``. Added = forwarded - direct, at p50 and p99.
2. **Failover.** SIGKILL of the replica holding the most agents. ``failover_agents_s``:
   until every agent has a session again (the swarm's own count, its clock);
   ``failover_leases_s``: until every agent Lease (read with the official client) names a
   live replica. The agents use ``edge-agent``'s backoff (a session older than 30 s
   spreads its reconnect over 16 s), so the first figure is mostly the agents' own wait.
3. **Requests during the kill.** ``--load-concurrency`` callers send node-proxy requests for
   random nodes through the two surviving replicas from just before the kill until the
   Leases are all back; ``failed_requests`` counts non-200 answers, by status and code.

Not measured here (issue 17's other keys): twin writes to etcd, lost updates (no simulated
devices), 10,000 agents (the light agents are one Python process on the same 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import ssl
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_stats import percentile, write_marked_section  # noqa: E402 - scripts/bench

from tests.harness import kube  # noqa: E402 - after the repository root is on the path
from tests.harness.balancer import Balancer  # noqa: E402
from tests.harness.ha import (  # noqa: E402
    Replica,
    agent_holders,
    start_replicas,
    start_swarm,
    stop_all,
    swarm_status,
)
from tests.harness.procs import ManagedProcess  # noqa: E402
from tests.harness.waiting import eventually  # noqa: E402

START, END = "<!-- bench:ha:start -->", "<!-- bench:ha:end -->"
CRDS = ROOT / "packaging" / "kubernetes" / "tunnel-server" / "crds"
REPLICAS = 3
WAIT_S = 300.0


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# ---------------------------------------------------------------- requests


async def _get(
    http: aiohttp.ClientSession, replica: Replica, node: str, context: ssl.SSLContext
) -> tuple[float, int, str]:
    """One node-proxy request: seconds, status, the error code (``""`` on 200)."""
    headers = {"Authorization": f"Bearer {replica.admin_token}"}
    started = time.perf_counter()
    try:
        async with http.get(
            f"{replica.url}/api/v1/nodes/{node}/proxy/web/", headers=headers, ssl=context
        ) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        return time.perf_counter() - started, 0, type(error).__name__
    took = time.perf_counter() - started
    if status == 200:
        return took, status, ""
    try:
        problem = json.loads(body)
        # An RFC 9457 problem document: the code ends its "type" URI.
        code = str(problem.get("code") or str(problem.get("type", "")).rsplit("/", 1)[-1])
    except (ValueError, AttributeError):
        code = body[:40].decode(errors="replace")
    return took, status, code


async def forwarding(
    replicas: list[Replica], holders: dict[str, str | None], *, requests: int, concurrency: int
) -> dict[str, Any]:
    """Direct vs forwarded latency, alternated per request, at ``concurrency`` callers."""
    by_name = {r.pod_name: r for r in replicas}
    nodes = sorted(n for n, h in holders.items() if h in by_name)
    rng = random.Random(17)  # noqa: S311 - sampling, not cryptography
    context = replicas[0].ssl_context()
    times: dict[str, list[float]] = {"direct": [], "forwarded": []}
    errors: Counter[str] = Counter()
    per_caller = max(1, requests // concurrency)

    async def caller(http: aiohttp.ClientSession, seed: int) -> None:
        own = random.Random(seed)  # noqa: S311 - sampling
        for i in range(per_caller):
            node = own.choice(nodes)
            holder = by_name[str(holders[node])]
            other = own.choice([r for r in replicas if r is not holder])
            order = [("direct", holder), ("forwarded", other)]
            if i % 2:
                order.reverse()  # A/B then B/A: neither path always goes first
            for path, replica in order:
                took, status, code = await _get(http, replica, node, context)
                if status == 200:
                    times[path].append(took)
                else:
                    errors[f"{path} {status} {code}"] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        # Warm-up: every replica's keep-alive connections and peer links are made.
        for node in rng.sample(nodes, min(len(nodes), 10)):
            for replica in replicas:
                await _get(http, replica, node, context)
        async with asyncio.TaskGroup() as group:
            for index in range(concurrency):
                group.create_task(caller(http, index), name=f"ha.caller-{index}")
    return _latency_figures(times, errors, concurrency)


def _latency_figures(
    times: dict[str, list[float]], errors: Counter[str], concurrency: int
) -> dict[str, Any]:
    figures: dict[str, Any] = {"concurrency": concurrency, "errors": dict(errors)}
    for path, values in times.items():
        if not values:
            raise RuntimeError(f"no {path} request succeeded: {dict(errors)}")
        figures[f"{path}_p50_ms"] = _ms(percentile(values, 50))
        figures[f"{path}_p99_ms"] = _ms(percentile(values, 99))
        figures[f"{path}_n"] = len(values)
    figures["added_p50_ms"] = round(figures["forwarded_p50_ms"] - figures["direct_p50_ms"], 3)
    figures["added_p99_ms"] = round(figures["forwarded_p99_ms"] - figures["direct_p99_ms"], 3)
    return figures


async def load_during(
    survivors: list[Replica], nodes: list[str], stop: asyncio.Event, *, concurrency: int
) -> dict[str, Any]:
    """Node-proxy requests through the survivors until ``stop``: counts by outcome."""
    context = survivors[0].ssl_context()
    outcomes: Counter[str] = Counter()
    failed_at: list[float] = []

    async def caller(http: aiohttp.ClientSession, seed: int) -> None:
        own = random.Random(seed)  # noqa: S311 - sampling
        while not stop.is_set():
            _took, status, code = await _get(
                http, own.choice(survivors), own.choice(nodes), context
            )
            outcomes["200" if status == 200 else f"{status} {code}"] += 1
            if status != 200:
                failed_at.append(time.monotonic())

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        asyncio.TaskGroup() as group,
    ):
        for index in range(concurrency):
            group.create_task(caller(http, 1000 + index), name=f"ha.load-{index}")
    total = sum(outcomes.values())
    failed = {k: v for k, v in outcomes.items() if k != "200"}
    return {
        "requests": total,
        "failed_requests": sum(failed.values()),
        "failed_by": failed,
        "failed_at": failed_at,
    }


# ---------------------------------------------------------------- failover


def _agents_back(
    swarm: ManagedProcess, *, count: int, opened_before: int, lost: int, killed: float
) -> float:
    """Seconds from the kill to the first swarm status with every agent connected again."""
    status = eventually(
        lambda: swarm_status(swarm),
        lambda s: s.get("connected") == count and int(s["sessions_opened"]) >= opened_before + lost,
        what="every agent connected again",
        within=WAIT_S,
    )
    # The first status line that met it (the swarm stamps each with the shared monotonic clock).
    for line in swarm.tail(2000).splitlines():
        if line.startswith('{"event":"status"'):
            seen = json.loads(line)
            if (
                seen["t"] > killed
                and seen["connected"] == count
                and seen["sessions_opened"] >= opened_before + lost
            ):
                return round(float(seen["t"]) - killed, 2)
    return round(float(status["t"]) - killed, 2)


async def failover(
    plane: kube.ControlPlane,
    namespace: str,
    replicas: list[Replica],
    swarm: ManagedProcess,
    *,
    count: int,
    load_concurrency: int,
) -> dict[str, Any]:
    holders = agent_holders(plane.kubeconfig, namespace)
    held = Counter(h for h in holders.values() if h)
    victim_name, lost = held.most_common(1)[0]
    victim = next(r for r in replicas if r.pod_name == victim_name)
    survivors = [r for r in replicas if r is not victim]
    live = {r.pod_name for r in survivors}
    opened_before = int(swarm_status(swarm)["sessions_opened"])
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        load = group.create_task(
            load_during(survivors, sorted(holders), stop, concurrency=load_concurrency),
            name="ha.load",
        )
        await asyncio.sleep(1.0)  # the load runs before the kill
        assert victim.process is not None  # noqa: S101 - started above
        _log(f"SIGKILL {victim_name} holding {lost} of {count} agents")
        victim.process.kill()
        killed = time.monotonic()
        agents_s = await asyncio.to_thread(
            _agents_back, swarm, count=count, opened_before=opened_before, lost=lost, killed=killed
        )
        await asyncio.to_thread(
            eventually,
            lambda: agent_holders(plane.kubeconfig, namespace),
            lambda h: len(h) == count and all(v in live for v in h.values()),
            what="every agent Lease naming a live replica",
            within=WAIT_S,
            every=0.2,
        )
        leases_s = round(time.monotonic() - killed, 2)
        stop.set()
    outcome = load.result()
    failed_at = outcome.pop("failed_at")
    return {
        "killed_replica": victim_name,
        "agents_on_killed": lost,
        "failover_agents_s": agents_s,
        "failover_leases_s": leases_s,
        **outcome,
        # When, after the kill, the survivors answered requests with errors (seconds).
        "failed_first_s": round(min(failed_at) - killed, 2) if failed_at else None,
        "failed_last_s": round(max(failed_at) - killed, 2) if failed_at else None,
    }


# ---------------------------------------------------------------- main


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    _log("starting kube-apiserver")
    plane = kube.start("ha-bench", workdir / "kube")
    replicas: list[Replica] = []
    balancer: Balancer | None = None
    swarm = None
    try:
        plane.kubectl("apply", "-k", str(CRDS))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        namespace = f"ha-{secrets.token_hex(3)}"
        status, answer = plane.request(
            "POST", "/api/v1/namespaces", {"metadata": {"name": namespace}}
        )
        if status != 201:
            raise RuntimeError(f"namespace: {status} {answer}")
        _log(f"starting {REPLICAS} replicas")
        replicas = start_replicas(
            kubeconfig=plane.kubeconfig, namespace=namespace, workdir=workdir, count=REPLICAS
        )
        balancer = Balancer([r.port for r in replicas])
        balancer.start()
        swarm = start_swarm(
            url=f"https://127.0.0.1:{balancer.port}",
            first=replicas[0],
            count=args.agents,
            workdir=workdir / "swarm",
        )
        names = {r.pod_name for r in replicas}
        started = time.monotonic()
        eventually(
            lambda: (swarm_status(swarm), agent_holders(plane.kubeconfig, namespace)),
            lambda seen: (
                seen[0].get("connected") == args.agents
                and len(seen[1]) == args.agents
                and all(h in names for h in seen[1].values())
            ),
            what=f"{args.agents} agents joined, connected and recorded",
            within=WAIT_S + args.agents,
        )
        all_up = time.monotonic()
        bringup_s = round(all_up - started, 1)
        holders = agent_holders(plane.kubeconfig, namespace)
        _log(f"{args.agents} agents up in {bringup_s} s: {dict(Counter(holders.values()))}")
        load_before = load_average()
        rounds = []
        for concurrency in (1, args.concurrency):
            _log(f"forwarding at c={concurrency}")
            rounds.append(
                await forwarding(replicas, holders, requests=args.requests, concurrency=concurrency)
            )
        # edge-agent spreads its reconnect (16 s) only after a session that lived
        # healthy_after (30 s): a replica that dies under a settled fleet is the usual case.
        wait = args.session_age - (time.monotonic() - all_up)
        if wait > 0:
            _log(f"waiting {wait:.0f} s so that every session is {args.session_age:.0f} s old")
            await asyncio.sleep(wait)
        session_age = round(time.monotonic() - all_up, 1)
        _log("failover")
        fail = await failover(
            plane,
            namespace,
            replicas,
            swarm,
            count=args.agents,
            load_concurrency=args.load_concurrency,
        )
        return {
            "bench": "ha",
            "quick": args.quick,
            "agents_total": args.agents,
            "replicas": REPLICAS,
            "store": "kubernetes (kube-apiserver on kine)",
            "bringup_s": bringup_s,
            "forward_added_p50_ms": rounds[0]["added_p50_ms"],
            "forward_added_p99_ms": rounds[0]["added_p99_ms"],
            "forwarded_p50_added_ms": rounds[0]["added_p50_ms"],
            "forward_added_p50_ms_c": rounds[1]["added_p50_ms"],
            "forward_added_p99_ms_c": rounds[1]["added_p99_ms"],
            "forwarding": rounds,
            **fail,
            "failover_all_back_s": fail["failover_agents_s"],
            "session_age_s": session_age,
            "agent_backoff": "edge-agent defaults: base 1 s, cap 60 s, spread 15 s after 30 s",
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "cpus": os.cpu_count(),
        }
    finally:
        if swarm is not None:
            swarm.stop()
        if balancer is not None:
            balancer.stop()
        stop_all(replicas)
        plane.stop()


def render(report: dict[str, Any]) -> str:
    rows = [
        f"| {r['concurrency']} | {r['direct_p50_ms']} | {r['forwarded_p50_ms']} | "
        f"{r['added_p50_ms']} | {r['direct_p99_ms']} | {r['forwarded_p99_ms']} | "
        f"{r['added_p99_ms']} |"
        for r in report["forwarding"]
    ]
    failed = ", ".join(f"{k}: {v}" for k, v in report["failed_by"].items()) or "none"
    return "\n".join(
        [
            START,
            (
                f"{report['agents_total']} light agents on {report['replicas']} replicas "
                f"(store: {report['store']}); load average {report['load_average_before']} "
                f"before, {report['load_average_after']} after, {report['cpus']} CPUs."
            ),
            "",
            (
                "| callers | direct p50 ms | forwarded p50 ms | added p50 | direct p99 | "
                "forwarded p99 | added p99 |"
            ),
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            (
                f"SIGKILL of {report['killed_replica']} holding {report['agents_on_killed']} "
                f"agents: all agents connected again after {report['failover_agents_s']} s, "
                f"every agent Lease naming a live replica after {report['failover_leases_s']} s "
                f"({report['agent_backoff']}). Requests through the survivors meanwhile: "
                f"{report['requests']}, failed {report['failed_requests']} ({failed}), from "
                f"{report['failed_first_s']} s to {report['failed_last_s']} s after the kill "
                f"(sessions {report['session_age_s']} s old at the kill)."
            ),
            END,
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="replicas benchmark (see the module doc)")
    parser.add_argument("--quick", action="store_true", help="20 agents, fewer requests")
    parser.add_argument("--agents", type=int, default=None, help="default 100 (20 with --quick)")
    parser.add_argument("--requests", type=int, default=None, help="per path and round")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--load-concurrency", type=int, default=4)
    parser.add_argument(
        "--session-age",
        type=float,
        default=None,
        help="seconds the sessions live before the kill (default 35; 0 with --quick)",
    )
    parser.add_argument("--out", type=Path, help="rewrite the ha section of this markdown file")
    parser.add_argument("--workdir", type=Path, help="keep the logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.agents is None:
        args.agents = 20 if args.quick else 100
    if args.session_age is None:
        args.session_age = 0.0 if args.quick else 35.0
    if args.requests is None:
        args.requests = 200 if args.quick else 1000
    if not 1 <= args.agents <= 20_000:
        parser.error("--agents must be within 1..20000")
    if not 1 <= args.concurrency <= 256 or not 1 <= args.load_concurrency <= 64:
        parser.error("--concurrency within 1..256, --load-concurrency within 1..64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        report = asyncio.run(measure(args, workdir))
    if args.out is not None:
        write_marked_section(
            args.out,
            render(report),
            start=START,
            end=END,
            heading="Replicas: forwarding and failover (issue 17)",
            howto="`scripts/bench/ha` (see scripts/bench/ha_bench.py).",
        )
    print(json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
