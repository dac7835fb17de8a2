"""Registered clusters benchmark: a member's API server direct vs through the cloud proxy.

Run it through ``scripts/bench/clusters``. One run starts a member cluster (kine +
kube-apiserver + kube-controller-manager + kube-scheduler + kwok, tests/harness/member.py), a
real ``tunnel-server run`` and a real cluster-mode ``edge-agent run`` joined with the token of
``tunnel-server token create --kind cluster --manifest`` and holding the manifest's RBAC
(its service account's token), then measures each figure both ways, side by side:

- ``kubectl get pods -A`` over all the pods (wall time of the kubectl process, discovery cached);
- GET of one pod, one request at a time (p50/p99), and with 32 in flight (requests/s);
- watch: from a create on the member until the watcher reads its ADDED event (p50/p99);
- ``kubectl port-forward`` to a pod (kwok dials a local HTTP server): MB/s of one download.

"direct" is the member's own admin token to its API server; "proxy" is the cloud's admin token
to ``https://SERVER/clusters/NAME/...``, which the agent forwards impersonating
``edgefleet:admin``. Progress goes to stderr; the last stdout line is one JSON object. A part
that cannot run says so loudly (stderr, ``errors`` in the JSON, exit 1), never a made-up figure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_stats import mb_per_s, percentile, write_marked_section  # noqa: E402 - scripts/bench

from tests.harness import daemons, kube  # noqa: E402 - after the repository root is on the path
from tests.harness.kube_bulk import create_pods  # noqa: E402
from tests.harness.procs import ManagedProcess, ServiceError, free_port, wait_port  # noqa: E402
from tests.harness.waiting import eventually  # noqa: E402

START, END = "<!-- bench:clusters:start -->", "<!-- bench:clusters:end -->"
CLUSTER = "bench"
NAMESPACE = "bench"
MODES = ("direct", "proxy")
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")
PF_POD = "pf-target"
PF_POD_PORT = 8080
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    pods: int
    list_runs: int
    get_runs: int
    c32_requests: int
    watch_events: int
    portforward_mib: int


def make_plan(*, quick: bool) -> Plan:
    if quick:
        # 1,000 pods: creating 5,000 alone takes 20-50 s on a small machine.
        return Plan(
            mode="quick",
            pods=1000,
            list_runs=3,
            get_runs=200,
            c32_requests=1600,
            watch_events=20,
            portforward_mib=32,
        )
    return Plan(
        mode="full",
        pods=5000,
        list_runs=10,
        get_runs=1000,
        c32_requests=8000,
        watch_events=200,
        portforward_mib=256,
    )


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def loud(message: str) -> None:
    bar = "!" * 78
    print(f"{bar}\nbench: NOT MEASURED: {message}\n{bar}", file=sys.stderr, flush=True)


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2)}


# ---------------------------------------------------------------- the setup


@dataclass(kw_only=True)
class Target:
    """One way to the member's API server: its URL, token and CA, and a kubeconfig."""

    url: str
    token: str
    ca_path: Path
    kubeconfig: Path
    cache_dir: Path

    def session(self, *, limit: int = 100) -> aiohttp.ClientSession:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=limit),
            headers={"Authorization": f"Bearer {self.token}"},
        )


def write_kubeconfig(path: Path, *, server: str, token: str, ca: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(kube.kube_bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise ServiceError(f"kubectl {' '.join(args)}: {done.stderr.strip()[-600:]}")
    return done.stdout


@dataclass(kw_only=True)
class Member:
    """The member cluster: a whole one (member harness) or, without it, an API server only."""

    plane: kube.ControlPlane
    full: Any = None
    """tests.harness.member.MemberCluster when that harness is there (port-forward needs it)."""

    def stop(self) -> None:
        if self.full is not None:
            self.full.stop()
        else:
            self.plane.stop()


def start_member(workdir: Path, errors: dict[str, str]) -> Member:
    try:
        from tests.harness import member  # noqa: PLC0415 - optional: landed with issue 12
    except ImportError as exc:
        errors["member_cluster"] = f"tests/harness/member.py is missing ({exc})"
        loud(f"port-forward: {errors['member_cluster']}; the rest runs on an API server alone")
        return Member(plane=kube.start("bench", workdir / "plane"))
    say("starting the member cluster (kine, kube-apiserver, controller-manager, scheduler, kwok)")
    full = member.start_member(
        "bench",
        workdir / "member",
        nodes=1,
        # The bench pods name nodes that do not exist (nothing runs them; as in the kube cache
        # bench, they stay small and Pending); pod GC would delete such pods mid-run.
        controller_manager_args=("--controllers=*,-pod-garbage-collector-controller",),
    )
    return Member(plane=full.plane, full=full)


def register(server: daemons.Server, plane: kube.ControlPlane, workdir: Path) -> daemons.Agent:
    """The manifest's RBAC on the member, and a cluster agent joined with the manifest's token."""
    text = server.cli("token", "create", "--kind", "cluster", "--name", CLUSTER, "--manifest")
    documents = [d for d in yaml.safe_load_all(text) if d]
    rbac = [d for d in documents if d["kind"] in RBAC_KINDS]
    kubectl(plane.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    (secret,) = [d for d in documents if d["kind"] == "Secret"]
    (account,) = [d for d in documents if d["kind"] == "ServiceAccount"]
    sa_token = kubectl(
        plane.kubeconfig,
        "create",
        "token",
        account["metadata"]["name"],
        "-n",
        account["metadata"]["namespace"],
        "--duration=2h",
    ).strip()
    member_kubeconfig = write_kubeconfig(
        workdir / "agent-member.kubeconfig", server=plane.url, token=sa_token, ca=plane.ca_path
    )
    agent = daemons.Agent(
        name=CLUSTER,
        workdir=workdir,
        server=server,
        tables={"cluster": {"kubeconfig": member_kubeconfig, "interval": 10.0}},
    )
    join = secret["stringData"]
    daemons.command(
        "edge-agent",
        "join",
        "--server",
        server.url,
        "--token",
        join["token"],
        "--ca-hash",
        join["ca-hash"],
        "--name",
        join["name"],
        "--data-dir",
        agent.data_dir,
    )
    agent.start()
    agent.wait_ready()
    agent.wait_connected()
    return agent


def wait_proxy(target: Target) -> None:
    """Until the cloud proxy answers for the cluster (the agent's session is registered)."""

    def version() -> str:
        return kubectl(target.kubeconfig, "version", "-o", "json")

    eventually(
        version,
        lambda out: "serverVersion" in out,
        what="the cluster proxy",
        within=60.0,
        ignore=(ServiceError,),
    )


# ---------------------------------------------------------------- the figures


def list_with_kubectl(targets: dict[str, Target], plan: Plan) -> dict[str, list[float]]:
    """``kubectl get pods -A``, direct and proxy alternating, after one warm-up each."""
    samples: dict[str, list[float]] = {mode: [] for mode in targets}
    for round_ in range(plan.list_runs + 1):
        for mode, target in targets.items():
            started = time.perf_counter()
            out = kubectl(
                target.kubeconfig, "--cache-dir", str(target.cache_dir), "get", "pods", "-A"
            )
            elapsed = time.perf_counter() - started
            rows = out.count("\n") - 1  # minus the header
            if rows < plan.pods:
                raise ServiceError(f"{mode}: kubectl listed {rows} pods, expected >= {plan.pods}")
            if round_:  # the first round warms discovery's cache and the connections
                samples[mode].append(elapsed)
    return samples


async def get_one(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as response:
        body = await response.read()
        if response.status != 200:
            raise ServiceError(f"{url}: HTTP {response.status} {body[:300]!r}")


async def sequential(http: aiohttp.ClientSession, url: str, runs: int) -> list[float]:
    await get_one(http, url)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await get_one(http, url)
        samples.append(time.perf_counter() - started)
    return samples


async def concurrent(http: aiohttp.ClientSession, url: str, total: int, width: int) -> float:
    """Requests per second with ``width`` requests in flight, ``total`` in all."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await get_one(http, url)

    await asyncio.gather(*(get_one(http, url) for _ in range(width)))  # open the connections
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index in range(width):
            group.create_task(worker(), name=f"bench.c{width}.{index}")
    return total / (time.perf_counter() - started)


async def watch_latency(
    http: aiohttp.ClientSession, admin: aiohttp.ClientSession, *, base: str, api: str, n: int
) -> list[float]:
    """From sending a create to the member until the watcher reads its ADDED event."""
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    async with http.get(base + path) as listed:
        rv = (await listed.json())["metadata"]["resourceVersion"]
    samples: list[float] = []
    tag = f"w{time.time_ns() % 10**9}"
    params = {"watch": "1", "resourceVersion": rv}
    async with http.get(base + path, params=params) as stream:
        for index in range(n):
            name = f"{tag}-{index}"
            started = time.perf_counter()
            async with admin.post(api + path, json={"metadata": {"name": name}}) as created:
                if created.status != 201:
                    raise ServiceError(f"create configmap: HTTP {created.status}")
            while True:
                line = await stream.content.readline()
                if not line:
                    raise ServiceError(f"{base}: the watch ended")
                if json.loads(line)["object"]["metadata"].get("name") == name:
                    samples.append(time.perf_counter() - started)
                    break
    return samples


@contextmanager
def managed(name: str, argv: list[str], log_path: Path) -> Iterator[ManagedProcess]:
    proc = ManagedProcess(name, argv, log_path=log_path)
    try:
        yield proc
    finally:
        proc.stop()


async def download(port: int, size: int) -> float:
    """Seconds to read ``size`` bytes of GET /bulk from 127.0.0.1:port."""
    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        async with http.get(f"http://127.0.0.1:{port}/bulk?bytes={size}") as response:
            got = 0
            async for chunk in response.content.iter_chunked(1 << 20):
                got += len(chunk)
        elapsed = time.perf_counter() - started
    if response.status != 200 or got != size:
        raise ServiceError(f"port-forward download: HTTP {response.status}, {got} of {size} bytes")
    return elapsed


def portforward(
    member: Member, targets: dict[str, Target], plan: Plan, workdir: Path
) -> dict[str, float]:
    """MB/s of one download through ``kubectl port-forward``, direct and proxy."""
    full = member.full
    node = full.nodes[0]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": PF_POD, "namespace": NAMESPACE},
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "web", "image": "bench", "ports": [{"containerPort": PF_POD_PORT}]}
            ],
        },
    }
    kubectl(member.plane.kubeconfig, "apply", "-f", "-", stdin=json.dumps(pod))
    kubectl(
        member.plane.kubeconfig,
        "wait",
        "-n",
        NAMESPACE,
        "--for=jsonpath={.status.phase}=Running",
        f"pod/{PF_POD}",
        "--timeout=60s",
    )
    target_port = free_port()
    size = plan.portforward_mib * MIB
    results: dict[str, float] = {}
    with managed(
        "bench-target",
        [sys.executable, str(ROOT / "scripts/bench/bench_target.py"), "--port", str(target_port)],
        workdir / "bench-target.log",
    ) as target_proc:
        wait_port("127.0.0.1", target_port, timeout=30.0, proc=target_proc)
        full.add_port_forward("bench-pf", target_port, namespaces=[NAMESPACE], pods=[PF_POD])
        for mode, target in targets.items():
            local = free_port()
            argv = [
                str(kube.kube_bin_dir() / "kubectl"),
                "--kubeconfig",
                str(target.kubeconfig),
                "port-forward",
                "-n",
                NAMESPACE,
                f"pod/{PF_POD}",
                f"{local}:{PF_POD_PORT}",
            ]
            with managed(f"port-forward[{mode}]", argv, workdir / f"pf-{mode}.log") as forward:
                wait_port("127.0.0.1", local, timeout=30.0, proc=forward)
                asyncio.run(download(local, MIB))  # warm-up: the streams are set up
                seconds = asyncio.run(download(local, size))
            results[mode] = round(mb_per_s(size, seconds), 1)
            say(f"{mode}: port-forward {plan.portforward_mib} MiB in {seconds:.2f} s")
    return results


async def http_figures(targets: dict[str, Target], plan: Plan) -> dict[str, Any]:
    one = f"/api/v1/namespaces/{NAMESPACE}/pods/pod-00042"
    out: dict[str, Any] = {}
    direct = targets["direct"]
    async with direct.session() as admin:
        for mode, target in targets.items():
            async with target.session() as http:
                say(f"{mode}: GET one pod x{plan.get_runs}, c=1")
                out[f"{mode}_get"] = summary(
                    await sequential(http, target.url + one, plan.get_runs)
                )
            async with target.session(limit=32) as http:
                say(f"{mode}: GET one pod x{plan.c32_requests}, c=32")
                rps = await concurrent(http, target.url + one, plan.c32_requests, 32)
                out[f"{mode}_rps_c32"] = round(rps, 1)
            async with target.session() as http:
                say(f"{mode}: watch event delivery x{plan.watch_events}")
                out[f"{mode}_watch"] = summary(
                    await watch_latency(
                        http, admin, base=target.url, api=direct.url, n=plan.watch_events
                    )
                )
    return out


def measure(plan: Plan, workdir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    begun = time.monotonic()
    errors: dict[str, str] = {}
    figures: dict[str, Any] = {}
    with ExitStack() as stack:
        member = start_member(workdir, errors)
        stack.callback(member.stop)
        server = daemons.Server(workdir=workdir / "cloud")
        server.workdir.mkdir(parents=True)
        server.start()
        stack.callback(server.stop)
        say("registering the member: the manifest's RBAC, a cluster agent with its token")
        agent = register(server, member.plane, workdir / "cloud")
        stack.callback(agent.stop)
        targets = {
            "direct": Target(
                url=member.plane.url,
                token=member.plane.token,
                ca_path=member.plane.ca_path,
                kubeconfig=member.plane.kubeconfig,
                cache_dir=workdir / "kubectl-cache-direct",
            ),
            "proxy": Target(
                url=f"{server.url}/clusters/{CLUSTER}",
                token=server.admin_token,
                ca_path=server.data_dir / "ca.crt",
                kubeconfig=write_kubeconfig(
                    workdir / "proxy.kubeconfig",
                    server=f"{server.url}/clusters/{CLUSTER}",
                    token=server.admin_token,
                    ca=server.data_dir / "ca.crt",
                ),
                cache_dir=workdir / "kubectl-cache-proxy",
            ),
        }
        wait_proxy(targets["proxy"])
        kubectl(member.plane.kubeconfig, "create", "namespace", NAMESPACE)
        if member.full is not None:
            # Pods are admitted once the serviceaccount controller made the namespace's default.
            eventually(
                lambda: kubectl(
                    member.plane.kubeconfig, "get", "sa", "-n", NAMESPACE, "-o", "name"
                ),
                lambda out: "serviceaccount/default" in out,
                what=f"the default service account of namespace {NAMESPACE}",
                within=60.0,
            )
        say(f"creating {plan.pods} pods")
        t0 = time.monotonic()
        asyncio.run(
            create_pods(
                url=member.plane.url,
                token=member.plane.token,
                ssl_context=member.plane.ssl_context(),
                namespace=NAMESPACE,
                count=plan.pods,
            )
        )
        figures["pods_created_s"] = round(time.monotonic() - t0, 1)
        say(f"kubectl get pods -A x{plan.list_runs} each, direct and proxy alternating")
        listed = list_with_kubectl(targets, plan)
        for mode in MODES:
            figures[f"{mode}_list"] = summary(listed[mode])
        figures.update(asyncio.run(http_figures(targets, plan)))
        if member.full is None:
            errors.setdefault("portforward", "no member cluster harness (kwok) to forward to")
        else:
            try:
                forwarded = portforward(member, targets, plan, workdir)
                figures["direct_portforward_mb_s"] = forwarded["direct"]
                figures["proxy_portforward_mb_s"] = forwarded["proxy"]
            except (ServiceError, OSError, RuntimeError, aiohttp.ClientError) as exc:
                errors["portforward"] = f"{type(exc).__name__}: {exc}"
                loud(f"port-forward failed: {errors['portforward']}")
    figures["elapsed_s"] = round(time.monotonic() - begun, 1)
    return figures, errors


# ---------------------------------------------------------------- the report


def flat(figures: dict[str, Any]) -> dict[str, float | None]:
    """The keys the issue names, and the watch keys."""

    def get(key: str, field: str) -> float | None:
        value = figures.get(key)
        return None if value is None else value[field]

    return {
        "direct_list_ms": get("direct_list", "p50_ms"),
        "proxy_list_ms": get("proxy_list", "p50_ms"),
        "direct_get_p50_ms": get("direct_get", "p50_ms"),
        "direct_get_p99_ms": get("direct_get", "p99_ms"),
        "proxy_get_p50_ms": get("proxy_get", "p50_ms"),
        "proxy_get_p99_ms": get("proxy_get", "p99_ms"),
        "direct_rps_c32": figures.get("direct_rps_c32"),
        "proxy_rps_c32": figures.get("proxy_rps_c32"),
        "direct_watch_p50_ms": get("direct_watch", "p50_ms"),
        "direct_watch_p99_ms": get("direct_watch", "p99_ms"),
        "proxy_watch_p50_ms": get("proxy_watch", "p50_ms"),
        "proxy_watch_p99_ms": get("proxy_watch", "p99_ms"),
        "portforward_mb_s": figures.get("proxy_portforward_mb_s"),
        "direct_portforward_mb_s": figures.get("direct_portforward_mb_s"),
    }


def goals(keys: dict[str, float | None]) -> dict[str, bool | None]:
    def ok(a: float | None, b: float | None, test: Callable[[float, float], bool]) -> bool | None:
        return None if a is None or b is None else test(a, b)

    return {
        "list_within_1.3x_direct": ok(
            keys["proxy_list_ms"], keys["direct_list_ms"], lambda p, d: p <= 1.3 * d
        ),
        "get_p50_added_at_most_1ms": ok(
            keys["proxy_get_p50_ms"], keys["direct_get_p50_ms"], lambda p, d: p - d <= 1.0
        ),
        "rps_c32_at_least_0.7x_direct": ok(
            keys["proxy_rps_c32"], keys["direct_rps_c32"], lambda p, d: p >= 0.7 * d
        ),
    }


def markdown(report: dict[str, Any]) -> str:
    keys = report["keys"]
    plan = report["plan"]

    def cell(key: str) -> str:
        value = keys.get(key)
        return "**not measured**" if value is None else f"{value:g}"

    def ratio(proxy: str, direct: str) -> str:
        p, d = keys.get(proxy), keys.get(direct)
        return "" if p is None or d is None or d == 0 else f"{p / d:.2f}"

    rows = [
        ("`kubectl get pods -A`, {pods:,} pods, p50 (ms)", "list_ms"),
        ("GET one pod, c=1, p50 (ms)", "get_p50_ms"),
        ("GET one pod, c=1, p99 (ms)", "get_p99_ms"),
        ("GET one pod, c=32 (requests/s)", "rps_c32"),
        ("watch event delivery, p50 (ms)", "watch_p50_ms"),
        ("watch event delivery, p99 (ms)", "watch_p99_ms"),
    ]
    lines = [
        "| figure | direct | through the cloud proxy | proxy / direct |",
        "|---|--:|--:|--:|",
    ]
    for label, suffix in rows:
        lines.append(
            f"| {label.format(pods=plan['pods'])} | {cell('direct_' + suffix)} | "
            f"{cell('proxy_' + suffix)} | {ratio('proxy_' + suffix, 'direct_' + suffix)} |"
        )
    lines.append(
        f"| `kubectl port-forward`, one {plan['portforward_mib']} MiB download (MB/s) | "
        f"{cell('direct_portforward_mb_s')} | {cell('portforward_mb_s')} | "
        f"{ratio('portforward_mb_s', 'direct_portforward_mb_s')} |"
    )
    goal_lines = [
        f"- {name}: " + ("not measured" if ok is None else ("met" if ok else "**not met**"))
        for name, ok in report["goals"].items()
    ]
    error_lines = [f"- **not measured: {part}**: {why}" for part, why in report["errors"].items()]
    return "\n".join(
        [
            START,
            (
                f"Measured {report['date']} on {report['machine']}, mode `{plan['mode']}` "
                f"({plan['list_runs']} kubectl LISTs, {plan['get_runs']} GETs at c=1, "
                f"{plan['c32_requests']} at c=32, {plan['watch_events']} watch events per "
                f"column; load average {report['load_before']} before the run)."
            ),
            "",
            *lines,
            "",
            "Goals (issue 12):",
            *goal_lines,
            *error_lines,
            END,
        ]
    )


HOWTO = """```sh
scripts/bench/clusters --quick                      # 1,000 pods, ~2 min; last stdout line: JSON
scripts/bench/clusters --out docs/benchmarks.md     # 5,000 pods, rewrites this section only
```

One member cluster (kine, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with
one fake node, from tests/harness/member.py), a real `tunnel-server run` and a real cluster-mode
`edge-agent run` joined with the token of `tunnel-server token create --kind cluster
--manifest`, using that manifest's service account and RBAC. "direct" is the member's own admin
token to its API server; "proxy" is the cloud's admin token to
`https://SERVER/clusters/bench/...`, which the agent forwards impersonating `edgefleet:admin`
(so the member also runs impersonation and RBAC checks that the direct admin, in
`system:masters`, skips). Port-forward: kwok dials a local HTTP server for the pod's port.
"""


def write_section(path: Path, section: str) -> None:
    write_marked_section(
        path,
        section,
        start=START,
        end=END,
        heading="Registered clusters: direct vs the cloud proxy",
        howto=HOWTO,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 pods, fewer runs")
    parser.add_argument("--out", type=Path, help="markdown file to write the section into")
    args = parser.parse_args()
    plan = make_plan(quick=args.quick)
    os.environ.setdefault("EDGEFLEET_KUBE_BIN", str(kube.DEFAULT_BIN))
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="edgefleet-clusters-bench-") as scratch:
        try:
            figures, errors = measure(plan, Path(scratch))
        except Exception as exc:  # noqa: BLE001 - reported as the run's result, loudly
            traceback.print_exc()
            figures, errors = {}, {"run": f"{type(exc).__name__}: {exc}"}
            loud(errors["run"])
    keys = flat(figures)
    report: dict[str, Any] = {
        "bench": "clusters",
        "date": dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
        "load_before": load_before,
        "plan": dataclasses.asdict(plan),
        "figures": figures,
        "keys": keys,
        "errors": errors,
    }
    report["goals"] = goals(keys)
    section = markdown(report)
    if args.out and not errors.get("run"):
        write_section(args.out, section)
        say(f"wrote the clusters section of {args.out}")
    print(section)
    print(json.dumps({**keys, **report}, sort_keys=True))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
