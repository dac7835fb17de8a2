"""The console's devices pages in headless Chromium, against a real device-twin path.

A real mosquitto with dynamic security, a real ``tunnel-server run``, a real joined
``edge-agent run`` with ``[twins]`` enabled, and ``edge-agent simulate`` onboarding a
thermostat through the broker. The test sees the device in the console, changes a desired
value and watches it reach the device (the simulator reports what it is told), provokes a
version conflict (a PATCH through the API while the form is open) and sees it shown, and
sees a value the model refuses explained with its path and reason. Devices are registered in
the console (the one-time claim secret shown), claim through the broker with it, and are
revoked (the broker refuses their credential at once) or removed; a viewer gets no buttons.

Screenshots go to ``<test_output_dir>/console/``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import aiomqtt
import pytest
from playwright.sync_api import Browser, Page, expect

from edge_agent.twins.simulator import (
    ClaimRejectedError,
    DeviceCredential,
    SimulatedDevice,
    claim_device,
)
from tests.integration.console.conftest import (
    DEVICE,
    DEVICE_NODE,
    WAIT,
    DeviceSystem,
    console_page,
)

pytestmark = pytest.mark.mqtt
T = TypeVar("T")


@pytest.fixture
def page(browser: Browser, device_system: DeviceSystem) -> Iterator[Page]:
    # Refused PATCHes (400, 412) are logged by the browser as failed loads; nothing else may be.
    with console_page(
        browser,
        base_url=device_system.server.url,
        height=900,
        ignored=lambda e: any(f"status of {s}" in e for s in (400, 412)),
    ) as opened:
        yield opened


def sign_in(page: Page, token: str) -> None:
    page.goto("/")
    page.fill("#token", token)
    page.click("#signin-button")
    expect(page.locator("#live")).to_have_text("live", timeout=WAIT * 1000)


def shown_json(page: Page, selector: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(page.locator(selector).text_content() or "{}")
    return data


def test_devices_are_listed_per_node_and_on_the_node_page(
    page: Page, device_system: DeviceSystem, shots: Path
) -> None:
    sign_in(page, device_system.server.admin_token)
    page.click("nav >> text=Devices")
    row = page.locator(f'#device-list tr[data-device="{DEVICE}"]')
    expect(row).to_be_visible()
    expect(page.locator(f'#device-list h2[data-node="{DEVICE_NODE}"]')).to_contain_text("1 device")
    expect(row).to_contain_text("thermostat")
    expect(row).to_contain_text("online")
    page.screenshot(path=shots / "devices.png", full_page=True)

    page.goto(f"/#/nodes/{DEVICE_NODE}")
    node_row = page.locator(f'#device-table tr[data-device="{DEVICE}"]')
    expect(node_row).to_be_visible()
    expect(page.locator("#devices")).to_contain_text("devices: 1")  # the node's twins.* report
    page.screenshot(path=shots / "node-devices.png", full_page=True)
    node_row.locator("a").click()
    expect(page.locator("#device h1")).to_have_text(DEVICE)


def test_change_a_desired_value_and_see_it_reach_the_device(
    page: Page, device_system: DeviceSystem, shots: Path
) -> None:
    sign_in(page, device_system.server.admin_token)
    page.goto(f"/#/devices/{DEVICE}")
    expect(page.locator("#desired-base")).to_contain_text("Editing desired $version")
    twin = device_system.api.get(f"/api/v1/devices/{DEVICE}/twin")
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


def test_the_device_page_charts_its_telemetry(page: Page, device_system: DeviceSystem) -> None:
    # The simulator reports a temperature every 0.3 s: the cloud keeps it as a time series.
    sign_in(page, device_system.server.admin_token)
    page.goto(f"/#/devices/{DEVICE}")
    expect(page.locator('#telemetry-property option[value="temperature"]')).to_have_count(1)
    page.select_option("#telemetry-property", "temperature")
    chart = page.locator("#telemetry-chart")
    expect(chart.locator("figcaption")).to_contain_text("temperature")
    expect(chart.locator("path.line")).to_have_count(1)
    assert int(chart.get_attribute("data-points") or 0) >= 1
    page.click('button[data-telemetry-window="86400"]')
    expect(page.locator('button[data-telemetry-window="86400"]')).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(chart.locator("path.line")).to_have_count(1)


def test_the_device_page_follows_changes_made_elsewhere(
    page: Page, device_system: DeviceSystem
) -> None:
    # The page long-polls its twin (desired and reported at once) instead of re-reading it
    # on a timer: a change made through the API shows without a reload.
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/twin?wait=" in r.url else None)
    sign_in(page, device_system.server.admin_token)
    page.goto(f"/#/devices/{DEVICE}")
    expect(page.locator("#desired-base")).to_contain_text("Editing desired $version")
    twin = device_system.api.get(f"/api/v1/devices/{DEVICE}/twin")
    version = twin["desired"]["$version"]
    mode = "cool" if twin["desired"].get("mode") != "cool" else "heat"
    status, body, _ = device_system.api.call(
        "PATCH",
        f"/api/v1/devices/{DEVICE}/twin",
        body=json.dumps({"desired": {"mode": mode}}).encode(),
        headers={"If-Match": f'"{version}"'},
    )
    assert status == 200, body
    expect(page.locator("#desired-version")).to_have_text(f"v{version + 1}", timeout=WAIT * 1000)
    assert shown_json(page, "#desired")["mode"] == mode
    expect(page.locator("#desired-base .stale")).to_contain_text("Desired has changed since")
    # The simulator reports every 0.3 s, so which reported version a poll named varies.
    assert any(f"desiredVersion={version + 1}&reportedVersion=" in url for url in polls), polls


def test_a_twin_changed_meanwhile_is_refused_and_reloaded(
    page: Page, device_system: DeviceSystem, shots: Path
) -> None:
    sign_in(page, device_system.server.admin_token)
    page.goto(f"/#/devices/{DEVICE}")
    expect(page.locator("#desired-base")).to_contain_text("Editing desired $version")
    before = device_system.api.get(f"/api/v1/devices/{DEVICE}/twin")
    version = before["desired"]["$version"]
    expect(page.locator("#desired-base")).to_contain_text(f"$version {version}.")
    # Someone else changes desired through the API while the form is open...
    status, body, headers = device_system.api.call(
        "PATCH",
        f"/api/v1/devices/{DEVICE}/twin",
        body=json.dumps({"desired": {"mode": "heat"}}).encode(),
        headers={"If-Match": f'"{version}"', "Content-Type": "application/merge-patch+json"},
    )
    assert status == 200, body
    assert headers["ETag"] == f'"{version + 1}"'
    # ...and an API client with the stale ETag is refused, as the form will be.
    status, body, _ = device_system.api.call(
        "PATCH",
        f"/api/v1/devices/{DEVICE}/twin",
        body=json.dumps({"desired": {"mode": "cool"}}).encode(),
        headers={"If-Match": f'"{version}"', "Content-Type": "application/merge-patch+json"},
    )
    assert (status, body["reason"]) == (412, "precondition_failed"), body
    page.fill("#desired-input", json.dumps({"setpoint": 22.0, "mode": "auto"}))
    page.click("#desired-submit")
    conflict = page.locator("#desired-conflict")
    expect(conflict).to_be_visible()
    expect(conflict).to_contain_text("Changed meanwhile — reloaded")
    expect(conflict).to_contain_text(f"you edited $version {version}")
    # Reloaded: the form now edits the current version, with the current values.
    expect(page.locator("#desired-base")).to_have_text(f"Editing desired $version {version + 1}.")
    assert json.loads(page.locator("#desired-input").input_value())["mode"] == "heat"
    page.screenshot(path=shots / "device-conflict.png", full_page=True)
    twin = device_system.api.get(f"/api/v1/devices/{DEVICE}/twin")
    assert twin["desired"]["mode"] == "heat"  # the refused form wrote nothing


def test_a_value_the_model_refuses_is_explained(
    page: Page, device_system: DeviceSystem, shots: Path
) -> None:
    sign_in(page, device_system.server.admin_token)
    page.goto(f"/#/devices/{DEVICE}")
    expect(page.locator("#desired-base")).to_contain_text("Editing desired $version")
    page.fill("#desired-input", json.dumps({"setpoint": 31, "mode": "warm"}))
    page.click("#desired-submit")
    error = page.locator("#desired-error")
    expect(error).to_contain_text("400 invalid_value")
    expect(error.locator('li[data-path="setpoint"]')).to_contain_text("must be <= 30 (got 31)")
    expect(error.locator('li[data-path="mode"]')).to_be_visible()
    page.screenshot(path=shots / "device-invalid.png", full_page=True)


def _run(coroutine: Coroutine[object, object, T]) -> T:
    """Run ``coroutine`` on a loop of its own: Playwright's sync API holds this thread's."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _claim(system: DeviceSystem, device_id: str, secret: str) -> DeviceCredential:
    return _run(
        claim_device(
            host=system.broker.host,
            port=system.broker.port,
            claim_username=system.claim_username,
            claim_password=system.claim_password,
            device_id=device_id,
            model="thermostat",
            claim_secret=secret,
            node=DEVICE_NODE,
        )
    )


def _report(system: DeviceSystem, credential: DeviceCredential) -> None:
    """Connect as the device and report a value: raises ``aiomqtt.MqttError`` when refused."""

    async def run() -> None:
        device = SimulatedDevice(
            host=system.broker.host, port=system.broker.port, credential=credential, timeout=10
        )
        async with device:
            answer = await device.report({"temperature": 20.5})
            assert answer.get("code") == 200, answer

    _run(run())


def test_register_a_device_then_revoke_it(
    page: Page, device_system: DeviceSystem, shots: Path
) -> None:
    """Register in the console, claim with the secret it shows, revoke: refused at once.

    The one-time claim secret is shown on the page; the device claims with it through the real
    broker and reports; revoked in the console, its broker credential stops working at once.
    """
    name = "th-reg"
    device_id = f"{DEVICE_NODE}:{name}"
    sign_in(page, device_system.server.admin_token)
    page.click("nav >> text=Devices")
    page.fill("#register-node", DEVICE_NODE)
    page.fill("#register-device", name)
    page.fill("#register-model", "thermostat")
    page.click("#register-submit")
    done = page.locator("#register-done")
    expect(done).to_contain_text(f"Registered {device_id}", timeout=WAIT * 1000)
    expect(done).to_contain_text("shown this once")
    secret = page.locator("#claim-secret").text_content() or ""
    assert len(secret) >= 16, secret
    page.screenshot(path=shots / "device-registered.png", full_page=True)
    # A claim without the secret is refused; with it, the device gets its own credential.
    with pytest.raises(ClaimRejectedError):
        _claim(device_system, name, "not-the-secret")
    credential = _claim(device_system, name, secret)
    _report(device_system, credential)
    page.reload()
    expect(page.locator(f'#device-list tr[data-device="{device_id}"]')).to_be_visible()

    page.goto(f"/#/devices/{device_id}")
    expect(page.locator("#device h1")).to_have_text(device_id)
    expect(page.locator('[data-fact="State"] dd')).to_have_text("active")
    page.click("#device-revoke")
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    dialog.locator('input[value="keep"]').check()
    page.click("#dialog-ok")
    expect(page.locator("#device-done")).to_contain_text("Revoked")
    expect(page.locator("#device-done")).to_contain_text("Its twin is kept")
    page.screenshot(path=shots / "device-revoked.png", full_page=True)
    # The broker credential is gone: the device's next connection is refused.
    with pytest.raises(aiomqtt.MqttError):
        _report(device_system, credential)
    found = device_system.api.get(f"/api/v1/devices/{device_id}")
    assert found["state"] == "revoked", found
    expect(page.locator("#device-availability")).to_contain_text("revoked", timeout=WAIT * 1000)


def test_remove_a_registered_device_and_its_twin(page: Page, device_system: DeviceSystem) -> None:
    name = "th-gone"
    device_id = f"{DEVICE_NODE}:{name}"
    status, body, _ = device_system.api.call(
        "POST",
        "/api/v1/devices",
        body=json.dumps({"node": DEVICE_NODE, "device": name, "model": "thermostat"}).encode(),
    )
    assert status == 201, body
    _report(device_system, _claim(device_system, name, str(body["claimSecret"])))
    sign_in(page, device_system.server.admin_token)
    page.goto(f"/#/devices/{device_id}")
    expect(page.locator("#device h1")).to_have_text(device_id)
    page.click("#device-remove")
    page.locator('dialog#confirm input[value="delete"]').check()
    page.click("#dialog-ok")
    # Nothing left to show: back on the devices list, which says what happened.
    expect(page.locator("#device-done")).to_have_text(f"Removed {device_id}. Its twin is deleted.")
    expect(page.locator("#devices-page")).to_be_visible()
    expect(page.locator(f'#device-list tr[data-device="{device_id}"]')).to_have_count(0)
    status, body, _ = device_system.api.call("GET", f"/api/v1/devices/{device_id}")
    assert (status, body["reason"]) == (404, "device_not_found"), body


def test_a_viewer_sees_no_device_actions(page: Page, device_system: DeviceSystem) -> None:
    status, body, _ = device_system.api.call(
        "POST", "/api/v1/users", body=json.dumps({"name": "vera", "role": "viewer"}).encode()
    )
    assert status == 201, body
    sign_in(page, str(body["token"]))
    page.goto(f"/#/devices/{DEVICE}")
    expect(page.locator("#desired-base")).to_contain_text("Editing desired $version")
    expect(page.locator("#device-revoke")).to_have_count(0)
    expect(page.locator("#device-remove")).to_have_count(0)
    expect(page.locator("#desired-submit")).to_be_disabled()
    page.goto("/#/devices")
    expect(page.locator("#device-list")).to_contain_text("thermostat")
    expect(page.locator("#register-form")).to_have_count(0)
