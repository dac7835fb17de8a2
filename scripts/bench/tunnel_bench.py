"""Tunnel benchmark: direct TCP vs our tunnel vs ``ssh -R`` vs chisel, side by side in one run.

Run it through ``scripts/bench/tunnel``, which installs the prerequisites first. Progress goes
to stderr; stdout gets a short summary whose last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bench_stats as st
import psutil
from bench_agents import ADMISSION, agent_goals, make_agents_plan, measure_agents
from bench_paths import LABELS, Address, Endpoint, NotMeasuredError, paths
from bench_procs import BenchError, run, running, tree_cpu_seconds

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
BASELINES = ("ssh", "ssh-aesgcm", "chisel", "chisel-plain")


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    warmup_bytes: int
    bulk_1_bytes: int
    bulk_1_runs: int
    streams: int
    bulk_16_bytes_each: int
    bulk_16_runs: int
    latency_s: int
    latency_runs: int
    latency_warmup_s: int
    concurrency: tuple[int, ...]
    wrk_threads: int
    time_budget_s: int


def make_plan(*, quick: bool) -> Plan:
    # On a small machine the load generator must not take the cores the path needs.
    threads = max(1, min(4, (len(os.sched_getaffinity(0)) or 1) // 2))
    if quick:
        return Plan(
            mode="quick", warmup_bytes=16 * MIB, bulk_1_bytes=200 * MIB, bulk_1_runs=1,
            streams=16, bulk_16_bytes_each=16 * MIB, bulk_16_runs=1, latency_s=2,
            latency_runs=1, latency_warmup_s=1, concurrency=(1, 100), wrk_threads=threads,
            time_budget_s=150,
        )  # fmt: skip
    return Plan(
        mode="full", warmup_bytes=64 * MIB, bulk_1_bytes=1024 * MIB, bulk_1_runs=3,
        streams=16, bulk_16_bytes_each=64 * MIB, bulk_16_runs=3, latency_s=5,
        latency_runs=3, latency_warmup_s=2, concurrency=(1, 100), wrk_threads=threads,
        time_budget_s=2700,
    )  # fmt: skip


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- measurements


def _client_args(endpoint: Endpoint, *, curl: bool) -> list[str]:
    args: list[str] = []
    for name, value in endpoint.headers.items():
        args += ["-H", f"{name}: {value}"]
    if curl and endpoint.ca_file is not None:
        args += ["--cacert", str(endpoint.ca_file)]
    return args


def _transfer_timeout(size: int) -> float:
    """Generous but bounded: 10 s plus the size at 5 MB/s."""
    return 10.0 + size / (5 * st.MB)


async def curl_get(endpoint: Endpoint, size: int, *, sharing: int = 1) -> st.CurlResult:
    """Download ``size`` bytes; ``sharing`` transfers run at once (the time limit scales)."""
    timeout = _transfer_timeout(size * sharing)
    argv = [
        "curl", "-sS", "--fail", "--noproxy", "*", "-o", "/dev/null",
        "--max-time", f"{timeout:.0f}", "-w", "%{size_download} %{time_total}",
        *_client_args(endpoint, curl=True), endpoint.url(f"/bulk?bytes={size}"),
    ]  # fmt: skip
    status, out, err = await run(argv, timeout + 5)
    if status != 0:
        raise BenchError(f"curl {endpoint.url('/bulk')} failed (status {status}): {err.strip()}")
    result = st.parse_curl(out)
    if result.size != size:
        raise BenchError(f"curl received {result.size} bytes of {size} through {endpoint.base_url}")
    return result


def cpu_by_process(endpoint: Endpoint) -> list[float]:
    """CPU seconds so far of each of the path's processes (with its children), in order."""
    return [tree_cpu_seconds([pid]) for pid in endpoint.cpu_pids]


def cpu_spent(before: Sequence[float], after: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(before, after, strict=True)]


async def bulk_single(endpoint: Endpoint, size: int) -> tuple[float, float | None, list[float]]:
    """One stream: (MB/s, CPU s of the path's processes per GiB, the same per process)."""
    cpu_before = cpu_by_process(endpoint)
    result = await curl_get(endpoint, size)
    spent = cpu_spent(cpu_before, cpu_by_process(endpoint))
    per_gib = [cpu / (size / st.GIB) for cpu in spent]
    total = sum(per_gib) if endpoint.cpu_pids else None
    return st.mb_per_s(result.size, result.seconds), total, per_gib


async def bulk_parallel(endpoint: Endpoint, streams: int, size_each: int) -> float:
    """``streams`` concurrent downloads: aggregate MB/s over the wall time of the slowest."""
    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for i in range(streams):
                group.create_task(curl_get(endpoint, size_each, sharing=streams), name=f"curl-{i}")
    except* BenchError as errors:
        raise errors.exceptions[0] from None
    return st.mb_per_s(streams * size_each, time.perf_counter() - started)


async def wrk(
    endpoint: Endpoint, connections: int, seconds: int, threads: int
) -> tuple[st.WrkResult, list[float]]:
    """The result of wrk and the CPU ms per request of each of the path's processes."""
    argv = [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s",
        "--timeout", "5s", "--latency", *_client_args(endpoint, curl=False),
        endpoint.url("/small"),
    ]  # fmt: skip
    cpu_before = cpu_by_process(endpoint)
    status, out, err = await run(argv, seconds + 30)
    spent = cpu_spent(cpu_before, cpu_by_process(endpoint))
    if status != 0:
        raise BenchError(f"wrk failed (status {status}): {err.strip() or out.strip()}")
    result = st.parse_wrk(out)
    if result.non_2xx or result.socket_errors:
        raise BenchError(
            f"wrk through {endpoint.base_url}: {result.non_2xx} non-2xx responses, "
            f"{result.socket_errors} socket errors"
        )
    return result, [1000 * cpu / max(1, result.requests) for cpu in spent]


# ---------------------------------------------------------------- the run


@dataclass(slots=True)
class PathRun:
    name: str
    endpoint: Endpoint | None
    status: str = "measured"
    reason: str = ""
    bulk_1: list[float] | None = None
    cpu_1: list[float] | None = None
    cpu_1_by_process: list[list[float]] | None = None
    bulk_16: list[float] | None = None
    latency: dict[int, list[st.WrkResult]] | None = None
    cpu_ms_per_request: dict[int, list[list[float]]] | None = None

    @property
    def live(self) -> bool:
        return self.endpoint is not None and self.status == "measured"


async def _each(
    runs: Sequence[PathRun],
    figure: str,
    step: Callable[[PathRun, Endpoint], Coroutine[Any, Any, None]],
) -> None:
    """Run ``step`` for each live path in turn; a failure marks that path failed, not the run."""
    for path in runs:
        if not path.live or path.endpoint is None:
            continue
        log(f"{figure}: {path.name}")
        try:
            await step(path, path.endpoint)
        except (BenchError, st.ParseError) as exc:
            path.status, path.reason = "failed", f"{figure}: {exc}"
            log(f"{path.name} failed during {figure}: {exc}")


async def measure_bulk(runs: Sequence[PathRun], plan: Plan) -> None:
    async def warm(_path: PathRun, endpoint: Endpoint) -> None:
        await curl_get(endpoint, plan.warmup_bytes)

    await _each(runs, "warm-up", warm)

    for i in range(plan.bulk_1_runs):

        async def one(path: PathRun, endpoint: Endpoint) -> None:
            rate, cpu, by_process = await bulk_single(endpoint, plan.bulk_1_bytes)
            path.bulk_1 = [*(path.bulk_1 or []), rate]
            if cpu is not None:
                path.cpu_1 = [*(path.cpu_1 or []), cpu]
                path.cpu_1_by_process = [*(path.cpu_1_by_process or []), by_process]

        await _each(runs, f"1 stream, run {i + 1}/{plan.bulk_1_runs}", one)

    for i in range(plan.bulk_16_runs):

        async def many(path: PathRun, endpoint: Endpoint) -> None:
            rate = await bulk_parallel(endpoint, plan.streams, plan.bulk_16_bytes_each)
            path.bulk_16 = [*(path.bulk_16 or []), rate]

        await _each(runs, f"{plan.streams} streams, run {i + 1}/{plan.bulk_16_runs}", many)


async def measure_latency(runs: Sequence[PathRun], plan: Plan) -> None:
    for connections in plan.concurrency:
        for i in range(plan.latency_runs):

            async def latency(path: PathRun, endpoint: Endpoint, c: int = connections) -> None:
                if not (path.latency or {}).get(c):
                    await wrk(endpoint, c, plan.latency_warmup_s, plan.wrk_threads)
                result, cpu = await wrk(endpoint, c, plan.latency_s, plan.wrk_threads)
                latencies = path.latency = path.latency or {}
                latencies[c] = [*latencies.get(c, []), result]
                if endpoint.cpu_pids:
                    per_request = path.cpu_ms_per_request = path.cpu_ms_per_request or {}
                    per_request[c] = [*per_request.get(c, []), cpu]

            figure = f"latency at {connections} connections, run {i + 1}/{plan.latency_runs}"
            await _each(runs, figure, latency)


async def start_target(stack: contextlib.AsyncExitStack, workdir: Path) -> Address:
    argv = [sys.executable, str(HERE / "bench_target.py"), "--host", "127.0.0.1", "--port", "0"]
    target = await stack.enter_async_context(running("target", argv, workdir, stdout_pipe=True))
    if target.process.stdout is None:
        raise BenchError("no stdout pipe from the target")
    try:
        line = await asyncio.wait_for(target.process.stdout.readline(), 15)
    except TimeoutError:
        raise BenchError("the target did not start within 15 s") from None
    if not line.startswith(b"PORT "):
        target.check_alive()
        raise BenchError(f"unexpected first line from the target: {line!r}")
    return Address("127.0.0.1", int(line.split()[1]))


async def bench(
    selected: Sequence[str], plan: Plan, workdir: Path, ssh_cipher: str | None
) -> list[PathRun]:
    factories = paths(ssh_cipher)
    runs: list[PathRun] = []
    async with contextlib.AsyncExitStack() as stack:
        target = await start_target(stack, workdir)
        log(f"target on {target}")
        for name in [n for n in factories if n in selected]:
            log(f"starting path {name}")
            try:
                endpoint = await stack.enter_async_context(factories[name](target, workdir))
            except NotMeasuredError as exc:
                runs.append(PathRun(name, None, status="not measured", reason=str(exc)))
                log(f"{name}: not measured: {exc}")
                continue
            except (BenchError, OSError) as exc:
                runs.append(PathRun(name, None, status="failed", reason=f"start: {exc}"))
                log(f"{name}: failed to start: {exc}")
                continue
            runs.append(PathRun(name, endpoint))
        if not any(r.name == "direct" and r.live for r in runs):
            log("warning: without the direct path there is no 'added latency'")
        await measure_bulk(runs, plan)
        await measure_latency(runs, plan)
        log("stopping everything")
    return runs


# ---------------------------------------------------------------- the report


def _latency_json(results: Sequence[st.WrkResult]) -> dict[str, Any]:
    """Each percentile (and req/s) as the median over the runs."""
    figures: dict[str, Any] = {
        f"p{percent:g}_ms": round(st.median([r.p(percent) for r in results]), 4)
        for percent in results[0].percentiles_ms
    }
    figures["rps"] = round(st.median([r.requests_per_s for r in results]), 1)
    figures["requests"] = sum(r.requests for r in results)
    if len(results) > 1:
        figures["runs_p50_ms"] = [round(r.p(50.0), 4) for r in results]
        figures["runs_p99_ms"] = [round(r.p(99.0), 4) for r in results]
    return figures


def path_figures(run_: PathRun, direct: PathRun | None) -> dict[str, Any]:
    figures: dict[str, Any] = {"status": run_.status}
    if run_.reason:
        figures["reason"] = run_.reason
    if run_.endpoint is not None and run_.endpoint.info:
        figures["info"] = dict(run_.endpoint.info)
    figures |= _bulk_figures(run_, direct)
    for c, results in (run_.latency or {}).items():
        mine = figures[f"c{c}"] = _latency_json(results)
        cpu_runs = (run_.cpu_ms_per_request or {}).get(c)
        if cpu_runs:
            mine["cpu_ms_per_request_by_process"] = _median_by_process(cpu_runs, 4)
            mine["cpu_ms_per_request"] = round(sum(mine["cpu_ms_per_request_by_process"]), 4)
        base = (direct.latency or {}).get(c) if direct is not None else None
        if base:
            theirs = _latency_json(base)
            for p in ("p50", "p99"):
                added = mine[f"{p}_ms"] - theirs[f"{p}_ms"]
                figures[f"added_c{c}_{p}_ms"] = round(added, 4)
    return figures


def _bulk_figures(run_: PathRun, direct: PathRun | None) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if run_.bulk_1:
        figures["bulk_1_MBps"] = round(st.median(run_.bulk_1), 1)
        figures["bulk_1_runs_MBps"] = [round(v, 1) for v in run_.bulk_1]
    if run_.cpu_1:
        figures["cpu_s_per_GiB_1"] = round(st.median(run_.cpu_1), 3)
    if run_.cpu_1_by_process:
        figures["cpu_s_per_GiB_1_by_process"] = _median_by_process(run_.cpu_1_by_process, 3)
    if run_.bulk_16:
        figures["bulk_16_MBps"] = round(st.median(run_.bulk_16), 1)
        figures["bulk_16_runs_MBps"] = [round(v, 1) for v in run_.bulk_16]
    if direct is not None and direct is not run_:
        for streams, theirs in (("1", direct.bulk_1), ("16", direct.bulk_16)):
            value = st.ratio(figures.get(f"bulk_{streams}_MBps"), st.median(theirs or [0]))
            if value is not None:
                figures[f"bulk_{streams}_vs_direct"] = round(value, 3)
    return figures


def _median_by_process(runs: Sequence[Sequence[float]], digits: int) -> list[float]:
    """Per process (in the path's ``cpu_pids`` order: for ours, server then agent), the median."""
    return [round(st.median(list(values)), digits) for values in zip(*runs, strict=True)]


def compare(ours: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float]:
    """Ours / baseline per figure (>1: better for MB/s, worse for ms)."""
    pairs = {
        "bulk_1": (ours.get("bulk_1_MBps"), baseline.get("bulk_1_MBps")),
        "bulk_16": (ours.get("bulk_16_MBps"), baseline.get("bulk_16_MBps")),
    }
    for c in ("c1", "c100"):
        for p in ("p50_ms", "p99_ms"):
            pairs[f"{c}_{p.removesuffix('_ms')}"] = (
                (ours.get(c) or {}).get(p),
                (baseline.get(c) or {}).get(p),
            )
    out: dict[str, float] = {}
    for name, (mine, theirs) in pairs.items():
        value = st.ratio(mine, theirs)
        if value is not None:
            out[name] = round(value, 3)
    return out


def goals(figures: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
    """Issue 3's goals, judged only when our tunnel and the baseline in question were measured."""
    ours = figures.get("ours", {})
    if ours.get("status") != "measured":
        return {}
    met: dict[str, bool] = {}
    for streams, label in (("1", "1 stream"), ("16", "16 streams")):
        key = f"bulk_{streams}_MBps"
        mine = ours.get(key)
        # The faster ssh cipher when both were measured: the goal is against ssh at its best.
        ssh_runs = [figures.get(n, {}).get(key) for n in ("ssh", "ssh-aesgcm")]
        ssh = max((v for v in ssh_runs if v is not None), default=None)
        chisel = figures.get("chisel", {}).get(key)
        if mine is not None and ssh is not None:
            met[f"throughput, {label} >= ssh -R"] = mine >= ssh
        if mine is not None and chisel is not None:
            met[f"throughput, {label} >= 1.5 x chisel"] = mine >= 1.5 * chisel
    added = ours.get("added_c1_p50_ms")
    if added is not None:
        met["added latency p50 at c=1 < 0.5 ms"] = added < 0.5
    return met


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Busy CPU seconds of the whole machine and of this process with its reaped children."""

    machine_busy: float
    ours: float
    at: float

    @classmethod
    def now(cls) -> CpuSample:
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        own = os.times()
        mine = own.user + own.system + own.children_user + own.children_system
        return cls(machine_busy=busy, ours=mine, at=time.monotonic())


def background_cpu(start: CpuSample, end: CpuSample) -> float:
    """Share of the machine's CPU (0..1) that processes the bench did not start used meanwhile."""
    others = (end.machine_busy - start.machine_busy) - (end.ours - start.ours)
    capacity = (end.at - start.at) * (os.cpu_count() or 1)
    return max(0.0, min(1.0, others / capacity)) if capacity > 0 else 0.0


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_gib": round(psutil.virtual_memory().total / st.GIB, 1),
        "kernel": platform.release(),
    }


async def versions(selected: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {"Python": platform.python_version(), "aiohttp": aiohttp.__version__}

    async def first_line(argv: list[str]) -> str:
        try:
            _, out, err = await run(argv, 10)
        except BenchError:
            return "unknown"
        lines = (out + err).strip().splitlines()
        return lines[0] if lines else "unknown"

    if {"ssh", "ssh-aesgcm"} & set(selected):
        found["OpenSSH"] = (await first_line(["ssh", "-V"])).split(",")[0].removeprefix("OpenSSH_")
    if {"chisel", "chisel-plain"} & set(selected):
        binary = os.environ.get("EDGEFLEET_CHISEL") or shutil.which("chisel") or "chisel"
        found["chisel"] = await first_line([binary, "--version"])
    found["curl"] = (await first_line(["curl", "--version"])).split(" ")[1]
    wrk_line = await first_line(["wrk", "-v"])
    found["wrk"] = wrk_line.split(" ")[1] if " " in wrk_line else wrk_line
    return found


def how_measured(plan: Plan) -> str:
    mib = MIB
    return f"""\
- One run of `scripts/bench/tunnel` starts a target HTTP server (`scripts/bench/bench_target.py`,
  a bare asyncio protocol: `GET /small` answers 3 bytes, `GET /bulk?bytes=N` streams N bytes in
  1 MiB chunks of one preallocated buffer) and brings up every path at once, all on 127.0.0.1:
  - **direct**: the client connects to the target.
  - **`ssh -R`**: a private `sshd` on a free port (generated host and user ed25519 keys, no PAM),
    and `ssh -N -R 127.0.0.1:P:<target>` to it with OpenSSH's default cipher (the negotiated one
    is in the JSON under `info.cipher`); clients connect to P on the sshd side.
  - **chisel (TLS)**: `chisel server --reverse` with a generated CA and certificate
    (`--tls-cert/--tls-key`; the client verifies it with `--tls-ca`), and
    `chisel client https://... R:127.0.0.1:P:<target>`; clients connect to P. chisel also runs
    SSH inside its WebSocket, so it encrypts twice; `--paths chisel-plain` measures it without
    TLS.
  - **ours**: `tunnel-server run` and one joined `edge-agent run` whose allow-list is
    `bench = "<target>"`; clients send `GET https://SERVER/api/v1/nodes/bench-node/proxy/bench/...`
    with the admin bearer token and verify the server against its CA (`curl --cacert`; wrk does
    not verify, as for every https path). TLS is on for both hops: client -> server (HTTPS) and
    agent -> server (WSS with mTLS). Each request is one tunnel stream; the agent dials the target
    per stream. Both processes log at their default level (INFO), as shipped.
- Figures are taken one path after another, figure by figure, with every path's processes
  idling in between, so all paths see the same machine state.
- **Throughput, 1 stream**: `curl -o /dev/null` of {plan.bulk_1_bytes // mib} MiB; the median of
  {plan.bulk_1_runs} run(s), after a {plan.warmup_bytes // mib} MiB warm-up. MB/s = bytes /
  curl's `time_total`. *Path CPU* is the user+system CPU time of the path's processes (and their
  children) during that download, per GiB.
- **Throughput, {plan.streams} streams**: {plan.streams} `curl` processes at once, each
  downloading {plan.bulk_16_bytes_each // mib} MiB on its own connection; aggregate = all bytes /
  wall time until the last finished; median of {plan.bulk_16_runs} run(s).
- **Latency**: `wrk --latency -t{plan.wrk_threads} -c<N> -d{plan.latency_s}s` on `GET /small` with
  keep-alive connections, after a {plan.latency_warmup_s} s warm-up at the same concurrency,
  {plan.latency_runs} run(s) per path taking turns; wrk's p50 and p99 (median over the runs).
  *Added* latency = the path's p50 - the direct p50 at the same concurrency. For paths with
  processes of their own, the JSON also has `cpu_ms_per_request` (and `..._by_process`, for
  ours: server, agent) per concurrency, and `cpu_s_per_GiB_1_by_process`: CPU per unit moves
  far less than throughput when other work shares the machine.
  Any non-2xx answer or socket error fails the path.
- Load generator, target and tunnel share the machine's cores, as they would on one host; on a
  2-CPU machine the c=100 figures are bounded by CPU, not by the network.
- `--quick` uses 200 MiB, 16 x 16 MiB, 2 s per latency figure and one run each; the table
  above says which mode produced it."""


def build_report(
    runs: Sequence[PathRun],
    plan: Plan,
    info: Mapping[str, Any],
    rounds: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    direct = next((r for r in runs if r.name == "direct" and r.status == "measured"), None)
    figures = {r.name: path_figures(r, direct) for r in runs}
    ratios: dict[str, dict[str, float]] = {}
    if figures.get("ours", {}).get("status") == "measured":
        for name in BASELINES:
            if figures.get(name, {}).get("status") == "measured":
                ratios[f"ours/{name}"] = compare(figures["ours"], figures[name])
    return {
        "bench": "tunnel",
        **info,
        "mode": plan.mode,
        "plan": asdict(plan),
        "labels": {r.name: LABELS.get(r.name, r.name) for r in runs},
        "paths": figures,
        "ratios": ratios,
        "agents": list(rounds),
        "goals": goals(figures) | agent_goals(list(rounds)),
    }


def write_section(out: Path, section: str) -> None:
    old = out.read_text() if out.exists() else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(st.replace_section(old, section))
    log(f"wrote the tunnel section of {out}")


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    lines = [
        (
            f"{'path':<14}{'1 stream':>11}{'16 streams':>12}"
            f"{'c1 p50':>10}{'c1 p99':>10}{'c100 p50':>10}{'c100 p99':>10}{'added c1':>10}"
        ),
    ]
    for name, fig in report["paths"].items():
        if fig["status"] != "measured":
            lines.append(f"{name:<14}{fig['status']}: {fig.get('reason', '')}")
            continue
        c1, c100 = fig.get("c1", {}), fig.get("c100", {})
        cells = [
            st.fmt(fig.get("bulk_1_MBps"), 0),
            st.fmt(fig.get("bulk_16_MBps"), 0),
            st.fmt(c1.get("p50_ms"), 3),
            st.fmt(c1.get("p99_ms"), 3),
            st.fmt(c100.get("p50_ms"), 3),
            st.fmt(c100.get("p99_ms"), 3),
            st.fmt(fig.get("added_c1_p50_ms"), 3),
        ]
        widths = (11, 12, 10, 10, 10, 10, 10)
        lines.append(
            f"{name:<14}" + "".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        )
    lines.append("(MB/s, 1 MB = 10^6 bytes; latency in ms)")
    lines += st.agents_summary(report.get("agents", []))
    lines += storm_lines(report.get("agents", []))
    return lines


def storm_lines(rounds: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per restart: the build, the time until all were back, the server's CPU."""
    return [
        f"storm {int(r['agents']):,} {r.get('build', '-')}/{r.get('admission')}: "
        f"back in {st.fmt(r.get('reconnect_s'), 1)} s, server CPU "
        f"{st.fmt(r.get('reconnect_server_cpu_s'), 1)} s "
        f"({st.fmt(r.get('reconnect_server_cpu_ms_per_agent'), 2)} ms/agent), "
        f"failures {r.get('connect_failures')}, "
        f"other CPU {st.fmt(r.get('other_cpu_pct'), 1)} %, load {r.get('load_avg')}, "
        f"server idle after {st.fmt(r.get('idle_after', {}).get('server_idle_cpu_pct'), 1)} %"
        for r in rounds
        if r.get("status") == "measured"
    ]


# ---------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    known = list(paths())
    parser = argparse.ArgumentParser(
        prog="scripts/bench/tunnel",
        description="Tunnel benchmark: direct vs our tunnel vs ssh -R vs chisel, in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="finish in under a minute")
    parser.add_argument(
        "--paths",
        default="direct,ssh,ssh-aesgcm,chisel,ours",
        help=f"comma-separated, from: {', '.join(known)} (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="write the tunnel section of this markdown file")
    parser.add_argument("--ssh-cipher", help="force an ssh cipher (default: OpenSSH's choice)")
    parser.add_argument(
        "--agents",
        help="idle-agent rounds, comma-separated agent counts; 0 skips them "
        "(default: 500 with --quick, else 5000,10000)",
    )
    parser.add_argument(
        "--admission",
        default="on",
        help="idle-agent rounds: the server's admission control per round, comma-separated: "
        f"{', '.join(ADMISSION)} (default: %(default)s; 'off,on' measures both side by side)",
    )
    parser.add_argument(
        "--storm",
        action="store_true",
        help="only the idle-agent rounds (restart storms): no paths measured, nothing installed",
    )
    parser.add_argument(
        "--builds",
        help="idle-agent rounds: restart the same fleet with each server build in turn, "
        "comma-separated LABEL=DIR (DIR goes first on the server's PYTHONPATH), e.g. "
        "base=../old-worktree,new=.",
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=1,
        help="idle-agent rounds: run the (build, admission) restart cycle this many times "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--storm-profile",
        type=Path,
        metavar="DIR",
        help="idle-agent rounds: py-spy record each restarted server into DIR (raw stacks); "
        "needs py-spy; profiled CPU figures are not comparable with unprofiled ones",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep keys, configs, logs")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="measure nothing: render --out from a JSON line an earlier run printed",
    )
    args = parser.parse_args(argv)
    args.selected = [] if args.storm else [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in args.selected if p not in known]
    if unknown or not (args.selected or args.storm):
        parser.error(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(known)}")
    args.agent_counts = None
    if args.agents is not None:
        try:
            counts = tuple(int(c) for c in args.agents.split(",") if c.strip())
        except ValueError:
            parser.error("--agents takes comma-separated integers, e.g. 5000,10000")
        if any(not 0 <= c <= 50_000 for c in counts):
            parser.error("--agents counts must be within 0..50000")
        args.agent_counts = tuple(c for c in counts if c > 0)
    args.admission_modes = tuple(m.strip() for m in args.admission.split(",") if m.strip())
    if not args.admission_modes or any(m not in ADMISSION for m in args.admission_modes):
        parser.error(f"--admission takes modes from: {', '.join(ADMISSION)}")
    try:
        args.server_builds = parse_builds(args.builds or "")
    except ValueError as error:
        parser.error(f"--builds: {error}")
    if args.restarts < 1:
        parser.error("--restarts must be at least 1")
    if args.storm and args.agents is None:
        parser.error("--storm needs --agents N")
    return args


def parse_builds(text: str) -> tuple[tuple[str, str], ...]:
    """``LABEL=DIR,...`` as (label, absolute DIR); each DIR must hold ``tunnel_server``."""
    builds: list[tuple[str, str]] = []
    for item in (b.strip() for b in text.split(",")):
        if not item:
            continue
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise ValueError(f"{item!r} is not LABEL=DIR")
        path = Path(folder).resolve()
        if not (path / "tunnel_server").is_dir():
            raise ValueError(f"no tunnel_server package in {path}")
        builds.append((label, str(path)))
    return tuple(builds)


def render_saved(saved: Path, out: Path | None) -> int:
    """Re-render the markdown section from a saved report (the last stdout line of a run)."""
    report = json.loads(saved.read_text().strip().splitlines()[-1])
    plan = Plan(**{**report["plan"], "concurrency": tuple(report["plan"]["concurrency"])})
    if out is not None:
        write_section(out, st.render_markdown(report, how_measured(plan)))
    print(json.dumps(report, separators=(",", ":")))
    return 0


async def main_async(args: argparse.Namespace, argv: Sequence[str]) -> int:
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    plan = make_plan(quick=args.quick)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    keep = args.keep_workdir
    try:
        info: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["scripts/bench/tunnel", *argv]),
            "machine": machine(),
            "versions": await versions(args.selected),
        }
        try:
            cpu_start = CpuSample.now()
            agents_plan = make_agents_plan(
                quick=args.quick,
                counts=args.agent_counts,
                admission=args.admission_modes,
                builds=args.server_builds,
                restarts=args.restarts,
                profile_dir=args.storm_profile,
            )
            if args.storm_profile is not None:
                args.storm_profile.mkdir(parents=True, exist_ok=True)
            async with asyncio.timeout(plan.time_budget_s):
                runs = (
                    await bench(args.selected, plan, workdir, args.ssh_cipher)
                    if args.selected
                    else []
                )
                rounds = await measure_agents(agents_plan, workdir) if agents_plan.counts else []
            info["background_cpu_share"] = round(background_cpu(cpu_start, CpuSample.now()), 3)
        except TimeoutError:
            keep = True
            log(f"error: the run exceeded its budget of {plan.time_budget_s} s; logs in {workdir}")
            return 1
        info["seconds"] = round(time.monotonic() - started, 1)
        info["agents_plan"] = asdict(agents_plan)
        report = build_report(runs, plan, info, rounds)
        failed = any(r.status == "failed" for r in runs) or any(
            r.get("status") == "failed" for r in rounds
        )
        if failed:
            keep = True
            log(f"some paths or agent rounds failed; their logs are in {workdir}")
        if args.out is not None:
            write_section(args.out, st.render_markdown(report, how_measured(plan)))
        for line in summary_lines(report):
            print(line)
        print(json.dumps(report, separators=(",", ":"), sort_keys=False), flush=True)
        return 1 if failed else 0
    finally:
        if keep:
            log(f"kept the work folder {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.from_json is not None:
        return render_saved(args.from_json, args.out)
    try:
        return asyncio.run(main_async(args, argv))
    except BrokenPipeError:
        return 141
    except KeyboardInterrupt:
        log("interrupted; everything the bench started has been stopped")
        return 130
    except asyncio.CancelledError:
        log("terminated; everything the bench started has been stopped")
        return 143
    except BenchError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
