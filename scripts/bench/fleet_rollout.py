"""The fleet benchmark's rollouts: one WorkSet to N simulated clusters, and to the real members.

``rollout_sim``: a real ``tunnel-server run`` (own data dir and port) and one load process
(``agents_load.py --kind cluster --fleet``) holding N joined cluster identities, each with a
real mTLS WebSocket tunnel session and a simulated agent on the real ``fleet`` stream
(``fleet_sim.FleetSim``). Steps:

1. the server's RSS once it is ready and idle (*before*);
2. N clusters join (cluster tokens without approval: the hub accepts them) and connect; a
   Placement over every cluster is written and waited for until it chose all N (each
   ManagedCluster registered, accepted and renewing its lease);
3. the WorkSet (one small Deployment, rollout ``All``) is PUT; the clock runs from the PUT
   until the WorkSet's ``status.summary`` says ``applied == total == N``: the hub wrote N
   Works, pushed each down its cluster's stream, and recorded N Applied statuses;
4. the server's RSS again (*after*): ``hub_rss_mib_per_1000_clusters`` is (after - before)
   scaled to 1,000 clusters. It holds the N tunnel sessions, leases, the ManagedClusters,
   the Placement and the N Works with their statuses.

``rollout_real``: ``tests.harness.fleet.running_fleet`` (three whole member clusters with
kube-scheduler, kube-controller-manager and kwok, each with a real cluster-mode
``edge-agent``); one WorkSet with a Deployment to all three, timed from the PUT until the
summary says all three ``available`` (the Deployment's pod is running on a kwok node).

Everything is stopped at the end, also on error; a step that fails raises ``BenchError`` with
the reason (the caller lists the figures under ``not_measured``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bench_agents import LoadProcess, cpu_seconds, raise_fd_limit, rss
from bench_paths import READY_TIMEOUT_S, server_argv, wait_server_ready
from bench_procs import BenchError, free_port, running

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MIB = 1 << 20
API = "fleet.edgefleet.io/v1alpha1"
PLACEMENT = "bench-all"
WORKSET = "bench-web"
UNREACHABLE = "fleet.edgefleet.io/unreachable"
LONG_POLL_S = 30


@dataclass(frozen=True, kw_only=True, slots=True)
class SimPlan:
    clusters: int
    join_timeout_s: float
    connect_timeout_s: float
    placed_timeout_s: float
    """Until the Placement chose all N (registration, acceptance, first leases)."""
    rollout_timeout_s: float
    settle_s: float
    """Quiet before each RSS sample (a pass or a flush in flight finishes)."""
    idle_s: float = 10.0
    """The idle window after the rollout (one default lease period: every cluster renews once)."""


def make_sim_plan(*, clusters: int) -> SimPlan:
    """Timeouts that grow with N: joins are ~10 ms of CPU each on a busy 2-core machine."""
    if not 1 <= clusters <= 10_000:
        raise ValueError("simulated clusters must be within 1..10000")
    return SimPlan(
        clusters=clusters,
        join_timeout_s=60.0 + clusters * 0.2,
        connect_timeout_s=60.0 + clusters * 0.1,
        placed_timeout_s=60.0 + clusters * 0.3,
        rollout_timeout_s=120.0 + clusters * 0.5,
        settle_s=2.0,
    )


# ---------------------------------------------------------------- documents, pure


def deployment(name: str) -> dict[str, Any]:
    """A small Deployment: one replica of one container."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": "registry.example/web:1"}]},
            },
        },
    }


def document(kind: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": dict(spec)}


def placement_spec() -> dict[str, Any]:
    """Every cluster; a late lease on a busy machine must not take one out mid-measurement."""
    return {"tolerations": [{"key": UNREACHABLE, "operator": "Exists"}]}


def workset_spec(placement: str) -> dict[str, Any]:
    """One small Deployment to every cluster ``placement`` chose, all at once."""
    return {
        "placementRefs": [{"name": placement, "rolloutStrategy": {"type": "All"}}],
        "manifestWorkTemplate": {"workload": {"manifests": [deployment("bench-web")]}},
    }


def summary_count(workset: Mapping[str, Any] | None, field: str, total: int) -> int | None:
    """``status.summary[field]`` when the summary's total is ``total``, else None."""
    status = (workset or {}).get("status")
    summary = status.get("summary") if isinstance(status, Mapping) else None
    if not isinstance(summary, Mapping) or summary.get("total") != total:
        return None
    value = summary.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def selected(placement: Mapping[str, Any] | None) -> int:
    """How many clusters a Placement's status says it chose (0 before its first status)."""
    status = (placement or {}).get("status")
    count = status.get("numberOfSelectedClusters") if isinstance(status, Mapping) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def rss_per_1000_mib(before: int, after: int, clusters: int) -> float:
    """(after - before) bytes of RSS for ``clusters``, as MiB per 1,000 clusters."""
    if clusters < 1:
        raise ValueError("clusters must be positive")
    return round((after - before) / MIB * 1000 / clusters, 1)


# ---------------------------------------------------------------- the REST client


class Hub:
    """Admin calls on ``/api/v1/fleet`` of the server under test."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str, ca: Path) -> None:
        self._http = http
        self._url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._ssl = ssl.create_default_context(cafile=str(ca))

    async def request(
        self, method: str, path: str, body: object = None, *, within_s: float = 15.0
    ) -> tuple[int, Any]:
        async with self._http.request(
            method,
            self._url + path,
            json=body,
            headers=self._headers,
            ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=within_s),
        ) as answer:
            return answer.status, await answer.json(content_type=None)

    async def put(self, kind: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        path = f"/api/v1/fleet/{kind.lower()}s/{name}"
        status, answer = await self.request("PUT", path, document(kind, name, spec))
        if status not in (200, 201):
            raise BenchError(f"PUT {path} answered {status}: {answer}")
        return dict(answer)

    async def wait(
        self, kind: str, name: str, version: int, within_s: float
    ) -> dict[str, Any] | None:
        """The object once it is no longer at ``version`` (the API's long poll)."""
        path = (
            f"/api/v1/fleet/{kind.lower()}s/{name}?waitForChange=true"
            f"&resourceVersion={version}&timeoutSeconds={max(1, min(LONG_POLL_S, int(within_s)))}"
        )
        status, answer = await self.request("GET", path, within_s=LONG_POLL_S + 15)
        if status == 404:
            return None
        if status != 200:
            raise BenchError(f"GET {path} answered {status}: {answer}")
        return dict(answer)

    async def until(
        self,
        kind: str,
        name: str,
        done: Callable[[dict[str, Any]], bool],
        within_s: float,
        what: str,
    ) -> dict[str, Any]:
        """Long-poll ``kind/name`` until ``done(document)``; BenchError after ``within_s``."""
        deadline = time.monotonic() + within_s
        status, current = await self.request("GET", f"/api/v1/fleet/{kind.lower()}s/{name}")
        if status != 200:
            raise BenchError(f"GET {kind} {name} answered {status}: {current}")
        while not done(current):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{what} not reached in {within_s:.0f} s; last: {_brief(current)}")
            version = int(current["metadata"]["resourceVersion"])
            changed = await self.wait(kind, name, version, left)
            if changed is None:
                raise BenchError(f"{kind} {name} vanished while waiting for {what}")
            current = changed
        return current


def _brief(document: Mapping[str, Any] | None) -> str:
    status = (document or {}).get("status") or {}
    keep = ("summary", "numberOfSelectedClusters", "conditions")
    return str({k: status[k] for k in keep if k in status})[:600]


# ---------------------------------------------------------------- simulated clusters


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def _drain(load: LoadProcess) -> None:
    """Keep reading the load process's status lines (a full pipe would stall it)."""
    with contextlib.suppress(TimeoutError, BenchError):
        await load.next_event({"stopped"}, 24 * 3600)


async def _idle_cpu_pct(pid: int, window_s: float) -> float:
    """The process's CPU (% of one core) over ``window_s`` of quiet: N clusters' upkeep."""
    cpu, started = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(window_s)
    return round(100 * (cpu_seconds(pid) - cpu) / (time.monotonic() - started), 1)


async def rollout_sim(plan: SimPlan, workdir: Path) -> dict[str, Any]:
    n = plan.clusters
    limit = raise_fd_limit()
    if n + 256 > limit:
        raise BenchError(f"RLIMIT_NOFILE is {limit}; {n} sessions need more")
    folder = workdir / f"sim-{n}"
    folder.mkdir(mode=0o700)
    data_dir = folder / "server"
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    figures: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            running("fleet-server", server_argv(data_dir, port), folder)
        )
        await wait_server_ready(port, data_dir / "ca.crt", READY_TIMEOUT_S, server)
        await asyncio.sleep(plan.settle_s)
        before = rss(server.pid)
        load_argv = [
            sys.executable, str(HERE / "agents_load.py"), "--server", url,
            "--server-data-dir", str(data_dir), "--count", str(n), "--workdir", str(folder),
            "--kind", "cluster", "--fleet", "--backoff-cap", "10",
        ]  # fmt: skip
        proc = await stack.enter_async_context(
            running("fleet-load", load_argv, folder, stdout_pipe=True, stdin_pipe=True)
        )
        load = LoadProcess(proc)
        _log(f"sim {n}: joining {n} clusters")
        try:
            joined = await load.next_event({"joined"}, plan.join_timeout_s)
        except TimeoutError:
            raise BenchError(f"{n} cluster joins took over {plan.join_timeout_s:.0f} s") from None
        figures["sim_join_s"] = joined["join_s"]
        await load.send("connect")
        started = time.monotonic()
        try:
            await load.next_event({"connected"}, plan.connect_timeout_s)
        except TimeoutError:
            raise BenchError(
                f"only {load.last_status.get('connected', 0)} of {n} sessions came up in"
                f" {plan.connect_timeout_s:.0f} s (failures: {load.last_status.get('failures')})"
            ) from None
        figures["sim_connect_s"] = round(time.monotonic() - started, 2)
        async with asyncio.TaskGroup() as group:
            drain = group.create_task(_drain(load), name="fleet-load.drain")
            try:
                token = (data_dir / "admin-token").read_text().strip()
                async with aiohttp.ClientSession() as http:
                    hub = Hub(http, url, token, data_dir / "ca.crt")
                    figures |= await _rollout(hub, plan, started, (server.pid, proc.pid))
                idle_pct = await _idle_cpu_pct(server.pid, plan.idle_s)
                after = rss(server.pid)
                proc.check_alive()
                figures |= {
                    "hub_rss_before_MiB": round(before / MIB, 1),
                    "hub_rss_after_MiB": round(after / MIB, 1),
                    "hub_rss_mib_per_1000_clusters": rss_per_1000_mib(before, after, n),
                    "hub_idle_cpu_pct": idle_pct,
                    "sim_load_status": {
                        key: load.last_status.get(key) for key in ("connected", "failures", "fleet")
                    },
                }
                await load.send("stop")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.process.wait(), 10)
            finally:
                drain.cancel()
    return figures


async def _rollout(
    hub: Hub, plan: SimPlan, connected_at: float, pids: tuple[int, int]
) -> dict[str, Any]:
    """Placement, then the timed WorkSet; ``pids``: the server's and the load process's."""
    pid, load_pid = pids
    n = plan.clusters
    await asyncio.sleep(plan.settle_s)
    connected_rss = rss(pid)
    _log(f"sim {n}: all connected; waiting for the placement to choose all {n}")
    placing = time.monotonic()
    await hub.put("Placement", PLACEMENT, placement_spec())
    await hub.until(
        "Placement",
        PLACEMENT,
        lambda doc: selected(doc) == n,
        plan.placed_timeout_s,
        f"the placement choosing all {n} clusters",
    )
    placed_s = round(time.monotonic() - placing, 2)
    since_connect_s = round(time.monotonic() - connected_at, 2)
    await asyncio.sleep(plan.settle_s)
    placed_rss = rss(pid)
    _log(f"sim {n}: placed ({placed_s} s after its PUT); PUT the WorkSet")
    hub_cpu, load_cpu = cpu_seconds(pid), cpu_seconds(load_pid)
    started = time.monotonic()
    await hub.put("WorkSet", WORKSET, workset_spec(PLACEMENT))
    await hub.until(
        "WorkSet",
        WORKSET,
        lambda doc: summary_count(doc, "applied", n) == n,
        plan.rollout_timeout_s,
        f"the WorkSet applied on all {n} clusters",
    )
    elapsed = round(time.monotonic() - started, 2)
    hub_cpu, load_cpu = cpu_seconds(pid) - hub_cpu, cpu_seconds(load_pid) - load_cpu
    _log(f"sim {n}: applied on all {n} in {elapsed} s")
    return {
        "rollout_sim_clusters": n,
        "rollout_sim_s": elapsed,
        "sim_placement_s": placed_s,
        "sim_placed_since_connect_s": since_connect_s,
        "hub_rss_connected_MiB": round(connected_rss / MIB, 1),
        "hub_rss_placed_MiB": round(placed_rss / MIB, 1),
        "rollout_sim_hub_cpu_s": round(hub_cpu, 2),
        "rollout_sim_load_cpu_s": round(load_cpu, 2),
    }


def measure_sim(clusters: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-sim-") as folder:
        return asyncio.run(rollout_sim(make_sim_plan(clusters=clusters), Path(folder)))


# ---------------------------------------------------------------- real members


def measure_real(*, within_s: float = 300.0) -> dict[str, Any]:
    """One WorkSet to every member of the e2e harness fleet, until all Available."""
    sys.path.insert(0, str(ROOT))
    from tests.harness.fleet import MEMBERS, running_fleet  # noqa: PLC0415 - needs kube binaries
    from tests.harness.waiting import NotSeen, eventually  # noqa: PLC0415 - beside the harness

    def wait(check: Callable[[], bool], what: str) -> None:
        try:
            eventually(check, what=what, within=within_s, every=0.1)
        except NotSeen as error:
            raise BenchError(str(error)) from None

    with tempfile.TemporaryDirectory(prefix="fleet-bench-real-") as folder:
        started = time.monotonic()
        with running_fleet(Path(folder), lease_seconds=2) as fleet:
            up_s = round(time.monotonic() - started, 1)
            n = len(MEMBERS)
            _log(f"real: {n} member clusters up in {up_s} s; placing")
            fleet.put("Placement", PLACEMENT, placement_spec())
            wait(
                lambda: selected(fleet.get("Placement", PLACEMENT)) == n,
                f"the placement choosing all {n} members",
            )
            started = time.monotonic()
            fleet.put("WorkSet", WORKSET, workset_spec(PLACEMENT))
            wait(
                lambda: summary_count(fleet.get("WorkSet", WORKSET), "available", n) == n,
                f"the WorkSet available on all {n} members",
            )
            elapsed = round(time.monotonic() - started, 2)
            _log(f"real: available on all {n} in {elapsed} s")
            return {"rollout_real_clusters": n, "rollout_real_s": elapsed, "real_fleet_up_s": up_s}
