"""Console benchmark: the cloud side while a fleet reports node status.

Figures, each beside its baseline from the same run:

* server RSS and CPU while N simulated agents report (baseline: the same server idle, before
  any agent connected);
* API p50/p99 of ``GET /api/v1/nodes`` with 1,000 nodes in the store (baseline: ``/healthz``,
  the framework's floor on the same connection);
* time from an agent going away to the console's live stream showing it offline: killed
  (socket closed, the common case) and frozen (SIGSTOP: the socket stays open, reports stop;
  the lease decides), against the tunnel keepalive's 45 s that would otherwise apply.

The agents run in a separate load process (``console_load.py``) with real identities.
The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import ssl
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from bench_procs import BenchError, free_port, running, wait_for_port  # noqa: E402
from bench_stats import percentile, replace_section  # noqa: E402

START = "<!-- bench:console:start -->"
END = "<!-- bench:console:end -->"
BIN = Path(sys.executable).parent


@dataclass(frozen=True, kw_only=True)
class Plan:
    mode: str
    agents: int
    registered: int
    interval: float
    window: float
    api_requests: int
    kills: int
    freeze: bool


def plan(*, quick: bool, agents: int | None) -> Plan:
    if quick:
        # Same report rate as 1,000 agents every 10 s (100/s), with fewer sessions.
        return Plan(mode="quick", agents=agents or 200, registered=1000, interval=2.0,
                    window=8.0, api_requests=100, kills=2, freeze=True)  # fmt: skip
    return Plan(mode="full", agents=agents or 1000, registered=1000, interval=10.0,
                window=60.0, api_requests=500, kills=5, freeze=True)  # fmt: skip


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Events:
    """Follows /api/v1/events and remembers when each node was last seen with each status."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.changed: dict[tuple[str, str], float] = {}
        self.ready = asyncio.Event()

    async def follow(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(url + "/api/v1/events", headers=headers, timeout=None) as answer:
            answer.raise_for_status()
            block: list[str] = []
            async for raw in answer.content:
                line = raw.decode().rstrip("\n")
                if line:
                    block.append(line)
                    continue
                data = [b[5:].strip() for b in block if b.startswith("data:")]
                block = []
                if data:
                    now = time.monotonic()
                    for row in json.loads("".join(data)).get("nodes", []):
                        if self.status.get(row["name"]) != row["status"]:
                            self.status[row["name"]] = row["status"]
                            self.changed[(row["name"], row["status"])] = now
                    self.ready.set()

    async def wait(self, name: str, status: str, since: float, within: float) -> float:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            seen = self.changed.get((name, status))
            if seen is not None and seen >= since:
                return seen - since
            await asyncio.sleep(0.01)
        raise BenchError(f"the live stream never showed {name} {status} within {within} s")


async def latency(http: aiohttp.ClientSession, url: str, token: str, n: int) -> dict[str, float]:
    samples = []
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(n):
        started = time.perf_counter()
        async with http.get(url, headers=headers) as answer:
            await answer.read()
            if answer.status != 200:
                raise BenchError(f"{url} answered {answer.status}")
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(percentile(samples, 50), 2),
        "p99_ms": round(percentile(samples, 99), 2),
        "requests": n,
    }


def usage(pid: int) -> tuple[float, int]:
    process = psutil.Process(pid)
    times = process.cpu_times()
    return times.user + times.system, process.memory_info().rss


async def measure_window(pid: int, seconds: float) -> dict[str, float]:
    cpu0, _ = usage(pid)
    started = time.monotonic()
    peak = 0
    while time.monotonic() - started < seconds:
        await asyncio.sleep(0.5)
        peak = max(peak, usage(pid)[1])
    cpu1, rss = usage(pid)
    elapsed = time.monotonic() - started
    return {
        "cpu_percent": round((cpu1 - cpu0) / elapsed * 100, 1),
        "rss_mib": round(rss / 2**20, 1),
        "rss_peak_mib": round(max(peak, rss) / 2**20, 1),
        "seconds": round(elapsed, 1),
    }


async def one_agent_away(
    *, events: Events, args: list[str], work: Path, name: str, freeze: bool, within: float
) -> float:
    """Start one simulated agent, wait until live shows it online, kill or freeze it: seconds."""
    async with running(f"away-{name}", args, work, stdout_pipe=True) as proc:
        if proc.process.stdout is None:
            raise BenchError("no pipe to the single agent")
        line = await asyncio.wait_for(proc.process.stdout.readline(), 60)
        if not line.startswith(b"READY"):
            raise BenchError(f"single agent did not start: {proc.log_tail()}")
        await events.wait(name, "online", 0.0, within=30)
        went = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGSTOP if freeze else signal.SIGKILL)
        try:
            return await events.wait(name, "offline", went, within=within)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


async def bench(p: Plan, work: Path) -> dict[str, Any]:  # noqa: PLR0915 - one script, top to bottom
    data_dir = work / "server"
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    server_args = [str(BIN / "tunnel-server"), "run", "--listen", f"127.0.0.1:{port}",
                   "--data-dir", str(data_dir), "--public-name", "127.0.0.1"]  # fmt: skip
    load = [sys.executable, str(HERE / "console_load.py"), "--data-dir", str(data_dir),
            "--url", url, "--work", str(work / "load")]  # fmt: skip
    report: dict[str, Any] = {"mode": p.mode, "plan": asdict(p)}
    async with running("tunnel-server", server_args, work) as server:
        await wait_for_port(port, 30, server)
        await asyncio.sleep(0.5)
        token = (data_dir / "admin-token").read_text().strip()
        context = ssl.create_default_context(cafile=str(data_dir / "ca.crt"))
        connector = aiohttp.TCPConnector(ssl=context, limit=4)
        async with aiohttp.ClientSession(connector=connector) as http:
            idle = await measure_window(server.pid, 2.0)
            report["server_idle"] = idle
            log(f"idle server: {idle}")
            started = time.monotonic()
            agents_args = [*load, "--agents", str(p.agents), "--registered", str(p.registered),
                           "--interval", str(p.interval)]  # fmt: skip
            async with running("load", agents_args, work, stdout_pipe=True) as loader:
                if loader.process.stdout is None:
                    raise BenchError("no pipe to the load process")
                line = await asyncio.wait_for(loader.process.stdout.readline(), 300)
                if not line.startswith(b"READY"):
                    raise BenchError(f"load process failed: {loader.log_tail()}")
                report["connect_seconds"] = round(time.monotonic() - started, 1)
                log(f"{p.agents} agents reporting after {report['connect_seconds']} s")
                events = Events()
                async with asyncio.TaskGroup() as group:
                    follower = group.create_task(
                        events.follow(http, url, token), name="bench.events"
                    )
                    await asyncio.wait_for(events.ready.wait(), 30)
                    loaded = await measure_window(server.pid, p.window)
                    loaded["agents"] = p.agents
                    loaded["reports_per_second"] = round(p.agents / p.interval, 1)
                    loaded["rss_per_agent_kib"] = round(
                        (loaded["rss_mib"] - idle["rss_mib"]) * 1024 / p.agents, 1
                    )
                    report["server_loaded"] = loaded
                    log(f"loaded server: {loaded}")
                    report["api"] = {
                        "nodes_in_store": p.registered,
                        "node_list": await latency(
                            http, url + "/api/v1/nodes", token, p.api_requests
                        ),
                        "overview": await latency(
                            http, url + "/api/v1/overview", token, p.api_requests // 2
                        ),
                        "healthz_baseline": await latency(
                            http, url + "/healthz", token, p.api_requests
                        ),
                    }
                    log(f"api: {report['api']}")
                    single = [*load, "--agents", "1", "--interval", str(p.interval)]
                    killed = []
                    for i in range(p.kills):
                        name = f"away{i}"
                        seconds = await one_agent_away(
                            events=events,
                            args=[*single, "--prefix", name],
                            work=work,
                            name=f"{name}-0000",
                            freeze=False,
                            within=60,
                        )
                        killed.append(round(seconds, 3))
                    report["offline_after_kill_s"] = {
                        "runs": killed,
                        "median": round(sorted(killed)[len(killed) // 2], 3),
                        "max": max(killed),
                    }
                    log(f"killed agent shown offline after {killed} s")
                    if p.freeze:
                        frozen = await one_agent_away(
                            events=events,
                            args=[*single, "--prefix", "frozen"],
                            work=work,
                            name="frozen-0000",
                            freeze=True,
                            within=120,
                        )
                        lease = max(5.0, 3 * p.interval)
                        report["offline_after_freeze_s"] = {
                            "seconds": round(frozen, 2),
                            "lease_s": lease,
                            "tunnel_keepalive_timeout_s": 45.0,
                        }
                        log(f"frozen agent shown offline after {frozen:.1f} s (lease {lease} s)")
                    follower.cancel()
    return report


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
    }


def markdown(report: dict[str, Any], command: str) -> str:
    m, idle, loaded = report["machine"], report["server_idle"], report["server_loaded"]
    api = report["api"]
    kill, freeze = report["offline_after_kill_s"], report.get("offline_after_freeze_s")
    lines = [
        "## Console: node status at fleet scale",
        "",
        (
            "`scripts/bench/console --quick` (under a minute: 200 agents every 2 s, the same "
            "100 reports/s; last stdout line one JSON object) or `scripts/bench/console --out "
            "docs/benchmarks.md` (1,000 agents every 10 s; rewrites this section)."
        ),
        "",
        (
            f"Run {report['date']} with `{command}` ({report['mode']} mode, "
            f"{report['elapsed_s']:.0f} s). Machine: {m['cpus']} CPUs, {m['ram_gib']} GiB RAM, "
            f"Linux {m['kernel']}, Python {m['python']}, aiohttp {m['aiohttp']}. Agents are "
            "simulated in one separate load process with real identities and real mTLS tunnel "
            "sessions, sending the agent's own report encoder's lines; the load process shares "
            "the CPUs."
        ),
        "",
        "### Server while agents report",
        "",
        "| | agents | reports/s | server CPU % | RSS MiB | RSS per agent KiB |",
        "|---|--:|--:|--:|--:|--:|",
        f"| idle (baseline) | 0 | 0 | {idle['cpu_percent']} | {idle['rss_mib']} | - |",
        (
            f"| reporting every {report['plan']['interval']:g} s | {loaded['agents']} | "
            f"{loaded['reports_per_second']} | {loaded['cpu_percent']} | {loaded['rss_mib']} | "
            f"{loaded['rss_per_agent_kib']} |"
        ),
        "",
        (
            f"### API latency with {api['nodes_in_store']} nodes in the store "
            "(ms, sequential, under the load above)"
        ),
        "",
        "| endpoint | p50 | p99 | requests |",
        "|---|--:|--:|--:|",
    ]
    for label, key in (
        ("`GET /api/v1/nodes` (all 1,000 rows)", "node_list"),
        ("`GET /api/v1/overview`", "overview"),
        ("`GET /healthz` (baseline: the framework's floor)", "healthz_baseline"),
    ):
        f = api[key]
        lines.append(f"| {label} | {f['p50_ms']} | {f['p99_ms']} | {f['requests']} |")
    lines += [
        "",
        "### From an agent going away to the console's live stream showing it offline",
        "",
        "| how it went away | seconds | what decides it |",
        "|---|--:|---|",
        (
            f"| killed (SIGKILL; the socket closes) | median {kill['median']}, max {kill['max']} "
            f"({len(kill['runs'])} runs) | the status stream ends: offline at once, "
            "then the next live batch (every 0.5 s) |"
        ),
    ]
    if freeze:
        lines.append(
            f"| frozen (SIGSTOP; the socket stays open) | {freeze['seconds']} | the lease: "
            f"{freeze['lease_s']:g} s = 3 report intervals (the tunnel keepalive alone would "
            f"take {freeze['tunnel_keepalive_timeout_s']:g} s) |"
        )
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    p = plan(quick=args.quick, agents=args.agents)
    work = Path(tempfile.mkdtemp(prefix="console-bench-"))
    started = time.monotonic()
    try:
        report = await bench(p, work)
    except BenchError as error:
        log(f"failed: {error}; logs kept in {work}")
        print(json.dumps({"mode": p.mode, "error": str(error), "work": str(work)}))
        return 1
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["machine"] = machine()
    report["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.out:
        command = "scripts/bench/console" + (" --quick" if args.quick else "")
        command += f" --out {args.out}"
        text = args.out.read_text() if args.out.exists() else ""
        args.out.write_text(replace_section(text, markdown(report, command), START, END))
        log(f"wrote the console section of {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="under a minute: 200 agents")
    parser.add_argument("--agents", type=int, help="simulated agents (quick 200, full 1000)")
    parser.add_argument("--out", type=Path, help="rewrite the console section of this file")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
