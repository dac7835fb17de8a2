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
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.integration.console.conftest import (
    DEVICE,
    DEVICE_NODE,
    WAIT,
    DeviceSystem,
    console_page,
)

pytestmark = pytest.mark.mqtt


@pytest.fixture
def page(browser: Browser, device_system: DeviceSystem) -> Iterator[Page]:
    # Refused PATCHes (400, 409) are logged by the browser as failed loads; nothing else may be.
    with console_page(
        browser,
        base_url=device_system.server.url,
        height=900,
        ignored=lambda e: any(f"status of {s}" in e for s in (400, 409)),
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
        body=json.dumps({"desired": {"mode": mode, "$version": version}}).encode(),
    )
    assert status == 200, body
    expect(page.locator("#desired-version")).to_have_text(f"v{version + 1}", timeout=WAIT * 1000)
    assert shown_json(page, "#desired")["mode"] == mode
    expect(page.locator("#desired-base .stale")).to_contain_text("Desired has changed since")
    # The simulator reports every 0.3 s, so which reported version a poll named varies.
    assert any(f"desiredVersion={version + 1}&reportedVersion=" in url for url in polls), polls


def test_a_version_conflict_is_shown_and_reload_recovers(
    page: Page, device_system: DeviceSystem, shots: Path
) -> None:
    sign_in(page, device_system.server.admin_token)
    page.goto(f"/#/devices/{DEVICE}")
    expect(page.locator("#desired-base")).to_contain_text("Editing desired $version")
    before = device_system.api.get(f"/api/v1/devices/{DEVICE}/twin")
    version = before["desired"]["$version"]
    expect(page.locator("#desired-base")).to_contain_text(f"$version {version}.")
    # Someone else changes desired through the API while the form is open...
    status, body, _ = device_system.api.call(
        "PATCH",
        f"/api/v1/devices/{DEVICE}/twin",
        body=json.dumps({"desired": {"mode": "heat", "$version": version}}).encode(),
    )
    assert status == 200, body
    # ...and an API client with the same stale version is refused, as the form will be.
    status, body, _ = device_system.api.call(
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
    twin = device_system.api.get(f"/api/v1/devices/{DEVICE}/twin")
    assert twin["desired"]["mode"] == "heat"  # the refused form wrote nothing
    page.click("#conflict-reload")
    expect(page.locator("#desired-base")).to_have_text(f"Editing desired $version {version + 1}.")
    assert json.loads(page.locator("#desired-input").input_value())["mode"] == "heat"


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
