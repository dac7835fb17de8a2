"""`EDGEFLEET_CLUSTERS=1 scripts/quickstart`: the main job, as a person runs it, end to end.

It runs the real script (without scripts/setup: the venv is ready, and it must not re-point the
shared editable install) with its own ports and data folder, until it prints that EdgeFleet is
running; then kubectl with the kubeconfig it printed lists the member's pods through the cloud,
the console API shows the simulated devices' node and the cluster; Ctrl-C stops every process
it started.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.harness import kube
from tests.harness.procs import free_port
from tests.harness.waiting import eventually

pytestmark = [pytest.mark.kube, pytest.mark.mqtt, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[3]
STARTED = "EdgeFleet is running"


class Quickstart:
    def __init__(self, data: Path, env: dict[str, str], *, url: str) -> None:
        self.data = data
        self.url = url
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [str(REPO / "scripts" / "quickstart")],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a group of its own: Ctrl-C goes to it as a terminal's would
        )
        self._reader = threading.Thread(target=self._read, name="quickstart.stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_started(self) -> str:
        def started() -> str:
            if self.process.poll() is not None:
                pytest.fail(
                    f"quickstart exited {self.process.returncode}:\n{self.output()}\n{self.logs()}"
                )
            return self.output()

        return eventually(started, lambda out: STARTED in out, what="quickstart", within=600.0)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self._reader.join(timeout=30)  # ends at the pipe's end: every writer has exited
        assert self.process.stderr is not None
        self.process.stderr.close()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted((self.data / "logs").glob("*.log"))
        )

    def interrupt(self) -> int:
        """Ctrl-C as a terminal sends it (to the whole group); the script's exit status."""
        family = _family(self.process.pid)
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            alive = []
            for proc in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    alive.append(f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())[:200]}")
            pytest.fail(
                "quickstart still runs 120 s after Ctrl-C; alive:\n"
                + "\n".join(alive)
                + f"\n{self.output()}\n{self.logs()}"
            )


@pytest.fixture
def quickstart(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Quickstart]:
    """The script with its own ports and data.

    Indirect parameter: ``{"clusters": N}`` (default 1), ``"apt": "missing"`` to make Debian's
    package tools say mosquitto is not installed (see the test that uses it).
    """
    port = free_port()
    options: dict[str, object] = {"clusters": 1, **getattr(request, "param", {})}
    clusters = options["clusters"]
    path = os.environ["PATH"]
    if options.get("apt") == "missing":
        path = f"{_apt_shims(tmp_path)}:{path}"
    env = {
        **os.environ,
        "PATH": path,
        "PYTHONPATH": str(REPO),
        "EDGEFLEET_SKIP_SETUP": "1",
        "EDGEFLEET_QUICKSTART_DIR": str(tmp_path / "qs"),
        "EDGEFLEET_LISTEN": f"127.0.0.1:{port}",
        "EDGEFLEET_AGENTS": "1",
        "EDGEFLEET_CLUSTERS": str(clusters),
        "EDGEFLEET_DEVICES": "1",
        "EDGEFLEET_REPORT_INTERVAL": "2",
        "EDGEFLEET_MQTT_PORT": str(free_port()),
        # Local APIs of the edge agent (BASE+1) and the cluster agent (BASE+2).
        "EDGEFLEET_API_PORT_BASE": str(_port_base(2)),
        "EDGEFLEET_KUBE_BIN": str(kube.kube_bin_dir()),
        "EDGEFLEET_GATEWAY_LISTEN": f"127.0.0.1:{free_port()}",
    }
    started = Quickstart(tmp_path / "qs", env, url=f"https://127.0.0.1:{port}")
    try:
        yield started
    finally:
        started.close()


def _devices(quickstart: Quickstart) -> list[str]:
    context = ssl.create_default_context(cafile=str(quickstart.data / "server" / "ca.crt"))
    token = (quickstart.data / "server" / "admin-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - our own https URL
        f"{quickstart.url}/api/v1/devices", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as answer:  # noqa: S310
        return [item["id"] for item in json.loads(answer.read())["items"]]


@pytest.mark.parametrize("quickstart", [{"clusters": 0}], indirect=True)
def test_quickstart_shows_devices_by_default(quickstart: Quickstart) -> None:
    """Without any setting, a simulated device reaches the cloud through mosquitto."""
    out = quickstart.wait_started()
    assert "mosquitto with dynamic security" in out, out
    assert "without device twins" not in out
    family = _family(quickstart.process.pid)
    assert "mosquitto" in {p.name() for p in family}
    devices = eventually(
        lambda: _devices(quickstart),
        lambda ids: len(ids) == 1,
        what="the simulated device in the cloud's API",
        within=120.0,
        ignore=(OSError,),
    )
    assert devices[0].startswith("edge-1:")
    assert quickstart.interrupt() in (0, 130)
    _wait_gone(family)


def _apt_shims(tmp_path: Path) -> Path:
    """``dpkg-query`` saying nothing is installed, ``apt-get`` writing its arguments down."""
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, body in (
        ("dpkg-query", "exit 1"),
        ("apt-get", f'echo "$*" >>{tmp_path / "apt-calls"}'),
    ):
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(0o755)
    return shims


@pytest.mark.parametrize("quickstart", [{"clusters": 0, "apt": "missing"}], indirect=True)
def test_quickstart_installs_mosquitto_where_it_is_missing(
    quickstart: Quickstart, tmp_path: Path
) -> None:
    """As on a fresh machine: Debian says mosquitto is not installed, so quickstart installs it.

    Fault injection: ``dpkg-query`` and ``apt-get`` are stand-ins (this machine has mosquitto,
    and a test must not change its packages); apt-get's records what it was asked. The broker
    that then starts is the real one.
    """
    out = quickstart.wait_started()
    assert "installing Debian packages: mosquitto mosquitto-clients" in out, out
    calls = (tmp_path / "apt-calls").read_text().splitlines()
    assert calls == [
        "update -qq",
        "install -y -qq --no-install-recommends mosquitto mosquitto-clients",
    ]
    assert "mosquitto with dynamic security" in out, out
    family = _family(quickstart.process.pid)
    assert quickstart.interrupt() in (0, 130)
    _wait_gone(family)


def _wait_gone(family: list[psutil.Process]) -> None:
    def left() -> list[tuple[int, str]]:
        alive = []
        for proc in family:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append((proc.pid, proc.name()))
            except psutil.NoSuchProcess:
                continue
        return alive

    eventually(left, lambda alive: not alive, what="every process quickstart started gone")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_base(count: int) -> int:
    """A port BASE whose next ``count`` ports are free now (agents listen on BASE+1, ...)."""
    for _ in range(100):
        base = free_port()
        if all(_bindable(base + i) for i in range(1, count + 1)):
            return base
    raise RuntimeError(f"no {count} free ports in a row")


def _family(pid: int) -> list[psutil.Process]:
    """The quickstart and everything it started (its own session, and what those spawned)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_quickstart_with_a_cluster(quickstart: Quickstart) -> None:
    out = quickstart.wait_started()
    assert "mosquitto with dynamic security" in out, out
    match = re.search(r"KUBECONFIG=(\S+) (\S+) get pods -A", out)
    assert match, out
    kubeconfig, kubectl = match[1], match[2]
    # A cloud user's kubeconfig (`tunnel-server kubeconfig --user`), not the admin token.
    users = yaml.safe_load(Path(kubeconfig).read_text())["users"]
    admin = (quickstart.data / "server" / "admin-token").read_text().strip()
    assert [u["user"]["token"] != admin for u in users] == [True]
    family = _family(quickstart.process.pid)
    names = {p.name() for p in family}
    assert {"kube-apiserver", "kine", "kwok", "mosquitto"} <= names, names

    # The member's demo pods, through the cloud proxy, with the kubeconfig as printed.
    def pods() -> str:
        done = subprocess.run(
            [kubectl, "--kubeconfig", kubeconfig, "get", "pods", "-A", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout if done.returncode == 0 else ""

    listed = eventually(
        pods,
        lambda out: (
            sum(
                p["status"].get("phase") == "Running" and p["metadata"]["name"].startswith("hello-")
                for p in json.loads(out or '{"items": []}')["items"]
            )
            == 2
        ),
        what="two running demo pods through the cloud proxy",
        within=120.0,
    )
    assert listed
    # The cloud knows both agents, the edge node and the cluster.
    known = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "tunnel-server"),
            "nodes",
            "--json",
            "--data-dir",
            str(quickstart.data / "server"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    kinds = {n["name"]: n["kind"] for n in json.loads(known.stdout)}
    assert kinds == {"edge-1": "node", "cluster-1": "cluster"}

    # The fleet demo (docs/examples/fleet-demo.yaml): its WorkSet rolled out to the cluster and
    # Available there, through the hub's placement, the agent's fleet stream and its applier.
    def workset() -> dict[str, Any]:
        done = subprocess.run(
            [
                str(REPO / ".venv" / "bin" / "tunnel-server"),
                "get",
                "workset",
                "fleet-hello",
                "-o",
                "json",
                "--data-dir",
                str(quickstart.data / "server"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        return json.loads(done.stdout) if done.returncode == 0 else {}

    rolled = eventually(
        workset,
        lambda found: found.get("status", {}).get("summary", {}).get("available") == 1,
        what="the fleet demo's WorkSet Available on cluster-1",
        within=120.0,
    )
    assert rolled["status"]["summary"]["total"] == 1, rolled

    _check_elastic_demo(quickstart, kubectl, kubeconfig)
    _check_gateway_demo(quickstart, out)

    # Ctrl-C stops everything it started.
    assert quickstart.interrupt() in (0, 130)
    _wait_gone(family)


def _check_gateway_demo(quickstart: Quickstart, out: str) -> None:
    """The demo route, with the curl line the quickstart prints: cluster-1's server answers."""
    match = re.search(r"curl -H .Host: hello\.local. http://([\d.]+):(\d+)/", out)
    assert match, out

    def hello() -> str:
        connection = http.client.HTTPConnection(match[1], int(match[2]), timeout=10)
        try:
            connection.request("GET", "/", headers={"Host": "hello.local"})
            answer = connection.getresponse()
            return answer.read().decode() if answer.status == 200 else ""
        except OSError:
            return ""
        finally:
            connection.close()

    said = eventually(
        hello,
        lambda text: text.startswith("hello from cluster-"),
        what="the gateway demo route answering through cluster-1's tunnel",
        within=60.0,
    )
    assert said.startswith("hello from cluster-1 (path /)"), said
    server = str(quickstart.data / "server")
    listed = subprocess.run(
        [
            str(REPO / ".venv/bin/tunnel-server"),
            "get",
            "mcr",
            "hello",
            "-o",
            "json",
            "--data-dir",
            server,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    conditions = {c["type"]: c["status"] for c in json.loads(listed.stdout)["status"]["conditions"]}
    assert conditions == {"Accepted": "True", "ResolvedRefs": "True"}, listed.stdout


def _check_elastic_demo(quickstart: Quickstart, kubectl: str, kubeconfig: str) -> None:
    """cluster-1's elastic part (docs/elastic.md), as the quickstart's last lines tell a user.

    Its agent registered the pod webhook (a loopback URL the member's API server calls), and
    the demo NodePool (kwok) and ResourcePolicy are there: of the Deployment's 4 pods, 2 on the
    cluster's own nodes (the unit's max), 2 on a node the pool grew for them.
    """
    assert "tunnel-server get nodepools --cluster cluster-1" in quickstart.output()

    def through(*args: str) -> Any:
        done = subprocess.run(
            [kubectl, "--kubeconfig", kubeconfig, "--context", "cluster-1", *args, "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(done.stdout)

    (hook,) = through("get", "mutatingwebhookconfiguration", "edgefleet-elastic")["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:"), hook["clientConfig"]
    assert not hook["clientConfig"]["url"].startswith("https://127.0.0.1:0/")
    policy = eventually(
        lambda: through("get", "resourcepolicy", "web", "-n", "shop"),
        lambda found: (
            [(u["name"], u["pods"]) for u in found.get("status", {}).get("units", [])]
            == [("local", 2), ("cloud", 2)]
        ),
        what="the demo policy's status: 2 pods local, 2 in the grown cloud pool",
        within=180.0,
    )
    assert policy["spec"]["units"][0]["max"] == 2
    # The CLI line the quickstart prints, against the cloud.
    done = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "tunnel-server"),
            "get",
            "nodepools",
            "--cluster",
            "cluster-1",
            "-o",
            "json",
            "--server",
            quickstart.url,
            "--token",
            (quickstart.data / "server" / "admin-token").read_text().strip(),
            "--ca-file",
            str(quickstart.data / "server" / "ca.crt"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    (pool,) = json.loads(done.stdout)["items"]
    assert pool["name"] == "cloud"
