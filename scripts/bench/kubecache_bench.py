"""Kube cache benchmark: the API server direct vs the kube proxy online vs offline, one run.

Run it through ``scripts/bench/kubecache``. It starts a real kube-apiserver (kine underneath,
from tests/harness), fills it with pods, and a real ``edge-agent run`` with ``[kube]`` on.
Online figures go through the agent to the API server; then the API server is stopped and the
same requests are answered from the agent's disk cache. Progress goes to stderr; the last
stdout line is one JSON object with every figure and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.harness import kube  # noqa: E402 - after the repository root is on the path
from tests.harness.kube_agent import KubeAgent  # noqa: E402
from tests.harness.kube_bulk import create_pods  # noqa: E402

MIB = 1 << 20
KUBELET = {"User-Agent": "kubelet/v1.36.3 (linux/amd64) kubernetes/bench"}
START, END = "<!-- bench:kubecache:start -->", "<!-- bench:kubecache:end -->"
MODES = ("direct", "online", "offline")


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    pods: int
    get_runs: int
    list_runs: int
    watch_events: int


def make_plan(*, quick: bool) -> Plan:
    if quick:
        # 1,000 pods: creating 5,000 in kine alone takes 20-50 s on a small machine.
        return Plan(mode="quick", pods=1000, get_runs=100, list_runs=5, watch_events=20)
    return Plan(mode="full", pods=5000, get_runs=1000, list_runs=30, watch_events=200)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"p50_ms": round(percentile(ms, 0.5), 2), "p99_ms": round(percentile(ms, 0.99), 2)}


async def timed(
    runs: int, call: Callable[[], Awaitable[None]], check: Callable[[], Awaitable[None]]
) -> list[float]:
    await check()  # warm-up, and the answer is checked once (parsing it is the client's cost)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def fetch(http: aiohttp.ClientSession, url: str, *, count_items: int = -1) -> None:
    async with http.get(url, headers=KUBELET) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status} {body[:300]!r}")
    if count_items >= 0:
        items = len(json.loads(body)["items"])
        if items != count_items:
            raise RuntimeError(f"{url}: {items} items, expected {count_items}")


async def watch_latency(
    http: aiohttp.ClientSession,
    cloud: aiohttp.ClientSession,
    *,
    base: str,
    api: str,
    ns: str,
    n: int,
) -> list[float]:
    """From sending a create to the API server until the watcher reads its ADDED event."""
    path = f"/api/v1/namespaces/{ns}/configmaps"
    async with http.get(base + path, headers=KUBELET) as listed:
        rv = (await listed.json())["metadata"]["resourceVersion"]
    samples: list[float] = []
    params = {"watch": "1", "resourceVersion": rv}
    tag = f"w{int(time.time() * 1000) % 10**8}"
    async with http.get(base + path, params=params, headers=KUBELET) as stream:
        for index in range(n):
            name = f"{tag}-{index}"
            body = {"metadata": {"name": name}, "data": {"i": str(index)}}
            started = time.perf_counter()
            async with cloud.post(api + path, json=body) as created:
                if created.status != 201:
                    raise RuntimeError(f"create: HTTP {created.status}")
            while True:
                line = await stream.content.readline()
                event = json.loads(line)
                if event["object"]["metadata"].get("name") == name:
                    samples.append(time.perf_counter() - started)
                    break
    return samples


def getter(
    http: aiohttp.ClientSession, url: str, count_items: int = -1
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """The timed request (reads the whole body) and its checked twin (also parses it)."""

    def call() -> Awaitable[None]:
        return fetch(http, url)

    def check() -> Awaitable[None]:
        return fetch(http, url, count_items=count_items)

    return call, check


def rss_mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / MIB, 1)


def cold_start(agent: KubeAgent, list_url: str, pods: int) -> float:
    """Seconds from starting ``edge-agent run`` until the proxy answers a LIST from the cache."""
    agent.stop()
    started = time.perf_counter()
    agent.start()
    while True:
        try:
            request = urllib.request.Request(list_url, headers=KUBELET)  # noqa: S310 - loopback
            with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
                body = answer.read()
            if len(json.loads(body)["items"]) == pods:
                return time.perf_counter() - started
        except OSError:
            if agent.process is not None:
                agent.process.check_running()
            time.sleep(0.005)


async def measure(plan: Plan, workdir: Path) -> dict[str, Any]:  # noqa: PLR0915 - one story
    begun = time.monotonic()
    say("starting kine + kube-apiserver")
    plane = kube.start("bench", workdir / "kube")
    results: dict[str, Any] = {m: {} for m in MODES}
    agent = KubeAgent(
        workdir=workdir / "agent",
        kubeconfig=plane.kubeconfig,
        cache_agents=("kubelet",),
        health={"interval": 0.5, "timeout": 1.0, "failure_threshold": 2, "success_threshold": 2},
    )
    try:
        ns = "bench"
        admin = {"Authorization": f"Bearer {plane.token}"}
        connector = aiohttp.TCPConnector(ssl=plane.ssl_context())
        async with aiohttp.ClientSession(connector=connector, headers=admin) as cloud:
            async with cloud.post(
                f"{plane.url}/api/v1/namespaces", json={"metadata": {"name": ns}}
            ):
                pass
            say(f"creating {plan.pods} pods")
            t0 = time.monotonic()
            await create_pods(
                url=plane.url,
                token=plane.token,
                ssl_context=plane.ssl_context(),
                namespace=ns,
                count=plan.pods,
            )
            results["setup"] = {"pods_created_s": round(time.monotonic() - t0, 1)}
            agent.start()
            await asyncio.to_thread(agent.wait_state, "online")
            proxy_http = aiohttp.ClientSession()
            pod_path = f"/api/v1/namespaces/{ns}/pods"
            one_path = f"{pod_path}/pod-00042"
            bases = {"direct": (cloud, plane.url), "online": (proxy_http, agent.url)}
            try:
                for mode, (http, base) in bases.items():
                    say(f"{mode}: GET x{plan.get_runs}, LIST of {plan.pods} pods x{plan.list_runs}")
                    results[mode]["get"] = summary(
                        await timed(plan.get_runs, *getter(http, base + one_path))
                    )
                    results[mode]["list"] = summary(
                        await timed(plan.list_runs, *getter(http, base + pod_path, plan.pods))
                    )
                    say(f"{mode}: watch event delivery x{plan.watch_events}")
                    results[mode]["watch"] = summary(
                        await watch_latency(
                            http, cloud, base=base, api=plane.url, ns=ns, n=plan.watch_events
                        )
                    )
                # The kubelet's view is cached now: the list above went through the proxy.
                rss_online = rss_mib(agent.pid)
                await proxy_http.close()
                proxy_http = aiohttp.ClientSession()
                say("offline: stopping the API server")
                plane.stop_apiserver()
                await asyncio.to_thread(agent.wait_state, "offline")
                http = proxy_http
                results["offline"]["get"] = summary(
                    await timed(plan.get_runs, *getter(http, agent.url + one_path))
                )
                results["offline"]["list"] = summary(
                    await timed(plan.list_runs, *getter(http, agent.url + pod_path, plan.pods))
                )
                results["offline"]["watch"] = None
                results["agent"] = {
                    "rss_after_lists_mib": rss_mib(agent.pid),
                    "rss_after_online_mib": rss_online,
                }
                say("cold start: restarting the agent with the API server still down")
                # On this (the main) thread: the harness ties the child's life to its thread.
                starts = [
                    cold_start(agent, agent.url + pod_path, plan.pods)
                    for _ in range(2 if plan.mode == "quick" else 5)
                ]
                results["agent"]["cold_start_to_cached_list_s"] = round(min(starts), 3)
                results["agent"]["cold_start_runs_s"] = [round(s, 3) for s in starts]
                results["agent"]["rss_cold_with_cache_mib"] = rss_mib(agent.pid)
                stats = await asyncio.to_thread(agent.cache, "stats")
                results["agent"]["cache_bytes"] = stats["bytes"]
                results["agent"]["cached_objects"] = stats["objects"]
            finally:
                await proxy_http.close()
    finally:
        agent.stop()
        plane.stop()
    results["elapsed_s"] = round(time.monotonic() - begun, 1)
    return results


def ratios(results: dict[str, Any]) -> dict[str, float]:
    direct = results["direct"]
    out = {}
    for mode in ("online", "offline"):
        for figure in ("get", "list"):
            out[f"{mode}_{figure}_p50_vs_direct"] = round(
                results[mode][figure]["p50_ms"] / direct[figure]["p50_ms"], 2
            )
    out["online_watch_p50_vs_direct"] = round(
        results["online"]["watch"]["p50_ms"] / direct["watch"]["p50_ms"], 2
    )
    return out


def goals(results: dict[str, Any], ratio: dict[str, float]) -> dict[str, bool]:
    agent = results["agent"]
    return {
        "online_get_p50_within_1.2x": ratio["online_get_p50_vs_direct"] <= 1.2,
        "online_list_p50_within_1.2x": ratio["online_list_p50_vs_direct"] <= 1.2,
        "offline_list_faster_than_direct": ratio["offline_list_p50_vs_direct"] < 1.0,
        "rss_under_60_mib": agent["rss_after_lists_mib"] < 60,
        "cold_start_under_1s": agent["cold_start_to_cached_list_s"] < 1.0,
    }


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    plan = report["plan"]

    def cell(mode: str, figure: str, key: str) -> str:
        value = r[mode].get(figure)
        return "n/a" if value is None else f"{value[key]:.1f}"

    rows = [
        "| figure | direct API server | proxy online | proxy offline (cache) |",
        "|---|---|---|---|",
    ]
    figures = (("get", "GET one pod"), ("list", f"LIST {plan['pods']:,} pods"))
    rows += [
        f"| {label}, {key.split('_')[0]} (ms) | {cell('direct', figure, key)} | "
        f"{cell('online', figure, key)} | {cell('offline', figure, key)} |"
        for figure, label in figures
        for key in ("p50_ms", "p99_ms")
    ]
    rows += [
        f"| watch event delivery, {key.split('_')[0]} (ms) | {cell('direct', 'watch', key)} | "
        f"{cell('online', 'watch', key)} | n/a (no cloud while offline) |"
        for key in ("p50_ms", "p99_ms")
    ]
    agent = r["agent"]
    goal_lines = [
        f"- {name}: {'met' if ok else '**not met**'}" for name, ok in report["goals"].items()
    ]
    return "\n".join(
        [
            START,
            (
                f"Measured {report['date']} on {report['machine']}, mode `{plan['mode']}` "
                f"({plan['get_runs']} GETs, {plan['list_runs']} LISTs, "
                f"{plan['watch_events']} watch events per column; one client, requests one "
                "after another)."
            ),
            "",
            *rows,
            "",
            (
                f"- Agent RSS with {agent['cached_objects']:,} cached objects: "
                f"{agent['rss_after_lists_mib']} MiB after serving the LISTs above "
                f"({agent.get('rss_after_online_mib', 'n/a')} MiB after the online part), "
                f"{agent['rss_cold_with_cache_mib']} MiB right after a cold start; cache on disk "
                f"{agent['cache_bytes'] / MIB:.1f} MiB."
            ),
            (
                f"- Cold start (process start until a LIST of {plan['pods']:,} pods is answered "
                f"from the cache, API server down): {agent['cold_start_to_cached_list_s']} s "
                f"(runs: {agent['cold_start_runs_s']})."
            ),
            "- Ratios (p50 vs direct): "
            + ", ".join(f"{k} {v}" for k, v in report["ratios"].items())
            + ".",
            "- Goals (issues 4 and 18):",
            *goal_lines,
            END,
        ]
    )


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n## Kube cache benchmark\n\n" + HOWTO + "\n" + section + "\n"
    path.write_text(text)


HOWTO = """```sh
scripts/bench/kubecache --quick                      # < 1 min; last stdout line: one JSON object
scripts/bench/kubecache --out docs/benchmarks.md     # full run, rewrites this section only
```

A real kube-apiserver (kine underneath) holds the pods; a real `edge-agent run` with `[kube]`
enabled is the proxy. "Online" goes through the agent to the API server (HTTPS, token);
"offline" is the same request after the API server was stopped, answered from the agent's
disk cache. Pods are never scheduled (no kubelet), so they are small and Pending.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs; under a minute")
    parser.add_argument("--out", type=Path, help="markdown file to write the section into")
    args = parser.parse_args()
    plan = make_plan(quick=args.quick)
    os.environ.setdefault("EDGEFLEET_KUBE_BIN", str(kube.DEFAULT_BIN))
    with tempfile.TemporaryDirectory(prefix="edgefleet-kubecache-bench-") as scratch:
        results = asyncio.run(measure(plan, Path(scratch)))
    ratio = ratios(results)
    report = {
        "bench": "kubecache",
        "date": dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
        "plan": dataclasses.asdict(plan),
        "results": results,
        "ratios": ratio,
    }
    report["goals"] = goals(results, ratio)
    section = markdown(report)
    if args.out:
        write_section(args.out, section)
        say(f"wrote the kubecache section of {args.out}")
    print(section)
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
