"""The console's devices pages in headless Chromium, against a real device-twin path.

A real mosquitto with dynamic security, a real ``tunnel-server run``, a real joined
``edge-agent run`` with ``[twins]`` enabled, and ``edge-agent simulate`` onboarding a
thermostat through the broker. The test sees the device in the console, changes a desired
value and watches it reach the device (the simulator reports what it is told), provokes a
version conflict (a PATCH through the API while the form is open) and sees it shown, and
sees a value the model refuses explained with its path and reason.

Screenshots go to ``<test_output_dir>/console/``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.harness import mqtt
from tests.harness.fleet import BIN, Agent, Server
from tests.harness.procs import ManagedProcess, ServiceError
from tests.integration.console.conftest import Api

pytestmark = pytest.mark.mqtt

NODE = "edge-dev"
DEVICE = f"{NODE}:th-0"
WAIT = 30.0  # a guard against hangs, not a measurement


@dataclass
class DeviceFleet:
    server: Server
    agent: Agent
    api: Api


def _twins_config(workdir: Path, broker: mqtt.Broker, claim_password: str) -> str:
    folder = workdir / "secrets"
    folder.mkdir(mode=0o700)
    (folder / "admin").write_text(f"{broker.admin_password}\n")
    (folder / "claim").write_text(f"{claim_password}\n")
    suffix = secrets.token_hex(4)
    return "\n".join(
        [
            "[twins]",
            "enabled = true",
            f'broker_host = "{broker.host}"',
            f"broker_port = {broker.port}",
            f'admin_password_file = "{folder / "admin"}"',
            f'claim_username = "claim-{suffix}"',
            f'claim_password_file = "{folder / "claim"}"',
            f'agent_username = "agent-{suffix}"',
            f'agent_client_id = "agent-{suffix}"',
            "",
        ]
    )


def _wait(api: Api, path: str, predicate: object, what: str) -> dict[str, object]:
    deadline = time.monotonic() + WAIT
    last: object = None
    while time.monotonic() < deadline:
        status, body, _ = api.call("GET", path)
        last = (status, body)
        if status == 200 and callable(predicate) and predicate(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{what} not seen within {WAIT} s: {last}")


@pytest.fixture(scope="module")
def device_fleet(
    tmp_path_factory: pytest.TempPathFactory, mqtt_dynsec_broker: mqtt.Broker
) -> Iterator[DeviceFleet]:
    workdir = tmp_path_factory.mktemp("console-devices")
    claim_password = secrets.token_urlsafe(12)
    config = _twins_config(workdir, mqtt_dynsec_broker, claim_password)
    server = Server(workdir=workdir)
    server.start()
    agent = Agent(
        name=NODE,
        workdir=workdir,
        server=server,
        extra_config=config,
        run_args=("--status-interval", "1"),
    )
    simulator: ManagedProcess | None = None
    try:
        agent.join()
        agent.start()
        agent.wait_ready()
        claim_username = config.split('claim_username = "')[1].split('"')[0]
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
        _wait(
            api,
            f"/api/v1/devices/{DEVICE}/twin",
            lambda twin: twin["reported"]["$version"] >= 1,
            "the simulated thermostat's first report in the cloud",
        )
        yield DeviceFleet(server=server, agent=agent, api=api)
    except ServiceError:
        if agent.process is not None:
            print(agent.process.tail())  # noqa: T201 - the failing agent's log
        raise
    finally:
        if simulator is not None:
            simulator.stop()
        agent.stop()
        server.stop()


@pytest.fixture
def page(browser: Browser, device_fleet: DeviceFleet) -> Iterator[Page]:
    context = browser.new_context(
        ignore_https_errors=True,
        base_url=device_fleet.server.url,
        viewport={"width": 1280, "height": 900},
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
    # Refused PATCHes (400, 409) are logged by the browser as failed loads; nothing else may be.
    assert not [e for e in errors if not any(f"status of {s}" in e for s in (400, 409))], errors


def sign_in(page: Page, token: str) -> None:
    page.goto("/")
    page.fill("#token", token)
    page.click("#signin-button")
    expect(page.locator("#live")).to_have_text("live", timeout=WAIT * 1000)


def shown_json(page: Page, selector: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(page.locator(selector).text_content() or "{}")
    return data


def test_devices_are_listed_per_node_and_on_the_node_page(
    page: Page, device_fleet: DeviceFleet, shots: Path
) -> None:
    sign_in(page, device_fleet.server.admin_token)
    page.click("nav >> text=Devices")
    row = page.locator(f'#device-list tr[data-device="{DEVICE}"]')
    expect(row).to_be_visible()
    expect(page.locator(f'#device-list h2[data-node="{NODE}"]')).to_contain_text("1 device")
    expect(row).to_contain_text("thermostat")
    expect(row).to_contain_text("online")
    page.screenshot(path=shots / "devices.png", full_page=True)

    page.goto(f"/#/nodes/{NODE}")
    node_row = page.locator(f'#device-table tr[data-device="{DEVICE}"]')
    expect(node_row).to_be_visible()
    expect(page.locator("#devices")).to_contain_text("devices: 1")  # the node's twins.* report
    page.screenshot(path=shots / "node-devices.png", full_page=True)
    node_row.locator("a").click()
    expect(page.locator("#device h1")).to_have_text(DEVICE)


def test_change_a_desired_value_and_see_it_reach_the_device(
    page: Page, device_fleet: DeviceFleet, shots: Path
) -> None:
    sign_in(page, device_fleet.server.admin_token)
    page.goto(f"/#/devices/{DEVICE}")
    expect(page.locator("#desired-base")).to_contain_text("Editing desired $version")
    twin = device_fleet.api.get(f"/api/v1/devices/{DEVICE}/twin")
    setpoint = 17.5 if twin["desired"].get("setpoint") != 17.5 else 18.5
    edited = {**{k: v for k, v in twin["desired"].items() if not k.startswith("$")}}
    edited["setpoint"] = setpoint
    page.fill("#desired-input", json.dumps(edited))
    page.click("#desired-submit")
    expect(page.locator("#desired-ok")).to_contain_text("Applied")
    # The simulator gets the delta over MQTT and reports the value: reported catches up,
    # and the console's live view shows it with an empty delta.
    expect(page.locator("#reported")).to_contain_text(
        f'"setpoint": {setpoint}', timeout=WAIT * 1000
    )
    expect(page.locator("#delta")).to_have_text("{}", timeout=WAIT * 1000)
    assert shown_json(page, "#desired")["setpoint"] == setpoint
    page.screenshot(path=shots / "device-applied.png", full_page=True)


def test_a_version_conflict_is_shown_and_reload_recovers(
    page: Page, device_fleet: DeviceFleet, shots: Path
) -> None:
    sign_in(page, device_fleet.server.admin_token)
    page.goto(f"/#/devices/{DEVICE}")
    expect(page.locator("#desired-base")).to_contain_text("Editing desired $version")
    before = device_fleet.api.get(f"/api/v1/devices/{DEVICE}/twin")
    version = before["desired"]["$version"]
    expect(page.locator("#desired-base")).to_contain_text(f"$version {version}.")
    # Someone else changes desired through the API while the form is open...
    status, body, _ = device_fleet.api.call(
        "PATCH",
        f"/api/v1/devices/{DEVICE}/twin",
        body=json.dumps({"desired": {"mode": "heat", "$version": version}}).encode(),
    )
    assert status == 200, body
    # ...and an API client with the same stale version is refused, as the form will be.
    status, body, _ = device_fleet.api.call(
        "PATCH",
        f"/api/v1/devices/{DEVICE}/twin",
        body=json.dumps({"desired": {"mode": "cool", "$version": version}}).encode(),
    )
    assert (status, body["error"], body["currentVersion"]) == (409, "version_conflict", version + 1)
    page.fill("#desired-input", json.dumps({"setpoint": 22.0, "mode": "auto"}))
    page.click("#desired-submit")
    conflict = page.locator("#desired-conflict")
    expect(conflict).to_be_visible()
    expect(conflict).to_contain_text("Version conflict")
    expect(conflict).to_contain_text(f"you edited $version {version}")
    expect(conflict).to_contain_text(f"desired is at $version {version + 1}")
    page.screenshot(path=shots / "device-conflict.png", full_page=True)
    twin = device_fleet.api.get(f"/api/v1/devices/{DEVICE}/twin")
    assert twin["desired"]["mode"] == "heat"  # the refused form wrote nothing
    page.click("#conflict-reload")
    expect(page.locator("#desired-base")).to_have_text(f"Editing desired $version {version + 1}.")
    assert json.loads(page.locator("#desired-input").input_value())["mode"] == "heat"


def test_a_value_the_model_refuses_is_explained(
    page: Page, device_fleet: DeviceFleet, shots: Path
) -> None:
    sign_in(page, device_fleet.server.admin_token)
    page.goto(f"/#/devices/{DEVICE}")
    expect(page.locator("#desired-base")).to_contain_text("Editing desired $version")
    page.fill("#desired-input", json.dumps({"setpoint": 31, "mode": "warm"}))
    page.click("#desired-submit")
    error = page.locator("#desired-error")
    expect(error).to_contain_text("400 invalid_value")
    expect(error.locator('li[data-path="setpoint"]')).to_contain_text("must be <= 30 (got 31)")
    expect(error.locator('li[data-path="mode"]')).to_be_visible()
    page.screenshot(path=shots / "device-invalid.png", full_page=True)
