"""Twin benchmark: raw mosquitto vs reported updates through the agent to the cloud.

Side by side in one run: raw mosquitto publish->subscribe throughput, reported updates through
the agent to the cloud (throughput, latency), and desired PATCH -> device latency.

Run it through ``scripts/bench/twins``. Everything is real and on 127.0.0.1: mosquitto with
dynamic security, a tunnel server with the twins part, a joined agent with twins and the
sync, simulated devices with their own credentials. Progress goes to stderr; stdout gets a
short summary whose last line is one JSON object with every figure.

Figures:

- ``raw``: D publishers (QoS 1, a window of W messages in flight each) -> one subscriber on
  the same broker: messages/s from the first publish to the last delivery. The limit.
- ``durable``: D devices report (QoS 1, window W, each report answered by the agent only after
  its SQLite commit): reports/s until the last answer. Durable in the agent's outbox.
- ``cloud``: the same reports until the cloud applied them all (long-poll on the cloud API).

The load of ``raw`` and ``durable`` comes from ``twins-loadgen`` (scripts/bench/twins_loadgen,
Go, built with ``go install`` into ~/.cache/edgefleet/bench/bin): Python devices top out near
800 messages/s here, which is what bound the first figures (issue 18). ``raw_python`` keeps the
old Python publishers' figure beside it, so the generator's own limit stays visible.
``--agent-root`` runs the agent and server from another tree (e.g. ``git archive`` of main) for
an A/B in alternating runs.
- ``latency``: one device reports at a steady pace; device publish -> applied in the cloud
  (the cloud API's long-poll returns), p50/p99 in ms.
- ``desired``: PATCH via the REST API -> the device receives ``twin/desired``, p50/p99 in ms.

The processes are the real ``tunnel-server run`` and ``edge-agent run`` (``[twins]`` enabled).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import bench_stats as st

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge_agent.twins.simulator import (  # noqa: E402 - after the path set-up above
    DeviceCredential,
    SimulatedDevice,
    claim_device,
)
from edge_agent.twins.topics import Op  # noqa: E402
from tests.harness import mqtt  # noqa: E402
from tests.harness.daemons import BIN, command  # noqa: E402
from tests.harness.procs import ManagedProcess, free_port  # noqa: E402

NODE = "bench-node"
LOADGEN_SOURCE = Path(__file__).resolve().parent / "twins_loadgen"
LOADGEN_BIN = Path.home() / ".cache" / "edgefleet" / "bench" / "bin" / "twins-loadgen"
START = "<!-- bench:twins:start -->"
END = "<!-- bench:twins:end -->"


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    devices: int
    window: int
    raw_messages: int
    raw_python_messages: int
    reports: int
    latency_samples: int
    latency_interval_s: float
    desired_samples: int
    time_budget_s: int


def make_plan(*, quick: bool) -> Plan:
    if quick:
        return Plan(
            mode="quick", devices=20, window=16, raw_messages=60_000, raw_python_messages=4_000,
            reports=20_000, latency_samples=100, latency_interval_s=0.02, desired_samples=50,
            time_budget_s=120,
        )  # fmt: skip
    return Plan(
        mode="full", devices=50, window=16, raw_messages=200_000, raw_python_messages=10_000,
        reports=100_000, latency_samples=1000, latency_interval_s=0.02, desired_samples=300,
        time_budget_s=600,
    )  # fmt: skip


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the system under test


@dataclass(kw_only=True)
class System:
    broker: mqtt.Broker
    server_url: str
    token: str
    http: aiohttp.ClientSession
    claim_username: str
    claim_password: str
    agent_pid: int

    async def claim(self, device: str, model: str) -> DeviceCredential:
        return await claim_device(
            host=self.broker.host,
            port=self.broker.port,
            claim_username=self.claim_username,
            claim_password=self.claim_password,
            device_id=device,
            model=model,
        )

    def device(self, credential: DeviceCredential) -> SimulatedDevice:
        return SimulatedDevice(
            host=self.broker.host, port=self.broker.port, credential=credential, timeout=60.0
        )

    async def api(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.request(
            method, self.server_url + path, json=body, headers=headers
        ) as answer:
            data: dict[str, Any] = await answer.json()
            if answer.status != 200:
                raise RuntimeError(f"{method} {path}: {answer.status} {data}")
            return data

    async def wait_reported(self, device: str, version: int, *, wait: float = 25.0) -> None:
        path = f"/api/v1/devices/{NODE}:{device}/twin?wait={wait}&reportedVersion={version}"
        while (await self.api("GET", path))["reported"]["$version"] < version:
            pass

    async def wait_device(self, device: str) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        url = f"{self.server_url}/api/v1/devices/{NODE}:{device}"
        async with asyncio.timeout(30):
            while True:
                async with self.http.get(url, headers=headers) as answer:
                    if answer.status == 200:
                        return
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def system(workdir: Path, agent_root: Path) -> AsyncIterator[System]:
    env = {"PYTHONPATH": str(agent_root)}
    broker = mqtt.start(workdir / "mosquitto", dynsec=True)
    server_dir, port = workdir / "server", free_port()
    procs: list[ManagedProcess] = []
    try:
        procs.append(
            ManagedProcess(
                "tunnel-server",
                [
                    str(BIN / "tunnel-server"),
                    "run",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--data-dir",
                    str(server_dir),
                    "--public-name",
                    "127.0.0.1",
                ],
                log_path=workdir / "tunnel-server.log",
                env=env,
            )
        )
        url = f"https://127.0.0.1:{port}"
        await _wait_https(url, server_dir, procs[0])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(server_dir / "ca.crt"))
        ca_hash = command("tunnel-server", "ca-hash", "--data-dir", server_dir).strip()
        token = command(
            "tunnel-server", "token", "create", "--kind", "node", "--name", NODE,
            "--data-dir", server_dir,
        ).strip()  # fmt: skip
        agent_dir = workdir / "agent"
        command(
            "edge-agent", "join", "--server", url, "--token", token, "--ca-hash", ca_hash,
            "--name", NODE, "--data-dir", agent_dir,
        )  # fmt: skip
        suffix = secrets.token_hex(4)
        claim_password = secrets.token_urlsafe(12)
        local_api_port = free_port()
        secrets_dir = workdir / "secrets"
        secrets_dir.mkdir(mode=0o700)
        (secrets_dir / "admin").write_text(f"{broker.admin_password}\n")
        (secrets_dir / "claim").write_text(f"{claim_password}\n")
        config = workdir / "agent.toml"
        config.write_text(
            "[tunnel]\nbackoff_base = 0.1\nbackoff_cap = 1.0\n\n[twins]\nenabled = true\n"
            f'broker_host = "{broker.host}"\nbroker_port = {broker.port}\n'
            f'admin_password_file = "{secrets_dir / "admin"}"\n'
            f'claim_username = "claim-{suffix}"\n'
            f'claim_password_file = "{secrets_dir / "claim"}"\n'
            f'agent_username = "agent-{suffix}"\nagent_client_id = "agent-{suffix}"\n'
            'durability = "full"\n'
        )
        agent = ManagedProcess(
            "edge-agent",
            [
                str(BIN / "edge-agent"),
                "run",
                "--config",
                str(config),
                "--data-dir",
                str(agent_dir),
                "--local-api-port",
                str(local_api_port),
            ],
            log_path=workdir / "agent.log",
            env=env,
        )
        procs.append(agent)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            await _wait_agent(http, local_api_port, agent)
            yield System(
                broker=broker,
                server_url=url,
                token=(server_dir / "admin-token").read_text().strip(),
                http=http,
                claim_username=f"claim-{suffix}",
                claim_password=claim_password,
                agent_pid=agent.pid,
            )
    finally:
        for proc in reversed(procs):
            proc.stop(grace=3.0)
        broker.stop()


async def _wait_https(url: str, data_dir: Path, proc: ManagedProcess) -> None:
    async with asyncio.timeout(30):
        while True:
            proc.check_running()
            if (data_dir / "ca.crt").exists():
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.load_verify_locations(cafile=str(data_dir / "ca.crt"))
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with (
                        aiohttp.ClientSession() as http,
                        http.get(url + "/readyz", ssl=context) as answer,
                    ):
                        if answer.status == 200:
                            return
            await asyncio.sleep(0.1)


async def _wait_agent(http: aiohttp.ClientSession, port: int, proc: ManagedProcess) -> None:
    async with asyncio.timeout(30):
        while True:
            proc.check_running()
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"http://127.0.0.1:{port}/status") as answer:
                    status = await answer.json()
                    twins = status["twins"]
                    if twins["ready"] and twins["sync"]["connected"]:
                        return
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------- measurements


def build_loadgen() -> Path:
    """``go install`` the load generator (pinned by its go.mod/go.sum) into the bench cache."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = {**os.environ, "GOBIN": str(LOADGEN_BIN.parent), "GOFLAGS": "-mod=readonly"}
    subprocess.run([go, "install", "."], cwd=LOADGEN_SOURCE, env=env, check=True)
    return LOADGEN_BIN


async def loadgen(job: dict[str, Any]) -> dict[str, Any]:
    """Run one ``twins-loadgen`` job (JSON on stdin) and return its JSON answer."""
    process = await asyncio.create_subprocess_exec(
        str(LOADGEN_BIN),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate(json.dumps(job).encode())
    answer: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if process.returncode != 0 or answer.get("error"):
        raise RuntimeError(f"twins-loadgen {job['mode']}: {answer.get('error')}")
    return answer


async def raw_loadgen(broker: mqtt.Broker, plan: Plan) -> dict[str, Any]:
    """The raw limit with the compiled generator: D publishers -> one subscriber, window W."""
    run = secrets.token_hex(4)
    password = await _bench_account(broker, run)
    answer = await loadgen(
        {
            "mode": "raw",
            "broker": f"tcp://{broker.host}:{broker.port}",
            "publishers": plan.devices,
            "per_device": plan.raw_messages // plan.devices,
            "window": plan.window,
            "timeout_s": 60,
            "resend_after_s": 2.0,
            "run": run,
            "username": f"bench-{run}",
            "password": password,
        }
    )
    return {key: answer[key] for key in ("messages", "seconds", "per_s", "lost")}


async def raw_broker(broker: mqtt.Broker, plan: Plan) -> dict[str, Any]:
    """D publishers -> one subscriber, QoS 1, W messages per publisher in flight end to end.

    In flight means published and not yet delivered, as a device waits for its answers.
    """
    per = plan.raw_python_messages // plan.devices
    total = per * plan.devices
    payload = json.dumps({"rid": "r000000", "patch": {"switchCount": 123456}}).encode()
    run = secrets.token_hex(4)
    windows = [asyncio.Semaphore(plan.window) for _ in range(plan.devices)]
    received = 0
    done = asyncio.Event()
    password = await _bench_account(broker, run)

    def client(name: str) -> aiomqtt.Client:
        return broker.client(identifier=name, username=f"bench-{run}", password=password)

    async def subscriber(sub: aiomqtt.Client) -> None:
        nonlocal received
        async for message in sub.messages:
            windows[int(str(message.topic).rsplit("/", 1)[1])].release()
            received += 1
            if received >= total:
                done.set()

    async def publisher(index: int) -> None:
        async with client(f"raw-{run}-{index}") as publishing, asyncio.TaskGroup() as group:
            topic = f"bench/{run}/{index}"
            for number in range(per):
                await windows[index].acquire()
                group.create_task(
                    publishing.publish(topic, payload, qos=1), name=f"raw.pub[{index}.{number}]"
                )

    async with client(f"raw-sub-{run}") as sub:
        await sub.subscribe(f"bench/{run}/#", qos=1)
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(subscriber(sub), name="raw.subscriber")
            started = time.monotonic()
            for index in range(plan.devices):
                group.create_task(publisher(index), name=f"raw.publisher[{index}]")
            async with asyncio.timeout(60):
                await done.wait()
            seconds = time.monotonic() - started
            reader.cancel()
    return {"messages": total, "seconds": round(seconds, 3), "per_s": round(total / seconds, 1)}


async def _bench_account(broker: mqtt.Broker, run: str) -> str:
    """A broker user allowed on ``bench/<run>/#`` only (dynamic security denies by default)."""
    password = secrets.token_urlsafe(16)
    role = f"bench-{run}"
    acls = [
        {"acltype": kind, "topic": f"bench/{run}/#", "priority": 0, "allow": True}
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    for command_body in (
        {"command": "createRole", "rolename": role, "acls": acls},
        {
            "command": "createClient",
            "username": role,
            "password": password,
            "roles": [{"rolename": role}],
        },
    ):
        answer = await broker.dynsec_command(command_body)
        if answer.get("error"):
            raise RuntimeError(f"dynamic security refused {command_body['command']}: {answer}")
    return password


async def twin_path(sut: System, plan: Plan) -> dict[str, Any]:
    """D onboarded devices report through the compiled generator, window W each."""
    per = plan.reports // plan.devices
    total = per * plan.devices
    credentials = [await sut.claim(f"meter-{i}", "relay-switch") for i in range(plan.devices)]
    for credential in credentials:
        await sut.wait_device(credential.device_id)
    started = time.monotonic()
    cpu_before = cpu_seconds(sut.agent_pid)
    sched_before = sched_seconds(sut.agent_pid)
    answer = await loadgen(
        {
            "mode": "twin",
            "broker": f"tcp://{sut.broker.host}:{sut.broker.port}",
            "per_device": per,
            "window": plan.window,
            "timeout_s": plan.time_budget_s,
            "resend_after_s": 3.0,
            "property": "switchCount",
            "devices": [
                {
                    "device_id": c.device_id,
                    "username": c.username,
                    "password": c.password,
                    "client_id": c.client_id,
                }
                for c in credentials
            ],
        }
    )
    durable_s = answer["seconds"]
    cpu_after = cpu_seconds(sut.agent_pid)
    sched_after = sched_seconds(sut.agent_pid)
    async with asyncio.TaskGroup() as group:
        for index, c in enumerate(credentials):
            group.create_task(sut.wait_reported(c.device_id, per), name=f"twin.cloud[{index}]")
    cloud_s = time.monotonic() - started
    return {
        "reports": total,
        "durable_s": round(durable_s, 3),
        "durable_per_s": round(total / durable_s, 1),
        "cloud_s": round(cloud_s, 3),
        "cloud_per_s": round(total / cloud_s, 1),
        "answer_p50_ms": answer["answer_p50_ms"],
        "answer_p99_ms": answer["answer_p99_ms"],
        "resends": answer["resends"],
        "refused": answer["refused"],
        # The agent's own CPU (user + system) while the generator ran: ms per report, and
        # cores it kept busy (near 1.0: its one event loop is what binds, whatever the load).
        "agent_cpu_ms_per_report": None
        if cpu_before is None or cpu_after is None
        else round((cpu_after - cpu_before) * 1000 / total, 3),
        "agent_cpu_cores": None
        if cpu_before is None or cpu_after is None
        else round((cpu_after - cpu_before) / durable_s, 2),
        # Share of the run the agent's threads waited for a CPU while runnable (Linux
        # schedstat): high means the shared machine starved it, not that it idled.
        "agent_runqueue_wait_share": None
        if sched_before is None or sched_after is None
        else round((sched_after[1] - sched_before[1]) / durable_s, 2),
    }


async def device_to_cloud_latency(sut: System, plan: Plan) -> dict[str, Any]:
    credential = await sut.claim("latency-1", "thermostat")
    await sut.wait_device(credential.device_id)
    samples: list[float] = []
    async with sut.device(credential) as device:
        for number in range(1, plan.latency_samples + 1):
            async with asyncio.TaskGroup() as group:
                waiter = group.create_task(
                    sut.wait_reported("latency-1", number, wait=10.0), name="latency.poll"
                )
                await asyncio.sleep(0.002)  # let the long-poll reach the server first
                started = time.monotonic()
                body = {"rid": f"l{number}", "patch": {"temperature": float(number % 50)}}
                await device.client.publish(device.topic(Op.REPORTED), json.dumps(body), qos=1)
                await waiter
                samples.append((time.monotonic() - started) * 1000)
            await asyncio.sleep(plan.latency_interval_s)
    return _latency(samples)


async def desired_latency(sut: System, plan: Plan) -> dict[str, Any]:
    credential = await sut.claim("desired-1", "thermostat")
    await sut.wait_device(credential.device_id)
    samples: list[float] = []
    async with sut.device(credential) as device:
        for number in range(plan.desired_samples):
            setpoint = 5.0 + number % 25
            started = time.monotonic()
            await sut.api(
                "PATCH",
                f"/api/v1/devices/{NODE}:desired-1/twin",
                {"desired": {"setpoint": setpoint, "mode": ["heat", "cool"][number % 2]}},
            )
            await device.wait_for(Op.DESIRED, functools.partial(_is_version, number + 1))
            samples.append((time.monotonic() - started) * 1000)
            await asyncio.sleep(plan.latency_interval_s)
    return _latency(samples)


def _is_version(version: int, message: dict[str, Any]) -> bool:
    return bool(message.get("version") == version)


def _latency(samples: list[float]) -> dict[str, Any]:
    return {
        "samples": len(samples),
        "p50_ms": round(st.percentile(samples, 50), 2),
        "p99_ms": round(st.percentile(samples, 99), 2),
        "max_ms": round(max(samples), 2),
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None if it cannot be read)."""
    try:
        import psutil  # noqa: PLC0415 - only for this figure

        times = psutil.Process(pid).cpu_times()
    except (ImportError, OSError):
        return None
    return float(times.user + times.system)


def sched_seconds(pid: int) -> tuple[float, float] | None:
    """Seconds a process's threads ran and waited runnable for a CPU (/proc schedstat)."""
    run = wait = 0.0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            fields = (task / "schedstat").read_text().split()
            run += int(fields[0]) / 1e9
            wait += int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None
    return run, wait


def rss_mb(pid: int) -> float | None:
    try:
        import psutil  # noqa: PLC0415 - only for this figure

        return round(sum(p.memory_info().rss for p in [psutil.Process(pid)]) / 1e6, 1)
    except (ImportError, OSError):
        return None


# ---------------------------------------------------------------- report


def render_markdown(report: dict[str, Any]) -> str:
    raw, twin, raw_python = report["raw"], report["twin"], report["raw_python"]
    lat, desired = report["latency"], report["desired"]
    plan = report["plan"]
    rows = [
        "## Device twins: raw broker vs the twin path",
        "",
        (
            f"Run: {report['date']}, `{report['command']}`, {report['machine']}. "
            f"{plan['devices']} devices, QoS 1, {plan['window']} messages in flight per device; "
            f"load average {report['load_before'][0]} before, {report['load'][0]} after the "
            "throughput runs (the machine is shared)."
        ),
        "",
        "| figure | value | vs raw broker |",
        "|---|---|---|",
        (
            f"| raw mosquitto publish -> subscriber (twins-loadgen) | {raw['per_s']:,.0f} msg/s"
            f" ({raw['lost']} dropped by the broker) | 1.00 |"
        ),
        (
            f"| raw, the old Python publishers | {raw_python['per_s']:,.0f} msg/s | "
            f"{raw_python['per_s'] / raw['per_s']:.2f} |"
        ),
        (
            f"| reported, durable in the agent's outbox (answered) | {twin['durable_per_s']:,.0f} "
            f"/s | {report['ratios']['durable_vs_raw']:.2f} |"
        ),
        (
            f"| reported, applied in the cloud | {twin['cloud_per_s']:,.0f} /s | "
            f"{report['ratios']['cloud_vs_raw']:.2f} |"
        ),
        (
            f"| device answer latency under load (p50 / p99) | {twin['answer_p50_ms']} / "
            f"{twin['answer_p99_ms']} ms | |"
        ),
        (
            f"| device -> cloud latency, one device (p50 / p99) | {lat['p50_ms']} / "
            f"{lat['p99_ms']} ms | |"
        ),
        f"| desired PATCH -> device (p50 / p99) | {desired['p50_ms']} / {desired['p99_ms']} ms | |",
        (
            f"| agent CPU per durable report (cores busy) | "
            f"{twin.get('agent_cpu_ms_per_report')} ms ({twin.get('agent_cpu_cores')}; waited "
            f"for a CPU {twin.get('agent_runqueue_wait_share')} of the time) | |"
        ),
        f"| agent RSS after the run | {report['agent_rss_mb']} MB | |",
        "",
        (
            "How measured: everything on 127.0.0.1 (mosquitto with dynamic security, tunnel-server "
            "with the twins part, a joined edge agent, the sync over its tunnel). The raw figure "
            "is "
            "D publishers -> one subscriber with the same window; the twin figures use onboarded "
            "devices with their own credentials (load from twins-loadgen, Go, "
            "scripts/bench/twins_loadgen), each report answered by the agent after its "
            "SQLite commit (fsync), and the cloud figure waits until the cloud API shows every "
            "report applied. Latencies are measured from the device's publish (or the PATCH) to "
            "the cloud API's long-poll answer (or the device's `twin/desired` message). Goals "
            "(issues 5 and 18): >= 5,000 durable reports/s per agent, >= half the raw broker rate, "
            "device -> cloud p99 < 200 ms."
        ),
        "",
        f"Goals met: {', '.join(f'{k}={v}' for k, v in report['goals'].items())}.",
    ]
    return "\n".join(rows)


def write_section(out: Path, section: str) -> None:
    old = out.read_text() if out.exists() else ""
    out.write_text(st.replace_section(old, section, START, END))
    log(f"wrote the twins section of {out}")


async def bench(plan: Plan, workdir: Path, agent_root: Path) -> dict[str, Any]:
    async with system(workdir, agent_root) as sut:
        log("raw broker throughput (twins-loadgen)")
        raw = await raw_loadgen(sut.broker, plan)
        log(f"raw: {raw['per_s']} msg/s; the Python publishers for comparison")
        raw_python = await raw_broker(sut.broker, plan)
        log(f"raw_python: {raw_python['per_s']} msg/s; reports through the agent to the cloud")
        twin = await twin_path(sut, plan)
        log(f"twin: {twin['durable_per_s']} durable/s, {twin['cloud_per_s']} in the cloud/s")
        latency = await device_to_cloud_latency(sut, plan)
        log(f"device -> cloud p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms")
        desired = await desired_latency(sut, plan)
        log(f"PATCH -> device p50 {desired['p50_ms']} ms, p99 {desired['p99_ms']} ms")
        rss = rss_mb(sut.agent_pid)
    ratios = {
        "durable_vs_raw": round(twin["durable_per_s"] / raw["per_s"], 3),
        "cloud_vs_raw": round(twin["cloud_per_s"] / raw["per_s"], 3),
    }
    return {
        "raw": raw,
        "raw_python": raw_python,
        "load": _load(),
        "twin": twin,
        "latency": latency,
        "desired": desired,
        "agent_rss_mb": rss,
        "ratios": ratios,
        "goals": {
            "durable_5000_per_s": twin["durable_per_s"] >= 5000,
            "half_raw": ratios["cloud_vs_raw"] >= 0.5,
            "p99_under_200ms": latency["p99_ms"] < 200,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench/twins", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="finish in under a minute")
    parser.add_argument("--out", type=Path, help="write the twins section of this markdown file")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    parser.add_argument(
        "--agent-root",
        type=Path,
        default=ROOT,
        help="run edge-agent and tunnel-server from this source tree (A/B against another"
        " commit: git archive COMMIT | tar -x -C DIR)",
    )
    args = parser.parse_args(argv)
    plan = make_plan(quick=args.quick)
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-twins-bench-"))
    started = time.monotonic()
    keep = args.keep_workdir
    log(f"building twins-loadgen into {LOADGEN_BIN.parent}")
    build_loadgen()

    async def run() -> dict[str, Any]:
        async with asyncio.timeout(plan.time_budget_s):
            return await bench(plan, workdir, args.agent_root.resolve())

    load_before = _load()
    try:
        figures = asyncio.run(run())
    except TimeoutError:
        log(f"error: over the budget of {plan.time_budget_s} s; logs in {workdir}")
        keep = True
        print(json.dumps({"error": "time budget exceeded", "workdir": str(workdir)}))
        return 1
    except Exception as error:  # noqa: BLE001 - report any failure as the last JSON line
        log(f"error: {type(error).__name__}: {error}; logs in {workdir}")
        keep = True
        print(json.dumps({"error": f"{type(error).__name__}: {error}", "workdir": str(workdir)}))
        return 1
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["scripts/bench/twins", *(argv or sys.argv[1:])]),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
        "mode": plan.mode,
        "plan": asdict(plan),
        "seconds": round(time.monotonic() - started, 1),
        "agent_root": str(args.agent_root),
        "load_before": load_before,
        **figures,
    }
    if args.out is not None:
        write_section(args.out, render_markdown(report))
    print(
        f"raw {report['raw']['per_s']:.0f} msg/s | durable {report['twin']['durable_per_s']:.0f}/s"
        f" | cloud {report['twin']['cloud_per_s']:.0f}/s | d->c p50/p99 "
        f"{report['latency']['p50_ms']}/{report['latency']['p99_ms']} ms | PATCH->device "
        f"p50/p99 {report['desired']['p50_ms']}/{report['desired']['p99_ms']} ms"
    )
    print(json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
