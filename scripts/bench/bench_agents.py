"""Idle agents on one tunnel-server process: sessions held, RSS per agent, reconnect time.

One round per agent count, each with a fresh ``tunnel-server run`` (own data dir and port):

1. start the server, wait for ``/readyz``;
2. start ``agents_load.py`` (a separate process) that creates N tokens, joins N nodes and
   waits; the server's RSS is sampled now (*before*);
3. tell it to connect; wait until all N sessions are up (the server's ``tunnel_server_sessions``
   gauge must say N too), let it settle, sample the server's RSS again (*after*):
   RSS per agent = (after - before) / N;
4. idle window: the server's and the load process's CPU share while nothing but keepalives
   (and the server's periodic ``last_seen`` writes) happen;
5. SIGKILL the server and start it again on the same port and data dir; the time until the
   load process has all N sessions up again, counted from the kill (and from ``/readyz``),
   with the restarted server's admission counters (503s, connections dropped before TLS) and
   how busy the rest of the machine was meanwhile.

``AgentsPlan.admission`` restarts the same fleet once per mode of the server's admission
control: as shipped (``on``), switched off (``off``), or only one of its two limits
(``setups``: the 503 cap, ``handshakes``: the TLS handshake cap); see ``ADMISSION``.
``AgentsPlan.builds`` restarts it once per server build as well (each a ``PYTHONPATH``, e.g. a
worktree of the old code and one of the new), and ``restarts`` repeats the whole cycle: so one
fleet and one load process serve an A/B of the server's code, alternating in the same period.
Steps 2-4 run once per agent count, step 5 once per (build, mode), ``idle_s`` apart (with
builds, step 4 is repeated after each restart: the idle cost of each build). With
``profile_dir`` each restarted server is sampled by ``py-spy record`` (raw collapsed stacks)
from its start until every agent is back; its CPU figures are then not comparable.

Every process is stopped at the end of the round, also on error (``bench_procs.running``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from bench_paths import READY_TIMEOUT_S, server_argv, wait_server_ready
from bench_procs import BenchError, Proc, free_port, running

HERE = Path(__file__).resolve().parent
KIB = 1024
MIB = 1 << 20


ADMISSION: dict[str, tuple[str, ...]] = {
    "on": (),
    "off": ("--max-tls-handshakes", "0", "--max-session-setups", "0"),
    "setups": ("--max-tls-handshakes", "0"),
    "handshakes": ("--max-session-setups", "0"),
}
"""``tunnel-server run`` arguments per admission mode: ``on`` is the server as shipped."""

ADMISSION_COUNTERS = (
    "tunnel_server_session_refused_total",
    "tunnel_server_tls_dropped_total",
    "tunnel_server_tls_handshakes_total",
)


@dataclass(frozen=True, slots=True)
class AgentsPlan:
    counts: tuple[int, ...]
    settle_s: float
    idle_s: float
    reconnect_timeout_s: float
    backoff_base: float
    backoff_cap: float
    join_timeout_s: float
    bringup_timeout_s: float = 900.0
    admission: tuple[str, ...] = ("on",)
    builds: tuple[tuple[str, str], ...] = ()
    """(label, PYTHONPATH) of the server per restart, alternated; empty: the bench's own."""
    restarts: int = 1
    """How many times the whole (build, admission) cycle is run on the same fleet."""
    profile_dir: str | None = None
    """Where ``py-spy record`` writes each restarted server's samples; None: no profile."""

    def schedule(self) -> list[tuple[str, tuple[str, str] | None]]:
        """(admission mode, build) of each restart, in order."""
        builds: tuple[tuple[str, str] | None, ...] = self.builds or (None,)
        return [
            (mode, build)
            for _ in range(self.restarts)
            for build in builds
            for mode in self.admission
        ]


def make_agents_plan(
    *,
    quick: bool,
    counts: tuple[int, ...] | None = None,
    admission: tuple[str, ...] = ("on",),
    builds: tuple[tuple[str, str], ...] = (),
    restarts: int = 1,
    profile_dir: Path | None = None,
) -> AgentsPlan:
    profile = None if profile_dir is None else str(profile_dir)
    if quick:
        return AgentsPlan(
            counts=counts if counts is not None else (500,), settle_s=1.0, idle_s=3.0,
            reconnect_timeout_s=30.0, backoff_base=1.0, backoff_cap=10.0, join_timeout_s=60.0,
            bringup_timeout_s=60.0, admission=admission, builds=builds, restarts=restarts,
            profile_dir=profile,
        )  # fmt: skip
    return AgentsPlan(
        counts=counts if counts is not None else (5000, 10000), settle_s=5.0, idle_s=35.0,
        reconnect_timeout_s=180.0, backoff_base=1.0, backoff_cap=60.0,
        # 10,000 joins took over 600 s on a busy machine (load average 17): allow 0.12 s each.
        join_timeout_s=max(600.0, 0.12 * max(counts or (0,))), admission=admission,
        builds=builds, restarts=restarts, profile_dir=profile,
    )  # fmt: skip


def server_env(build: tuple[str, str] | None) -> dict[str, str] | None:
    """The environment of a server of ``build``: its code first on the path."""
    return None if build is None else {"PYTHONPATH": build[1]}


def py_spy() -> str:
    """The ``py-spy`` next to this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if found is None:
        raise BenchError(
            "--storm-profile needs py-spy (pip install py-spy) next to python or on PATH"
        )
    return found


@contextlib.asynccontextmanager
async def profiled(pid: int, out: Path | None) -> AsyncIterator[None]:
    """``py-spy record`` of ``pid`` for the block (raw collapsed stacks to ``out``)."""
    if out is None:
        yield
        return
    argv = [py_spy(), "record", "--pid", str(pid), "--rate", "100", "--nonblocking",
            "--format", "raw", "--output", str(out)]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit for this process and the ones it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error as exc:
        raise BenchError(f"cannot read the RSS of process {pid}: {exc}") from exc


def cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error as exc:
        raise BenchError(f"cannot read the CPU time of process {pid}: {exc}") from exc
    return float(times.user + times.system)


class LoadProcess:
    """The JSON-lines conversation with ``agents_load.py``."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.last_status: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.mark: float | None = None
        """A monotonic time: ``status_at_mark`` keeps the last status from before it."""
        self.status_at_mark: dict[str, Any] = {}

    async def next_event(self, names: set[str], within_s: float) -> dict[str, Any]:
        """The next line whose ``event`` is in ``names`` (status lines are kept, not returned)."""
        stdout = self.proc.process.stdout
        if stdout is None:
            raise BenchError("no stdout pipe from the load process")
        deadline = time.monotonic() + within_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            line = await asyncio.wait_for(stdout.readline(), left)
            if not line:
                self.proc.check_alive()
                await asyncio.wait_for(self.proc.process.wait(), 5)
                self.proc.check_alive()
                raise BenchError(
                    f"the load process closed its stdout; log:\n{self.proc.log_tail()}"
                )
            try:
                event: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "status":
                self.last_status = event
                if self.mark is not None and float(event.get("t", 0.0)) <= self.mark:
                    self.status_at_mark = event
            if event.get("event") in names:
                self.events.append(event)
                return event

    async def send(self, command: str) -> None:
        stdin = self.proc.process.stdin
        if stdin is None:
            raise BenchError("no stdin pipe to the load process")
        stdin.write(command.encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await stdin.drain()


async def server_metrics(port: int, ca_file: Path, names: tuple[str, ...]) -> dict[str, float]:
    """Samples of the server's ``/metrics`` whose name is in ``names``, keyed by name{labels}."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"https://127.0.0.1:{port}/metrics", ssl=context) as response,
        ):
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):  # a family this server has, even with no sample yet
            family = line.split()[2]
            for name in (family, family + "_total"):
                if name in names:
                    samples.setdefault(name, 0.0)
            continue
        key, _, value = line.rpartition(" ")
        if key.split("{", 1)[0] in names:
            samples[key] = float(value)
    return samples


async def server_sessions(port: int, ca_file: Path) -> int | None:
    """The server's own ``tunnel_server_sessions`` gauge from ``/metrics``."""
    value = (await server_metrics(port, ca_file, ("tunnel_server_sessions",))).get(
        "tunnel_server_sessions"
    )
    return None if value is None else int(value)


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def listen_drops() -> int | None:
    """TcpExt ListenOverflows + ListenDrops of this network namespace (whole machine)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header.startswith("TcpExt:"):
            row = dict(zip(header.split()[1:], values.split()[1:], strict=False))
            return int(row.get("ListenOverflows", 0)) + int(row.get("ListenDrops", 0))
    return None


async def _kill(proc: Proc) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.process.wait(), 10)


async def _wait_all(
    load: LoadProcess, count: int, within_s: float, *, after: float
) -> tuple[float | None, int]:
    """Monotonic time all ``count`` were up again (after ``after``), or None; and the count."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            event = await load.next_event({"all_connected"}, deadline - time.monotonic())
        except TimeoutError:
            break
        if float(event["t"]) > after:
            return float(event["t"]), count
    return None, int(load.last_status.get("connected", 0))


async def _bring_up(
    load: LoadProcess, server: Proc, plan: AgentsPlan, *, count: int, port: int, ca_file: Path
) -> dict[str, Any]:
    """Joins, then all sessions up: join and connect times, RSS before/after, sessions held."""
    _log(f"agents {count}: creating tokens and joining")
    try:
        joined = await load.next_event({"joined"}, plan.join_timeout_s)
    except TimeoutError:
        raise BenchError(f"{count} joins took over {plan.join_timeout_s:.0f} s") from None
    figures: dict[str, Any] = {"tokens_s": joined["tokens_s"], "join_s": joined["join_s"]}
    figures["load_fd_limit"] = joined.get("fd_limit")
    await asyncio.sleep(plan.settle_s)
    rss_before, load_before = rss(server.pid), rss(load.proc.pid)
    _log(f"agents {count}: connecting")
    started = time.monotonic()
    await load.send("connect")
    try:
        await load.next_event({"connected"}, plan.bringup_timeout_s)
    except TimeoutError:
        up = load.last_status.get("connected", 0)
        raise BenchError(
            f"only {up} of {count} sessions came up in {plan.bringup_timeout_s:.0f} s "
            f"(failures: {load.last_status.get('failures')})"
        ) from None
    figures["connect_s"] = round(time.monotonic() - started, 2)
    await asyncio.sleep(plan.settle_s)
    held = await server_sessions(port, ca_file)
    rss_after, load_after = rss(server.pid), rss(load.proc.pid)
    return figures | {
        "sessions_held": held,
        "server_rss_before_MiB": round(rss_before / MIB, 1),
        "server_rss_after_MiB": round(rss_after / MIB, 1),
        "rss_per_agent_KB": round((rss_after - rss_before) / count / KIB, 1),
        "load_rss_MiB": round(load_after / MIB, 1),
        "load_rss_per_agent_KB": round((load_after - load_before) / count / KIB, 1),
    }


async def _idle(load: LoadProcess, server: Proc, plan: AgentsPlan) -> dict[str, Any]:
    """CPU shares of the server and the load process while the sessions only keep alive."""
    cpu0, load0, t0 = cpu_seconds(server.pid), cpu_seconds(load.proc.pid), time.monotonic()
    await asyncio.sleep(plan.idle_s)
    elapsed = time.monotonic() - t0
    return {
        "server_idle_cpu_pct": round(100 * (cpu_seconds(server.pid) - cpu0) / elapsed, 1),
        "load_idle_cpu_pct": round(100 * (cpu_seconds(load.proc.pid) - load0) / elapsed, 1),
        "idle_window_s": round(elapsed, 1),
    }


async def _restart(
    stack: contextlib.AsyncExitStack,
    load: LoadProcess,
    server: Proc,
    plan: AgentsPlan,
    *,
    count: int,
    argv: list[str],
    workdir: Path,
    tag: str = "",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """SIGKILL the server, start it again with ``argv``, time until every session is back.

    The new server process is under ``_server`` in the answer (the caller takes it out).
    """
    port = int(argv[argv.index("--listen") + 1].rsplit(":", 1)[1])
    ca_file = Path(argv[argv.index("--data-dir") + 1]) / "ca.crt"
    _log(f"agents {count}: restarting the server (SIGKILL)")
    drops_before = listen_drops()
    load_avg_before = os.getloadavg()
    machine0, load_all0 = machine_busy_s(), cpu_seconds(load.proc.pid)
    killed = time.monotonic()
    load.mark, load.status_at_mark = killed, load.last_status
    await _kill(server)
    name = f"agents-{count}-server-{tag or 'restarted'}"
    again = await stack.enter_async_context(running(name, argv, workdir, env=env))
    profile = (
        None if plan.profile_dir is None else Path(plan.profile_dir) / f"{name}.{again.pid}.txt"
    )
    async with profiled(again.pid, profile):
        # Every node is knocking while it starts: allow more than a quiet start needs.
        await wait_server_ready(port, ca_file, max(READY_TIMEOUT_S, 60.0), again)
        ready = time.monotonic()
        load_cpu0, server_cpu0 = cpu_seconds(load.proc.pid), cpu_seconds(again.pid)
        all_at, reached = await _wait_all(load, count, plan.reconnect_timeout_s, after=killed)
        server_cpu = cpu_seconds(again.pid) - server_cpu0
    # Whatever the server and the load process did not use of the machine's CPU meanwhile was
    # other work (this script's own share is negligible): it competes with both.
    window = time.monotonic() - killed
    ours = (cpu_seconds(again.pid) - server_cpu0) + (cpu_seconds(load.proc.pid) - load_all0)
    others = max(0.0, machine_busy_s() - machine0 - ours)
    counters = await server_metrics(port, ca_file, ADMISSION_COUNTERS)
    failures_before: dict[str, int] = load.status_at_mark.get("failures", {})
    if all_at is None:
        _log(f"agents {count}: only {reached} reconnected in {plan.reconnect_timeout_s:.0f} s")
    else:
        _log(f"agents {count}: all reconnected {all_at - killed:.1f} s after the kill")
    return {
        "restart_ready_s": round(ready - killed, 2),
        "reconnected": reached,
        "reconnect_s": None if all_at is None else round(all_at - killed, 2),
        "reconnect_after_ready_s": None if all_at is None else round(all_at - ready, 2),
        "reconnect_timeout_s": plan.reconnect_timeout_s,
        "reconnect_server_cpu_s": round(server_cpu, 1),
        "reconnect_server_cpu_ms_per_agent": round(1000 * server_cpu / count, 2),
        "reconnect_load_cpu_s": round(cpu_seconds(load.proc.pid) - load_cpu0, 1),
        "server_rss_after_reconnect_MiB": round(rss(again.pid) / MIB, 1),
        "connect_failures": {  # during the reconnect only, not the first bring-up
            kind: n - failures_before.get(kind, 0)
            for kind, n in load.last_status.get("failures", {}).items()
            if n > failures_before.get(kind, 0)
        },
        "listen_queue_drops": (
            None if drops_before is None else (listen_drops() or drops_before) - drops_before
        ),
        "server_counters": counters,
        "other_cpu_pct": round(100 * others / (window * (os.cpu_count() or 1)), 1),
        "load_avg": [round(load_avg_before[0], 2), round(os.getloadavg()[0], 2)],
        "profile": None if profile is None else str(profile),
        "_server": again,
    }


async def agents_round(count: int, plan: AgentsPlan, workdir: Path) -> list[dict[str, Any]]:
    """One joined fleet of ``count`` agents, restarted once per admission mode of ``plan``.

    The fleet comes up against a server started in the first mode; each restart starts the
    server in the next mode, after at least ``idle_s`` of quiet so every session has lived
    past the agents' ``healthy_after`` (their spread applies, as after a real restart). So the
    modes are compared on the same fleet, minutes apart, not across separate runs.
    """
    folder = workdir / f"agents-{count}"
    folder.mkdir(mode=0o700)
    data_dir = folder / "server"
    port = free_port()
    base = server_argv(data_dir, port)
    shared: dict[str, Any] = {
        "agents": count,
        "restart": "SIGKILL, then tunnel-server run again on the same port and data dir",
        "backoff": {"base_s": plan.backoff_base, "cap_s": plan.backoff_cap, "jitter": "full"},
        "bring_up_admission": plan.admission[0],
    }
    rounds: list[dict[str, Any]] = []
    schedule = plan.schedule()
    async with contextlib.AsyncExitStack() as stack:
        argv = [*base, *ADMISSION[plan.admission[0]]]
        server = await stack.enter_async_context(
            running(f"agents-{count}-server", argv, workdir, env=server_env(schedule[0][1]))
        )
        await wait_server_ready(port, data_dir / "ca.crt", READY_TIMEOUT_S, server)
        load_argv = [
            sys.executable, str(HERE / "agents_load.py"), "--server", f"https://127.0.0.1:{port}",
            "--server-data-dir", str(data_dir), "--count", str(count), "--workdir", str(folder),
            "--backoff-base", str(plan.backoff_base), "--backoff-cap", str(plan.backoff_cap),
        ]  # fmt: skip
        proc = await stack.enter_async_context(
            running(f"agents-{count}-load", load_argv, workdir, stdout_pipe=True, stdin_pipe=True)
        )
        load = LoadProcess(proc)
        shared |= await _bring_up(
            load, server, plan, count=count, port=port, ca_file=data_dir / "ca.crt"
        )
        _log(f"agents {count}: {shared['sessions_held']} sessions held; idle {plan.idle_s:.0f} s")
        shared |= await _idle(load, server, plan)
        for i, (admission, build) in enumerate(schedule):
            if i and not plan.builds:
                await asyncio.sleep(plan.idle_s)
            argv = [*base, *ADMISSION[admission]]
            figures = shared | {"admission": admission, "server_args": list(ADMISSION[admission])}
            tag = admission
            if build is not None:
                figures |= {"build": build[0], "build_pythonpath": build[1]}
                tag = f"{build[0]}-{admission}-{i}"
            _log(f"agents {count}: restart {i + 1}/{len(schedule)}: {tag}")
            figures |= await _restart(
                stack, load, server, plan, count=count, argv=argv, workdir=workdir, tag=tag,
                env=server_env(build),
            )  # fmt: skip
            figures["status"] = "measured"
            rounds.append(figures)
            server = figures.pop("_server")
            if figures["reconnect_s"] is None and i + 1 < len(schedule):
                # The next mode must start from a whole fleet: wait for the stragglers.
                back, _ = await _wait_all(load, count, plan.reconnect_timeout_s, after=0.0)
                if back is None:
                    break
            if plan.builds:
                # The quiet before the next restart, measured: what each build's idle sessions cost.
                figures["idle_after"] = await _idle(load, server, plan)
        await load.send("stop")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.process.wait(), 10)
    return rounds


async def measure_agents(plan: AgentsPlan, workdir: Path) -> list[dict[str, Any]]:
    """Every round of ``plan``; a failed round is reported as failed, not as numbers."""
    limit = raise_fd_limit()
    results: list[dict[str, Any]] = []
    for count in plan.counts:
        if count + 256 > limit:
            results.append(
                {
                    "agents": count,
                    "status": "not measured",
                    "reason": f"RLIMIT_NOFILE is {limit}; {count} sessions need more",
                }
            )
            continue
        try:
            results += await agents_round(count, plan, workdir)
        except (BenchError, OSError) as exc:
            _log(f"agents {count} failed: {exc}")
            results.append({"agents": count, "status": "failed", "reason": str(exc)})
    return results


def agent_goals(rounds: list[dict[str, Any]]) -> dict[str, bool]:
    """Issue 3's idle-agent goals, judged at the largest measured round."""
    measured = [
        r for r in rounds if r.get("status") == "measured" and r.get("admission", "on") == "on"
    ]  # the goals are about the server as shipped
    if not measured:
        return {}
    top = max(measured, key=lambda r: int(r["agents"]))
    n = int(top["agents"])
    met = {f"{n:,} idle agents at < 50 KB RSS each": float(top["rss_per_agent_KB"]) < 50}
    reconnect = top.get("reconnect_s")
    met[f"all {n:,} reconnected within 60 s of a server restart"] = (
        reconnect is not None and float(reconnect) <= 60
    )
    if n < 10_000:
        met["goal size reached (10,000 agents)"] = False
    return met
