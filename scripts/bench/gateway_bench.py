"""Multi-cluster gateway benchmark (issue 16): direct vs nginx vs our gateway, then failover.

Run it through ``scripts/bench/gateway``. One run starts, side by side:

- the backend: ``bench_target.py`` (a bare asyncio HTTP/1.1 server, ``GET /small`` answers a
  3-byte body) on this machine's non-loopback address (``local_address``: EndpointSlices
  cannot hold loopback);
- nginx (the Debian package's ``/usr/sbin/nginx``) as a reverse proxy to it, not daemonised,
  its master plus ``NGINX_WORKERS`` worker, a generated config in the run's temp dir;
- our gateway: a member cluster (tests/harness/member.py) whose Service ``bench/web`` has an
  EndpointSlice pointing at the backend, registered twice as two clusters (``gw-a``, ``gw-b``:
  two real cluster-mode ``edge-agent run`` processes with ``[cluster.gateway]`` enabled on the
  same member), and ``tunnel-server run --gateway-listen``. Routes: ``web.bench`` -> gw-a only
  (throughput, latency), ``failover.bench`` -> gw-a and gw-b 50/50 (failover).

Routes are MultiClusterRoute objects applied with ``tunnel-server apply -f`` when the tree has
the fleet router (``tunnel_server/fleet/gateway/fleet_router.py``); without it the server runs
through tests/integration/gateway_server/server_proc.py with a ``StaticRouter`` (the same CLI,
a fixed table where ``failover.bench`` tries gw-a, then gw-b), and ``failover_s`` is reported
not measured (the static order is no 50/50 route; its figure goes under
``failover_static_ordered_s``).

Figures, each from ``gateway_load.py`` in its own process: req/s with 100 keep-alive
connections per path (taking turns, median of the rounds); c=1 latency per path (gateway added
= gateway p50/p99 - direct p50/p99, same run); failover: 20 connections on ``failover.bench``,
SIGKILL of gw-a's agent, time from the kill to the end of the last failed or stalled request
(``gateway_stats.failover``). CPU of every process per phase and the load average are
recorded, as they bound the figures on a small shared machine.

Progress goes to stderr; the last stdout line is one JSON object. A part that cannot run says
so loudly (stderr, ``errors`` in the JSON, exit 1), never a made-up figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import gateway_stats as gs  # noqa: E402 - scripts/bench
from bench_procs import tree_cpu_seconds  # noqa: E402
from bench_stats import median, write_marked_section  # noqa: E402

from tests.harness import kube, member  # noqa: E402 - after the repository root is on the path
from tests.harness.daemons import Server  # noqa: E402
from tests.harness.procs import ManagedProcess, ServiceError, free_port, wait_port  # noqa: E402
from tests.harness.waiting import eventually  # noqa: E402
from tests.integration.clusters.members import (  # noqa: E402
    NAMESPACE,
    SERVICE_ACCOUNT,
    ClusterAgent,
    prepare_member,
    run_kubectl,
)
from tests.integration.gateway_agent.test_gateway_agent import (  # noqa: E402
    PACKAGING,
    local_address,
)
from tests.integration.gateway_server.conftest import GatewayServer  # noqa: E402

START, END = "<!-- bench:gateway:start -->", "<!-- bench:gateway:end -->"
NGINX = "/usr/sbin/nginx"
NGINX_WORKERS = 1
"""One worker: our gateway is one Python process on one core, so is nginx's data path."""
SERVICE_NS = "bench"
CLUSTERS = ("gw-a", "gw-b")
WEB_HOST = "web.bench"
FAILOVER_HOST = "failover.bench"
PATHS = ("direct", "nginx", "gateway")
LOAD = Path(__file__).resolve().parent / "gateway_load.py"


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    rounds: int
    """Rounds of c=100 and c=1 runs, the paths taking turns; figures are medians over them."""
    c100_s: float
    """Seconds of one measured c=100 run (after ``warmup_s``)."""
    c1_s: float
    """Seconds of one measured c=1 run (after ``warmup_s``)."""
    warmup_s: float
    failover_connections: int
    failover_before_s: float
    """Seconds of load on the 50/50 route before the kill."""
    failover_after_s: float
    """Seconds of load after the kill."""


def make_plan(*, quick: bool) -> Plan:
    if quick:
        return Plan(
            mode="quick",
            rounds=1,
            c100_s=4.0,
            c1_s=3.0,
            warmup_s=1.0,
            failover_connections=20,
            failover_before_s=2.0,
            failover_after_s=3.0,
        )
    return Plan(
        mode="full",
        rounds=3,
        c100_s=10.0,
        c1_s=5.0,
        warmup_s=2.0,
        failover_connections=20,
        failover_before_s=3.0,
        failover_after_s=5.0,
    )


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def loud(message: str) -> None:
    bar = "!" * 78
    print(f"{bar}\nbench: NOT MEASURED: {message}\n{bar}", file=sys.stderr, flush=True)


def has_fleet_router() -> bool:
    return importlib.util.find_spec("tunnel_server.fleet.gateway.fleet_router") is not None


# ---------------------------------------------------------------- the setup


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    host: str
    pids: Mapping[str, Sequence[int]]
    """The processes on this path (their CPU is recorded per run), by role."""


@contextmanager
def managed(name: str, argv: list[str], log_path: Path) -> Iterator[ManagedProcess]:
    proc = ManagedProcess(name, argv, log_path=log_path)
    try:
        yield proc
    finally:
        proc.stop()


def start_nginx(stack: ExitStack, workdir: Path, upstream: str) -> tuple[ManagedProcess, int]:
    prefix = workdir / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        gs.nginx_config(prefix=str(prefix), port=port, upstream=upstream, workers=NGINX_WORKERS)
    )
    proc = stack.enter_context(
        managed("nginx", [NGINX, "-p", str(prefix), "-c", str(conf)], workdir / "nginx.log")
    )
    wait_port("127.0.0.1", port, timeout=30, proc=proc)
    return proc, port


def services(cluster: member.MemberCluster, host: str, port: int) -> None:
    """Service ``bench/web`` (no selector) and its slice -> host:port; the agent's RBAC."""
    cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": SERVICE_NS}})
    cluster.api(
        "POST",
        f"/api/v1/namespaces/{SERVICE_NS}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": SERVICE_NS},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
    )
    cluster.api(
        "POST",
        f"/apis/discovery.k8s.io/v1/namespaces/{SERVICE_NS}/endpointslices",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-1",
                "namespace": SERVICE_NS,
                "labels": {
                    "kubernetes.io/service-name": "web",
                    "endpointslice.kubernetes.io/managed-by": "edgefleet-bench",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
        },
    )
    run_kubectl(cluster.kubeconfig, "apply", "-f", str(PACKAGING / "30-gateway-rbac.yaml"))
    run_kubectl(
        cluster.kubeconfig,
        "create",
        "clusterrolebinding",
        "gateway-bench",
        "--clusterrole=edgefleet:cluster-agent-gateway",
        f"--serviceaccount={NAMESPACE}:{SERVICE_ACCOUNT}",
    )


def start_agent(
    stack: ExitStack,
    name: str,
    *,
    server: Server,
    cluster: member.MemberCluster,
    token: str,
    base: Path,
) -> ClusterAgent:
    agent = ClusterAgent(
        name=name, workdir=base, server=server, plane=cluster.plane, agent_token=token
    )
    agent.tables["cluster.gateway"] = {"enabled": True, "services": [f"{SERVICE_NS}/*"]}
    agent.join()
    agent.start()
    stack.callback(agent.stop)
    agent.wait_ready(timeout=90)
    agent.wait_connected()

    def ready_endpoints() -> object:
        status = agent.status()["cluster"]
        assert isinstance(status, dict)  # noqa: S101 - the agent's /status shape
        return status["gateway"]["services"][f"{SERVICE_NS}/web"]["80"]

    eventually(
        ready_endpoints,
        lambda ready: ready == 1,
        what=f"agent {name} sees the ready endpoint of {SERVICE_NS}/web",
        within=60,
        ignore=(OSError, KeyError, TypeError),
    )
    return agent


ROUTES_YAML = f"""apiVersion: fleet.edgefleet.io/v1alpha1
kind: MultiClusterRoute
metadata: {{name: bench-web}}
spec:
  hostnames: [{WEB_HOST}]
  rules:
  - backendRefs:
    - {{cluster: gw-a, namespace: {SERVICE_NS}, name: web, port: 80}}
---
apiVersion: fleet.edgefleet.io/v1alpha1
kind: MultiClusterRoute
metadata: {{name: bench-failover}}
spec:
  hostnames: [{FAILOVER_HOST}]
  rules:
  - backendRefs:
    - {{cluster: gw-a, namespace: {SERVICE_NS}, name: web, port: 80, weight: 50}}
    - {{cluster: gw-b, namespace: {SERVICE_NS}, name: web, port: 80, weight: 50}}
"""
STATIC_ROUTES = {
    WEB_HOST: [f"gw-a/{SERVICE_NS}/web:80"],
    FAILOVER_HOST: [f"gw-a/{SERVICE_NS}/web:80", f"gw-b/{SERVICE_NS}/web:80"],
}


def start_server(stack: ExitStack, base: Path, gw_port: int, *, fleet: bool) -> Server:
    args = ("--gateway-listen", f"127.0.0.1:{gw_port}")
    base.mkdir(parents=True, exist_ok=True)
    server: Server
    if fleet:
        server = Server(workdir=base, extra_args=args)
    else:
        routes = base / "routes.json"
        routes.write_text(json.dumps(STATIC_ROUTES))
        server = GatewayServer(workdir=base, routes_file=routes, extra_args=args)
    server.start()
    stack.callback(server.stop)
    return server


def http_status(port: int, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/small", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - ours
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as error:
        with error:
            return error.code


def wait_routed(port: int, host: str) -> None:
    eventually(
        lambda: http_status(port, host),
        lambda status: status == 200,
        what=f"the gateway answers 200 for Host {host}",
        within=60,
        ignore=(OSError,),
    )


# ---------------------------------------------------------------- the figures


def machine_busy_s() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def run_load(
    endpoint: Endpoint,
    *,
    connections: int,
    seconds: float,
    warmup_s: float,
    records: Path | None = None,
) -> dict[str, Any]:
    """One ``gateway_load.py`` run; its JSON plus CPU shares (of one core) and load average."""
    argv = [
        sys.executable,
        str(LOAD),
        "--address",
        endpoint.address,
        "--port",
        str(endpoint.port),
        "--host-header",
        endpoint.host,
        "--connections",
        str(connections),
        "--seconds",
        f"{seconds:g}",
        "--warmup-s",
        f"{warmup_s:g}",
        *(["--records", str(records)] if records is not None else []),
    ]
    pids = dict(endpoint.pids)
    cpu0 = {role: tree_cpu_seconds(group) for role, group in pids.items()}
    busy0 = machine_busy_s()
    began = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + warmup_s + 120, check=False
    )
    wall = time.monotonic() - began
    if done.returncode != 0 or not done.stdout.strip():
        raise ServiceError(f"gateway_load.py failed ({done.returncode}): {done.stderr[-800:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    used = {role: tree_cpu_seconds(group) - cpu0[role] for role, group in pids.items()}
    shares = {role: round(seconds / wall, 2) for role, seconds in used.items()}
    shares["load generator"] = result.pop("cpu_share")
    answered = result["answered_total"]
    result["cpu_ms_per_request"] = {
        role: round(seconds * 1000 / answered, 3) if answered else None
        for role, seconds in {**used, "load generator": result["cpu_s"]}.items()
    }
    machine = (machine_busy_s() - busy0) / wall
    shares["others (rest of the machine)"] = round(max(0.0, machine - sum(shares.values())), 2)
    result["cpu_cores"] = shares
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return result


IDLE_S = 5.0
"""Seconds over which the idle CPU of the gateway's processes is measured (no load)."""


def idle_cpu(pids: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Cores each process uses with no request at all (an agent also samples its cluster)."""
    cpu0 = {role: tree_cpu_seconds(group) for role, group in pids.items()}
    began = time.monotonic()
    time.sleep(IDLE_S)
    wall = time.monotonic() - began
    return {
        role: round((tree_cpu_seconds(group) - cpu0[role]) / wall, 3)
        for role, group in pids.items()
    }


def throughput_and_latency(
    endpoints: Mapping[str, Endpoint], plan: Plan
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    runs: dict[str, list[dict[str, Any]]] = {f"{p}_c{c}": [] for p in PATHS for c in (100, 1)}
    for round_ in range(plan.rounds):
        for concurrency, seconds in ((100, plan.c100_s), (1, plan.c1_s)):
            for path in PATHS:
                result = run_load(
                    endpoints[path],
                    connections=concurrency,
                    seconds=seconds,
                    warmup_s=plan.warmup_s,
                )
                say(
                    f"round {round_ + 1}/{plan.rounds} {path} c={concurrency}: "
                    f"{result['rps']:,.0f} req/s, p50 {result['p50_ms']} ms, "
                    f"p99 {result['p99_ms']} ms, errors {result['errors']}, "
                    f"non-2xx {result['non_2xx']}, CPU {result['cpu_cores']}, "
                    f"load {result['load_avg_1m']}"
                )
                if result["errors"] or result["non_2xx"] or not result["ok"]:
                    raise ServiceError(
                        f"{path} c={concurrency}: {result['errors']} errors "
                        f"{result['error_kinds']}, {result['non_2xx']} non-2xx answers "
                        f"(by status: {result['statuses']}; the last: "
                        f"{result['non_2xx_sample']!r})"
                    )
                runs[f"{path}_c{concurrency}"].append(result)
    figures: dict[str, Any] = {}
    for path in PATHS:
        figures[f"{path}_rps_c100"] = round(median([r["rps"] for r in runs[f"{path}_c100"]]), 1)
        for key in ("p50_ms", "p99_ms"):
            figures[f"{path}_c1_{key}"] = round(median([r[key] for r in runs[f"{path}_c1"]]), 3)
        figures[f"{path}_c100_p50_ms"] = round(
            median([r["p50_ms"] for r in runs[f"{path}_c100"]]), 3
        )
    return figures, runs


def metrics_text(server: Server) -> str:
    status, body = server.get("/metrics")
    if status != 200:
        raise ServiceError(f"GET /metrics of the server: HTTP {status}")
    return body.decode()


def measure_failover(
    endpoint: Endpoint, agent: ClusterAgent, server: Server, plan: Plan, workdir: Path
) -> dict[str, Any]:
    """Load on the 50/50 route, SIGKILL of gw-a's agent; how long requests were disturbed."""
    records_path = workdir / "failover-records.json"
    argv = [
        sys.executable,
        str(LOAD),
        "--address",
        endpoint.address,
        "--port",
        str(endpoint.port),
        "--host-header",
        endpoint.host,
        "--connections",
        str(plan.failover_connections),
        "--seconds",
        f"{plan.failover_before_s + plan.failover_after_s:g}",
        "--warmup-s",
        "0",
        "--records",
        str(records_path),
    ]
    before = gs.attempts(metrics_text(server))
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(plan.failover_before_s)  # steady load on both clusters before the kill
        at_kill = gs.attempts(metrics_text(server))
        assert agent.process is not None  # noqa: S101 - started above
        kill_at = time.monotonic()
        os.killpg(agent.process.pid, signal.SIGKILL)
        load_avg = round(os.getloadavg()[0], 2)
        out, err = load.communicate(timeout=plan.failover_after_s + 120)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    agent.process.popen.wait(timeout=10)
    if load.returncode != 0:
        raise ServiceError(f"failover load failed ({load.returncode}): {err[-800:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    records = [gs.Record(*r) for r in json.loads(records_path.read_text())]
    result = gs.failover(records, kill_at)
    return {
        "failover_s": None if result.seconds is None else round(result.seconds, 3),
        "requests_after_kill": result.after,
        "failed_after_kill": result.failed,
        "disturbed_after_kill": result.disturbed,
        "slow_threshold_ms": round(result.slow_s * 1000, 1),
        "max_latency_after_kill_ms": round(result.max_latency_s * 1000, 1),
        "p99_before_kill_ms": round(result.p99_before_s * 1000, 1),
        "rps": summary["rps"],
        "errors": summary["errors"],
        "non_2xx": summary["non_2xx"],
        "attempts_before_kill": gs.delta(at_kill, before),
        "attempts_after_kill": gs.delta(gs.attempts(metrics_text(server)), at_kill),
        "load_avg_1m_at_kill": load_avg,
    }


def failover_part(  # noqa: PLR0917 - the run's parts, each once
    endpoint: Endpoint,
    agent: ClusterAgent,
    server: Server,
    plan: Plan,
    workdir: Path,
    errors: dict[str, str],
) -> dict[str, Any]:
    """``{"failover": figures}``, or ``{}`` with the reason in ``errors``."""
    say("failover: load on the 50/50 route, then SIGKILL of gw-a's agent")
    try:
        result = measure_failover(endpoint, agent, server, plan, workdir)
    except (ServiceError, OSError, subprocess.SubprocessError, ValueError) as exc:
        errors["failover"] = f"{type(exc).__name__}: {exc}"
        loud(errors["failover"])
        return {}
    if result["failover_s"] is None:
        errors["failover"] = (
            "the load never settled on the surviving cluster after the kill "
            f"({result['failed_after_kill']} failed requests)"
        )
        loud(errors["failover"])
    return {"failover": result}


def measure(plan: Plan, workdir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    begun = time.monotonic()
    errors: dict[str, str] = {}
    figures: dict[str, Any] = {}
    fleet = has_fleet_router()
    figures["router"] = "MultiClusterRoute (fleet router)" if fleet else "StaticRouter (fallback)"
    if not fleet:
        errors["failover_s"] = (
            "the tree has no MultiClusterRoute router yet (tunnel_server/fleet/gateway/"
            "fleet_router.py): no 50/50 route to fail over on; the server ran with a "
            "StaticRouter (gw-a, then gw-b) for the rest"
        )
        loud(errors["failover_s"])
    host = local_address(socket.AF_INET)
    if host is None:
        raise ServiceError("no non-loopback IPv4 address: an EndpointSlice cannot hold loopback")
    if shutil.which(NGINX) is None:
        raise ServiceError(f"{NGINX} is missing: install the Debian package nginx-light")
    with ExitStack() as stack:
        backend_port = free_port(host)
        backend = stack.enter_context(
            managed(
                "backend",
                [
                    sys.executable,
                    str(ROOT / "scripts/bench/bench_target.py"),
                    "--host",
                    host,
                    "--port",
                    str(backend_port),
                ],
                workdir / "backend.log",
            )
        )
        wait_port(host, backend_port, timeout=30, proc=backend)
        nginx, nginx_port = start_nginx(stack, workdir, f"{host}:{backend_port}")
        say("starting the member cluster (kine, apiserver, controller-manager, scheduler, kwok)")
        cluster = stack.enter_context(member.running_member("gwbench", workdir / "member", nodes=1))
        services(cluster, host, backend_port)
        gw_port = free_port()
        server = start_server(stack, workdir / "cloud", gw_port, fleet=fleet)
        token = prepare_member(cluster.plane)
        agents = {
            name: start_agent(
                stack, name, server=server, cluster=cluster, token=token, base=workdir / "cloud"
            )
            for name in CLUSTERS
        }
        if fleet:
            routes = workdir / "routes.yaml"
            routes.write_text(ROUTES_YAML)
            server.cli("apply", "-f", routes)
        wait_routed(gw_port, WEB_HOST)
        wait_routed(gw_port, FAILOVER_HOST)
        assert server.process is not None  # noqa: S101 - started
        agent_a = agents["gw-a"].process
        assert agent_a is not None  # noqa: S101 - started
        # Every path records the gateway side's processes too: they run (idle) all along.
        ours = {
            "backend": [backend.pid],
            "nginx": [nginx.pid],
            "tunnel-server": [server.process.pid],
            "edge-agent gw-a": [agent_a.pid],
            "edge-agent gw-b": [a.process.pid for a in [agents["gw-b"]] if a.process],
            "member cluster": cluster.pids,
        }
        endpoints = {
            "direct": Endpoint(address=host, port=backend_port, host="bench", pids=ours),
            "nginx": Endpoint(address="127.0.0.1", port=nginx_port, host="bench", pids=ours),
            "gateway": Endpoint(address="127.0.0.1", port=gw_port, host=WEB_HOST, pids=ours),
        }
        figures["setup_s"] = round(time.monotonic() - begun, 1)
        say(f"set up in {figures['setup_s']} s; load average {os.getloadavg()[0]:.2f}")
        figures["idle_cpu_cores"] = idle_cpu(endpoints["gateway"].pids)
        say(f"idle CPU (cores) over {IDLE_S:g} s: {figures['idle_cpu_cores']}")
        numbers, runs = throughput_and_latency(endpoints, plan)
        figures.update(numbers)
        figures["runs"] = runs
        failover_endpoint = dataclasses.replace(endpoints["gateway"], host=FAILOVER_HOST)
        figures.update(
            failover_part(failover_endpoint, agents["gw-a"], server, plan, workdir, errors)
        )
    figures["elapsed_s"] = round(time.monotonic() - begun, 1)
    return figures, errors


# ---------------------------------------------------------------- the report


def flat(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The keys the issue names, and a few more."""
    failover = figures.get("failover") or {}
    fleet = str(figures.get("router", "")).startswith("MultiClusterRoute")
    failover_s = failover.get("failover_s")
    keys: dict[str, Any] = {
        "direct_rps_c100": figures.get("direct_rps_c100"),
        "nginx_rps_c100": figures.get("nginx_rps_c100"),
        "gateway_rps_c100": figures.get("gateway_rps_c100"),
        "direct_p50_ms": figures.get("direct_c1_p50_ms"),
        "direct_p99_ms": figures.get("direct_c1_p99_ms"),
        "nginx_added_p50_ms": gs.added_ms(
            figures.get("nginx_c1_p50_ms"), figures.get("direct_c1_p50_ms")
        ),
        "gateway_added_p50_ms": gs.added_ms(
            figures.get("gateway_c1_p50_ms"), figures.get("direct_c1_p50_ms")
        ),
        "gateway_added_p99_ms": gs.added_ms(
            figures.get("gateway_c1_p99_ms"), figures.get("direct_c1_p99_ms")
        ),
        "failover_s": failover_s if fleet else None,
    }
    if not fleet and failover_s is not None:
        keys["failover_static_ordered_s"] = failover_s
    return keys


def fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "**not measured**"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


PATH_ROLES = {
    "direct": ("backend", "load generator"),
    "nginx": ("backend", "nginx", "load generator"),
    "gateway": ("backend", "tunnel-server", "edge-agent gw-a", "load generator"),
}
"""The processes each path's requests go through: their CPU per request is shown."""


def _cpu_line(runs: Mapping[str, list[dict[str, Any]]], path: str, concurrency: int) -> str:
    first = (runs.get(f"{path}_c{concurrency}") or [{}])[0]
    shares: Mapping[str, float] = first.get("cpu_cores") or {}
    per_request: Mapping[str, float | None] = first.get("cpu_ms_per_request") or {}
    return (
        ", ".join(
            f"{role} {share:.2f}"
            + (
                f" ({per_request[role]:.3f} ms/request)"
                if role in PATH_ROLES[path] and per_request.get(role)
                else ""
            )
            for role, share in shares.items()
        )
        or "-"
    )


def markdown(report: Mapping[str, Any]) -> str:
    keys = report["keys"]
    figures = report["figures"]
    plan = report["plan"]
    runs: Mapping[str, list[dict[str, Any]]] = figures.get("runs") or {}
    failover = figures.get("failover") or {}

    nginx_added_p99 = gs.added_ms(figures.get("nginx_c1_p99_ms"), figures.get("direct_c1_p99_ms"))

    def ratio(a: str, b: str) -> str:
        x, y = keys.get(a), keys.get(b)
        return "" if x is None or not y else f"{x / y:.2f}"

    lines = [
        (
            f"Measured {report['date']} on {report['machine']}, mode `{plan['mode']}` "
            f"({plan['rounds']} round(s) of {plan['c100_s']:g} s at c=100 and "
            f"{plan['c1_s']:g} s at c=1 per path, after {plan['warmup_s']:g} s of warm-up each); "
            f"load average {report['load_before']} before the run, "
            f"{report.get('load_after', '-')} after. Router: {figures.get('router', '-')}."
        ),
        "",
        "| figure | direct | nginx | gateway | gateway / nginx |",
        "|---|--:|--:|--:|--:|",
        (
            f"| req/s, c=100 keep-alive | {fmt(keys['direct_rps_c100'], 0)} | "
            f"{fmt(keys['nginx_rps_c100'], 0)} | {fmt(keys['gateway_rps_c100'], 0)} | "
            f"{ratio('gateway_rps_c100', 'nginx_rps_c100')} |"
        ),
        (
            f"| c=100 p50 (ms) | {fmt(figures.get('direct_c100_p50_ms'), 2)} | "
            f"{fmt(figures.get('nginx_c100_p50_ms'), 2)} | "
            f"{fmt(figures.get('gateway_c100_p50_ms'), 2)} | |"
        ),
        (
            f"| c=1 p50 (ms) | {fmt(figures.get('direct_c1_p50_ms'), 3)} | "
            f"{fmt(figures.get('nginx_c1_p50_ms'), 3)} | "
            f"{fmt(figures.get('gateway_c1_p50_ms'), 3)} | |"
        ),
        (
            f"| c=1 p99 (ms) | {fmt(figures.get('direct_c1_p99_ms'), 3)} | "
            f"{fmt(figures.get('nginx_c1_p99_ms'), 3)} | "
            f"{fmt(figures.get('gateway_c1_p99_ms'), 3)} | |"
        ),
        (
            f"| added to direct, c=1 p50 / p99 (ms) | | {fmt(keys['nginx_added_p50_ms'], 3)} / "
            f"{fmt(nginx_added_p99, 3)}"
            f" | {fmt(keys['gateway_added_p50_ms'], 3)} / {fmt(keys['gateway_added_p99_ms'], 3)} "
            "| |"
        ),
        "",
        (
            "CPU used during the first c=100 run (cores over the run's wall time, warm-up "
            "included; CPU ms per answered request):"
        ),
        "",
        *(f"- {path}: {_cpu_line(runs, path, 100)}" for path in PATHS),
        "",
        "CPU used during the first c=1 run:",
        "",
        *(f"- {path}: {_cpu_line(runs, path, 1)}" for path in PATHS),
        "",
    ]
    if figures.get("idle_cpu_cores"):
        lines += [
            f"Idle CPU of the gateway's processes before the runs (cores over {IDLE_S:g} s, "
            "no request; the agent also samples its member cluster): "
            + ", ".join(f"{role} {cores:.3f}" for role, cores in figures["idle_cpu_cores"].items()),
            "",
        ]
    if failover:
        lines += [
            (
                f"Failover ({plan['failover_connections']} connections on the 50/50 route, "
                f"SIGKILL of gw-a's agent after {plan['failover_before_s']:g} s, "
                f"{plan['failover_after_s']:g} s more; load average "
                f"{failover.get('load_avg_1m_at_kill')} at the kill): "
                f"**{fmt(failover.get('failover_s'), 3)} s** from the kill to the end of the last "
                f"disturbed request; {failover.get('requests_after_kill')} requests ended after "
                f"the kill, {failover.get('failed_after_kill')} failed, "
                f"{failover.get('disturbed_after_kill')} failed or took over "
                f"{failover.get('slow_threshold_ms')} ms (slowest "
                f"{failover.get('max_latency_after_kill_ms')} ms; p99 before the kill "
                f"{failover.get('p99_before_kill_ms')} ms). Gateway attempts by backend "
                f"and outcome before the kill: {failover.get('attempts_before_kill')}; after: "
                f"{failover.get('attempts_after_kill')}."
            ),
            "",
        ]
    goal_lines = [
        f"- {name}: " + ("not measured" if ok is None else ("met" if ok else "**NOT met**"))
        for name, ok in report["goals"].items()
    ]
    error_lines = [f"- **not measured: {part}**: {why}" for part, why in report["errors"].items()]
    return "\n".join([START, *lines, "Goals (issue 16):", *goal_lines, *error_lines, END])


HOWTO = """\
```sh
scripts/bench/gateway --quick                      # one round, ~2 min; last stdout line: JSON
scripts/bench/gateway --out docs/benchmarks.md     # three rounds, rewrites this section only
```

Side by side in one run, one backend: `scripts/bench/bench_target.py` (a bare asyncio HTTP/1.1
server; `GET /small` answers a 3-byte body) listening on the machine's non-loopback address
(an EndpointSlice cannot hold loopback). Three paths to it:

- **direct**: the load generator to the backend;
- **nginx**: Debian's nginx-light 1.22 as a reverse proxy, run in the foreground
  (`daemon off; master_process on; worker_processes 1`: one worker, as our gateway is one
  process), generated config, upstream keep-alive (64 idle connections), no access log;
- **gateway**: `tunnel-server run --gateway-listen` -> the tunnel -> a real cluster-mode
  `edge-agent run` with `[cluster.gateway]` enabled on a member cluster (tests/harness/member.py:
  kine, kube-apiserver, controller-manager, scheduler, kwok) whose Service `bench/web` has an
  EndpointSlice pointing at the backend; the agent keeps its connections to it alive from one
  tunnel stream to the next (a pool per endpoint, docs/gateway-data-path.md). One member
  cluster is joined twice, as clusters `gw-a` and `gw-b` (two agent processes).

Load: `scripts/bench/gateway_load.py`, one Python process (a bare asyncio client with a minimal
response parser, no pipelining, like wrk), c=100 keep-alive connections for req/s, then c=1 for
latency; the paths take turns; figures are medians over the rounds. "Added" = path - direct at
the same percentile, same run. Failover: 20 connections on a MultiClusterRoute whose two
backends (gw-a, gw-b) weigh 50/50; SIGKILL of gw-a's agent; failover time = from the kill to
the end of the last request that failed or took longer than max(50 ms, 5x the p99 before the
kill), at most 1 s (`gateway_stats.failover`; at least 20 good requests must follow it); 0 when
no request was disturbed. One kill per run: a single sample.

Routes are MultiClusterRoute objects applied with `tunnel-server apply -f` (`web.bench` -> gw-a
alone, for req/s and latency; `failover.bench` -> gw-a and gw-b, 50/50), served by the server's
default router. Each run also records the CPU of every process (psutil, process trees; the
member cluster's processes together) and of the whole machine: "others" is what the rest of
the machine (other work, not this benchmark) took meanwhile; and the 1-minute load average.
"""


def write_section(path: Path, section: str) -> None:
    write_marked_section(
        path,
        section,
        start=START,
        end=END,
        heading="Multi-cluster gateway: direct vs nginx vs our gateway",
        howto=HOWTO,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round, shorter runs")
    parser.add_argument("--out", type=Path, help="markdown file to write the section into")
    args = parser.parse_args()
    plan = make_plan(quick=args.quick)
    os.environ.setdefault("EDGEFLEET_KUBE_BIN", str(kube.DEFAULT_BIN))
    # The venv's tunnel-server and edge-agent may be installed from another checkout: every
    # process of the run imports this tree.
    os.environ["PYTHONPATH"] = str(ROOT)
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="edgefleet-gateway-bench-") as scratch:
        try:
            figures, errors = measure(plan, Path(scratch))
        except Exception as exc:  # noqa: BLE001 - reported as the run's result, loudly
            traceback.print_exc()
            figures, errors = {}, {"run": f"{type(exc).__name__}: {exc}"}
            loud(errors["run"])
    keys = flat(figures)
    report: dict[str, Any] = {
        "bench": "gateway",
        "date": dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "plan": dataclasses.asdict(plan),
        "figures": figures,
        "keys": keys,
        "errors": errors,
    }
    report["goals"] = gs.goals(
        gateway_rps=keys["gateway_rps_c100"],
        nginx_rps=keys["nginx_rps_c100"],
        added_p50_ms=keys["gateway_added_p50_ms"],
        failover_s=keys["failover_s"],
    )
    section = markdown(report)
    if args.out and not errors.get("run"):
        write_section(args.out, section)
        say(f"wrote the gateway section of {args.out}")
    print(section)
    print(json.dumps({**keys, **report}, sort_keys=True))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
