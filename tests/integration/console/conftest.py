"""Real tunnel servers with real joined agents that report node status every second.

``console_system``: two agents. ``device_system``: one agent with device twins on a real
mosquitto (dynamic security) and ``edge-agent simulate`` onboarding a thermostat through it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.harness import mqtt
from tests.harness.daemons import BIN, Agent, Server, TomlValue
from tests.harness.procs import ManagedProcess, ServiceError
from tests.harness.waiting import eventually

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPORT_INTERVAL = 1.0
"""Seconds between the test agents' reports: the server's lease is then its 5 s floor."""


@dataclass(kw_only=True)
class ReportingAgent(Agent):
    """A joined ``edge-agent run`` that reports node status every ``interval`` seconds."""

    interval: float = REPORT_INTERVAL

    def __post_init__(self) -> None:
        self.run_args = ("--status-interval", str(self.interval))


@dataclass(kw_only=True)
class Api:
    """A tiny JSON client for the server's REST API (stdlib only: no event loop needed)."""

    server: Server
    token: str = ""
    context: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        self.context = self.server.ssl_context()

    def call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        bearer = self.token if token is None else token
        if bearer:
            sent["Authorization"] = f"Bearer {bearer}"
        request = urllib.request.Request(  # noqa: S310 - our own server
            self.server.url + path, data=body, method=method, headers=sent
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as answer:  # noqa: S310
                return answer.status, json.loads(answer.read() or b"{}"), dict(answer.headers)
        except urllib.error.HTTPError as error:
            with error:  # an error response left open keeps its socket until a later GC
                raw = error.read()
            return error.code, json.loads(raw) if raw else {}, dict(error.headers)

    def get(self, path: str) -> dict[str, Any]:
        status, body, _ = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def node(self, name: str) -> dict[str, Any]:
        return self.get(f"/api/v1/nodes/{name}")

    def wait_status(self, name: str, status: str, *, within: float = 30.0) -> dict[str, Any]:
        return eventually(
            lambda: self.node(name),
            lambda node: node["status"] == status,
            what=f"node {name} {status}",
            within=within,
            every=0.1,
        )


@dataclass
class ConsoleSystem:
    server: Server
    agents: dict[str, ReportingAgent]
    api: Api
    workdir: Path


@pytest.fixture(scope="module")
def console_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSystem]:
    workdir = tmp_path_factory.mktemp("console")
    server = Server(workdir=workdir)
    server.start()
    agents: dict[str, ReportingAgent] = {}
    try:
        for name in ("edge-a", "edge-b"):
            agent = ReportingAgent(name=name, workdir=workdir, server=server)
            agent.join()
            agent.start()
            agents[name] = agent
        for agent in agents.values():
            agent.wait_connected()
        api = Api(server=server, token=server.admin_token)
        for name in agents:
            api.wait_status(name, "online")
        yield ConsoleSystem(server=server, agents=agents, api=api, workdir=workdir)
    except ServiceError:
        for agent in agents.values():
            if agent.process is not None:
                print(agent.process.tail())  # noqa: T201 - the failing agent's log
        raise
    finally:
        for agent in agents.values():
            agent.stop()
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():  # fail loudly: the harness provides it, tests never skip
        raise ServiceError(
            f"{CHROMIUM} not found: install Debian's chromium package "
            "(scripts/test does: apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextlib.contextmanager
def console_page(
    browser: Browser, *, base_url: str, height: int, ignored: Callable[[str], bool]
) -> Iterator[Page]:
    """A fresh page on ``base_url``; on exit, any script or console error not ``ignored`` fails.

    A CSP violation or a script error shows up that way: the console must run clean.
    """
    context = browser.new_context(
        ignore_https_errors=True,  # the server's certificate is from its own CA
        base_url=base_url,
        viewport={"width": 1280, "height": height},
    )
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    yield opened
    context.close()
    assert not [e for e in errors if not ignored(e)], errors


@pytest.fixture(scope="module")
def shots(test_output_dir: Path) -> Path:
    folder = test_output_dir / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


DEVICE_NODE = "edge-dev"
DEVICE = f"{DEVICE_NODE}:th-0"
"""The simulated thermostat of ``device_system``, onboarded through the broker."""
WAIT = 30.0  # a guard against hangs, not a measurement


@dataclass
class DeviceSystem:
    """A server, an agent with ``[twins]`` on a real broker, and one simulated thermostat."""

    server: Server
    agent: Agent
    api: Api
    broker: mqtt.Broker
    claim_username: str
    claim_password: str


def twins_config(workdir: Path, broker: mqtt.Broker, claim_password: str) -> dict[str, TomlValue]:
    folder = workdir / "secrets"
    folder.mkdir(mode=0o700)
    (folder / "admin").write_text(f"{broker.admin_password}\n")
    (folder / "claim").write_text(f"{claim_password}\n")
    suffix = secrets.token_hex(4)
    return {
        "enabled": True,
        "broker_host": broker.host,
        "broker_port": broker.port,
        "admin_password_file": folder / "admin",
        "claim_username": f"claim-{suffix}",
        "claim_password_file": folder / "claim",
        "agent_username": f"agent-{suffix}",
        "agent_client_id": f"agent-{suffix}",
    }


def wait_for(api: Api, path: str, predicate: object, what: str) -> dict[str, object]:
    status_and_body = eventually(
        lambda: api.call("GET", path)[:2],
        lambda answer: answer[0] == 200 and callable(predicate) and bool(predicate(answer[1])),
        what=what,
        within=WAIT,
        every=0.1,
    )
    body: dict[str, object] = status_and_body[1]
    return body


@pytest.fixture(scope="module")
def device_system(
    tmp_path_factory: pytest.TempPathFactory, mqtt_dynsec_broker: mqtt.Broker
) -> Iterator[DeviceSystem]:
    workdir = tmp_path_factory.mktemp("console-devices")
    claim_password = secrets.token_urlsafe(12)
    config = twins_config(workdir, mqtt_dynsec_broker, claim_password)
    server = Server(workdir=workdir)
    server.start()
    agent = Agent(
        name=DEVICE_NODE,
        workdir=workdir,
        server=server,
        tables={"twins": config},
        run_args=("--status-interval", "1"),
    )
    simulator: ManagedProcess | None = None
    try:
        agent.join()
        agent.start()
        agent.wait_ready()
        claim_username = str(config["claim_username"])
        simulator = ManagedProcess(
            "edge-agent simulate",
            [
                str(BIN / "edge-agent"),
                "simulate",
                "--model",
                "thermostat",
                "--count",
                "1",
                "--prefix",
                "th",
                "--interval",
                "0.3",
                "--broker",
                f"{mqtt_dynsec_broker.host}:{mqtt_dynsec_broker.port}",
                "--claim-username",
                claim_username,
                "--credentials",
                str(workdir / "simulated-devices.json"),
            ],
            log_path=workdir / "simulate.log",
            env={"EDGEFLEET_CLAIM_PASSWORD": claim_password},
        )
        api = Api(server=server, token=server.admin_token)
        wait_for(
            api,
            f"/api/v1/devices/{DEVICE}/twin",
            lambda twin: twin["reported"]["$version"] >= 1,
            "the simulated thermostat's first report in the cloud",
        )
        yield DeviceSystem(
            server=server,
            agent=agent,
            api=api,
            broker=mqtt_dynsec_broker,
            claim_username=claim_username,
            claim_password=claim_password,
        )
    except ServiceError:
        if agent.process is not None:
            print(agent.process.tail())  # noqa: T201 - the failing agent's log
        raise
    finally:
        if simulator is not None:
            simulator.stop()
        agent.stop()
        server.stop()
