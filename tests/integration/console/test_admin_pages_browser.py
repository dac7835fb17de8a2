"""The console's Users and Models pages in headless Chromium, against a real server.

A real ``tunnel-server``: an admin creates a user on the Users page (its token shown once)
that the API then accepts, and revokes it there (the API refuses it from then on); the Models
page lists the built-in models, a YAML model uploaded in the console appears with its version
and its properties, an invalid one is refused with the paths of its problems; a viewer sees
the models but no Users link and no upload form.

Screenshots go to ``<test_output_dir>/console/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.harness.daemons import Server
from tests.integration.console.conftest import WAIT, Api, ConsoleSystem, console_page

MS = WAIT * 1000
BUILTIN = ("power-meter", "relay-switch", "temperature-sensor", "thermostat")
PUMP = """\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: pump-ui
version: "{version}"
description: Water pump uploaded in the console.
properties:
  - name: flow
    type: float
    unit: l/min
    min: 0
    max: 120
    kind: telemetry
  - name: speed
    type: int
    min: 0
    max: 3
    access: read-write
"""
INVALID = """\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: pump-bad
version: "1.0.0"
properties:
  - name: flow
    type: float
    min: 10
    max: 5
  - name: level
    type: int
    mxa: 3
"""


@pytest.fixture(scope="module")
def admin_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSystem]:
    """A server with no node: these pages need none."""
    workdir = tmp_path_factory.mktemp("console-admin-pages")
    server = Server(workdir=workdir)
    server.start()
    try:
        yield ConsoleSystem(
            server=server,
            agents={},
            api=Api(server=server, token=server.admin_token),
            workdir=workdir,
        )
    finally:
        server.stop()


@pytest.fixture
def page(browser: Browser, admin_system: ConsoleSystem) -> Iterator[Page]:
    # The refusals the tests provoke (400, 409) are logged as failed loads.
    with console_page(
        browser,
        base_url=admin_system.server.url,
        height=900,
        ignored=lambda e: any(f"status of {s}" in e for s in (400, 409)),
    ) as opened:
        yield opened


def sign_in(page: Page, token: str) -> None:
    page.goto("/")
    page.fill("#token", token)
    page.click("#signin-button")
    expect(page.locator("#live")).to_have_text("live", timeout=MS)


def test_create_a_user_then_revoke_it(page: Page, admin_system: ConsoleSystem, shots: Path) -> None:
    sign_in(page, admin_system.server.admin_token)
    page.click('#nav a[href="#/users"]')
    expect(page.locator("#users-page h1")).to_have_text("Users")
    page.fill("#user-name", "olga")
    page.select_option("#user-role", "operator")
    page.fill("#user-clusters", "east, west")
    page.click("#user-create")
    expect(page.locator("#user-created")).to_contain_text("shown this once")
    token = page.locator("#new-user-token").text_content() or ""
    assert token, "the token is shown"
    row = page.locator('#users tr[data-name="olga"]')
    expect(row).to_have_attribute("data-state", "active")
    expect(row).to_contain_text("east, west")
    page.screenshot(path=shots / "users-created.png", full_page=True)

    status, me, _ = admin_system.api.call("GET", "/api/v1/me", token=token)
    assert status == 200, me
    assert (me["user"], me["role"], me["clusters"]) == ("olga", "operator", ["east", "west"])

    # A refusal shows the server's detail: an admin has no cluster scope.
    page.fill("#user-name", "adele")
    page.select_option("#user-role", "admin")
    page.fill("#user-clusters", "east")
    page.click("#user-create")
    expect(page.locator("#user-error")).to_contain_text("Refused (400")
    expect(page.locator('#users tr[data-name="adele"]')).to_have_count(0)

    row.get_by_role("button", name="Revoke the user olga").click()
    expect(page.locator("dialog#confirm")).to_contain_text("Revoke the user olga?")
    expect(page.locator("#dialog-cancel")).to_be_focused()
    page.click("#dialog-ok")
    expect(row).to_have_attribute("data-state", "revoked")
    expect(row.locator("button")).to_have_count(0)
    status, body, _ = admin_system.api.call("GET", "/api/v1/me", token=token)
    assert status == 401, body
    # Leaving the page and coming back: the secret is gone for good.
    page.click('#nav a[href="#/"]')
    page.click('#nav a[href="#/users"]')
    expect(page.locator('#users tr[data-name="olga"]')).to_be_visible()
    assert token not in (page.locator("#users-page").text_content() or "")


def test_models_list_upload_and_refusal(
    page: Page, admin_system: ConsoleSystem, shots: Path
) -> None:
    sign_in(page, admin_system.server.admin_token)
    page.click('#nav a[href="#/models"]')
    expect(page.locator("#models-page h1")).to_have_text("Device models")
    for name in BUILTIN:
        expect(page.locator(f'#models tr[data-name="{name}"]')).to_have_attribute(
            "data-source", "builtin"
        )

    for version in ("1.0.0", "1.1.0"):
        page.fill("#model-yaml", PUMP.format(version=version))
        page.click("#model-upload")
        expect(page.locator("#model-uploaded")).to_contain_text(f"pump-ui version {version}")
        row = page.locator('#models tr[data-name="pump-ui"]')
        expect(row).to_have_attribute("data-version", version)
        expect(row).to_have_attribute("data-source", "uploaded")
        expect(row).to_contain_text("by admin")
    status, body, _ = admin_system.api.call("GET", "/api/v1/device-models/pump-ui")
    assert status == 200, body
    assert body["version"] == "1.1.0", body

    # The same version again: refused, the detail shown.
    page.click("#model-upload")
    expect(page.locator("#model-error")).to_contain_text("version_not_higher")

    page.fill("#model-yaml", INVALID)
    page.click("#model-upload")
    error = page.locator("#model-error")
    expect(error).to_contain_text("invalid_model")
    expect(error.locator('li[data-path="properties[0].min"]')).to_be_visible()
    expect(error.locator('li[data-path="properties[1].mxa"]')).to_be_visible()
    expect(page.locator('#models tr[data-name="pump-bad"]')).to_have_count(0)
    page.screenshot(path=shots / "models-refused.png", full_page=True)

    page.click('#models tr[data-name="pump-ui"] a')
    expect(page.locator("#model-page h1")).to_have_text("pump-ui")
    expect(page.locator('[data-fact="Version"] dd')).to_have_text("1.1.0")
    flow = page.locator('#model-properties tr[data-property="flow"]')
    expect(flow).to_contain_text("telemetry")
    expect(flow).to_contain_text("0 to 120")
    expect(page.locator('#model-properties tr[data-property="speed"]')).to_contain_text(
        "read-write"
    )
    page.goto("/#/models/thermostat")
    expect(page.locator('#model-properties tr[data-property="schedule.comfort"]')).to_be_visible()
    page.screenshot(path=shots / "model-thermostat.png", full_page=True)


def test_a_viewer_sees_no_users_and_no_upload(page: Page, admin_system: ConsoleSystem) -> None:
    status, body, _ = admin_system.api.call(
        "POST", "/api/v1/users", body=json.dumps({"name": "vera", "role": "viewer"}).encode()
    )
    assert status == 201, body
    sign_in(page, str(body["token"]))
    expect(page.locator("#whoami")).to_have_text("vera (viewer)")
    expect(page.locator('#nav a[href="#/users"]')).to_be_hidden()
    page.click('#nav a[href="#/models"]')
    expect(page.locator('#models tr[data-name="thermostat"]')).to_be_visible()
    expect(page.locator("#model-form")).to_have_count(0)
    page.goto("/#/users")
    expect(page.locator("#not-allowed")).to_contain_text("needs an admin")
    expect(page.locator("#users-page")).to_have_count(0)


def test_an_operator_uploads_but_has_no_users_page(page: Page, admin_system: ConsoleSystem) -> None:
    status, body, _ = admin_system.api.call(
        "POST", "/api/v1/users", body=json.dumps({"name": "otto", "role": "operator"}).encode()
    )
    assert status == 201, body
    sign_in(page, str(body["token"]))
    expect(page.locator("#whoami")).to_have_text("otto (operator)")
    expect(page.locator('#nav a[href="#/users"]')).to_be_hidden()
    page.click('#nav a[href="#/models"]')
    page.fill("#model-yaml", PUMP.format(version="1.0.0").replace("pump-ui", "pump-otto"))
    page.click("#model-upload")
    row = page.locator('#models tr[data-name="pump-otto"]')
    expect(row).to_contain_text("by otto")
