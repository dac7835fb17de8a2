"""The console's operator actions in headless Chromium, against real processes.

A real ``tunnel-server`` and real ``edge-agent`` processes: a bootstrap token created on the
Tokens page joins a real agent; an agent joined with an approval token waits until it is
approved on its node page, then is revoked there (its tunnel is cut at once); the node's
events and the audit log show what happened; a viewer gets no operator buttons; the admin
token is rotated in the console (the old one fails at once and the console asks to sign in
again with the new one, shown once); a ``#session=`` fragment (where the SSO callback lands)
becomes the tab's session and leaves the address bar.

Screenshots go to ``<test_output_dir>/console/``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.harness.daemons import BIN, Server, command
from tests.integration.console.conftest import (
    WAIT,
    Api,
    ConsoleSystem,
    ReportingAgent,
    console_page,
    wait_for,
)

MS = WAIT * 1000


@pytest.fixture(scope="module")
def operator_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSystem]:
    """A server with no node yet: the tests join theirs."""
    workdir = tmp_path_factory.mktemp("console-operator")
    server = Server(workdir=workdir)
    server.start()
    agents: dict[str, ReportingAgent] = {}
    try:
        yield ConsoleSystem(
            server=server,
            agents=agents,
            api=Api(server=server, token=server.admin_token),
            workdir=workdir,
        )
    finally:
        for agent in agents.values():
            agent.stop()
        server.stop()


@pytest.fixture
def page(browser: Browser, operator_system: ConsoleSystem) -> Iterator[Page]:
    # Refused calls the tests provoke (401 after a rotation, 409) are logged as failed loads.
    with console_page(
        browser,
        base_url=operator_system.server.url,
        height=900,
        ignored=lambda e: any(f"status of {s}" in e for s in (401, 409)),
    ) as opened:
        yield opened


def sign_in(page: Page, token: str) -> None:
    page.goto("/")
    page.fill("#token", token)
    page.click("#signin-button")
    expect(page.locator("#live")).to_have_text("live", timeout=MS)


def join(system: ConsoleSystem, name: str, token: str, *extra: str) -> list[str]:
    return [
        str(BIN / "edge-agent"),
        "join",
        "--server",
        system.server.url,
        "--token",
        token,
        "--ca-hash",
        system.server.ca_hash,
        "--name",
        name,
        "--data-dir",
        str(system.workdir / f"agent-{name}"),
        *extra,
    ]


def start_agent(system: ConsoleSystem, name: str) -> ReportingAgent:
    agent = ReportingAgent(name=name, workdir=system.workdir, server=system.server)
    system.agents[name] = agent
    agent.start()
    agent.wait_connected()
    return agent


def test_create_a_token_in_the_console_and_join_with_it(
    page: Page, operator_system: ConsoleSystem, shots: Path
) -> None:
    sign_in(page, operator_system.server.admin_token)
    page.click('#nav a[href="#/tokens"]')
    expect(page.locator("#tokens-page h1")).to_have_text("Bootstrap tokens")
    page.fill("#token-name", "edge-new")
    page.select_option("#token-kind", "node")
    page.select_option("#token-ttl", "3600")
    page.click("#token-create")
    created = page.locator("#token-created")
    expect(created).to_contain_text("shown this once")
    token = page.locator("#new-token").text_content() or ""
    join_command = page.locator("#join-command").text_content() or ""
    assert token, "the token is shown"
    assert token in join_command, join_command
    expect(page.locator('#tokens tr[data-name="edge-new"]')).to_have_attribute(
        "data-status", "valid"
    )
    page.screenshot(path=shots / "tokens-created.png", full_page=True)
    # Leaving the page and coming back: the secret is gone for good.
    page.click('#nav a[href="#/"]')
    page.click('#nav a[href="#/tokens"]')
    expect(page.locator('#tokens tr[data-name="edge-new"]')).to_be_visible()
    assert token not in (page.locator("#tokens-page").text_content() or "")

    command("edge-agent", *join(operator_system, "edge-new", token)[1:])
    start_agent(operator_system, "edge-new")
    page.click('#nav a[href="#/"]')
    expect(page.locator('tr[data-node="edge-new"] .badge')).to_have_text("online", timeout=MS)
    page.click('#nav a[href="#/tokens"]')
    expect(page.locator('#tokens tr[data-name="edge-new"]')).to_have_attribute(
        "data-status", "used"
    )


def test_revoke_an_unused_token(page: Page, operator_system: ConsoleSystem) -> None:
    status, body, _ = operator_system.api.call(
        "POST", "/api/v1/tokens", body=json.dumps({"name": "edge-never"}).encode()
    )
    assert status == 201, body
    sign_in(page, operator_system.server.admin_token)
    page.goto("/#/tokens")
    row = page.locator('#tokens tr[data-name="edge-never"]')
    expect(row).to_have_attribute("data-status", "valid")
    row.locator("button").click()
    expect(page.locator("dialog#confirm")).to_be_visible()
    page.click("#dialog-ok")
    expect(row).to_have_attribute("data-status", "revoked")
    refused = subprocess.run(
        join(operator_system, "edge-never", str(body["token"])),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0, refused.stdout
    assert "401" in refused.stderr or "token" in refused.stderr.lower(), refused.stderr


def test_approve_a_pending_node_then_revoke_it(
    page: Page, operator_system: ConsoleSystem, shots: Path
) -> None:
    name = "edge-wait"
    status, body, _ = operator_system.api.call(
        "POST",
        "/api/v1/tokens",
        body=json.dumps({"name": name, "requireApproval": True}).encode(),
    )
    assert status == 201, body
    assert body["requireApproval"] is True
    joiner = subprocess.Popen(
        join(operator_system, name, str(body["token"]), "--wait-approval", "120"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            operator_system.api,
            f"/api/v1/nodes/{name}",
            lambda node: node["status"] == "pending",
            f"{name} waiting for approval",
        )
        sign_in(page, operator_system.server.admin_token)
        page.goto(f"/#/nodes/{name}")
        expect(page.locator("#node-status .badge")).to_have_text("pending", timeout=MS)
        expect(page.locator("#node-approve")).to_be_visible()
        page.screenshot(path=shots / "node-pending.png", full_page=True)
        page.click("#node-approve")
        expect(page.locator("#node-done")).to_contain_text("Approved")
        _, err = joiner.communicate(timeout=WAIT)
        assert joiner.returncode == 0, err
    finally:
        if joiner.returncode is None:
            joiner.kill()
            joiner.communicate()
    agent = start_agent(operator_system, name)
    expect(page.locator("#node-status .badge")).to_have_text("online", timeout=MS)
    expect(page.locator("#node-approve")).to_have_count(0)

    page.click("#node-revoke")
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text(f"Revoke {name}?")
    expect(page.locator("#dialog-cancel")).to_be_focused()  # the safe choice has the focus
    page.click("#dialog-ok")
    expect(page.locator("#node-done")).to_contain_text("Revoked")
    # Cut off at once: no tunnel on the server the moment the console says so.
    node = operator_system.api.node(name)
    assert (node["state"], node["connected"]) == ("revoked", False), node
    expect(page.locator("#node-status .badge")).to_have_text("revoked")
    expect(page.locator('[data-fact="Status"] dd')).to_contain_text("(no tunnel)")
    page.screenshot(path=shots / "node-revoked.png", full_page=True)
    # The node's events tell the story, newest last or first: each once.
    events = page.locator("#node-event-list")
    for kind in ("joined", "approved", "revoked"):
        expect(events.locator(f'li[data-type="{kind}"]')).to_have_count(1, timeout=MS)
    page.goto("/#/")
    expect(page.locator(f'tr[data-node="{name}"] .badge')).to_have_text("revoked")
    agent.stop()


def test_the_audit_page_lists_the_writes(page: Page, operator_system: ConsoleSystem) -> None:
    status, created, _ = operator_system.api.call(
        "POST", "/api/v1/tokens", body=json.dumps({"name": "edge-audited"}).encode()
    )
    assert status == 201, created
    sign_in(page, operator_system.server.admin_token)
    page.click('#nav a[href="#/audit"]')
    expect(page.locator("#audit-page h1")).to_have_text("Audit log")
    expect(page.locator('#audit tr[data-action="tokens.create"]').first).to_be_visible()
    page.fill("#audit-target", str(created["id"]))  # a created object's target: its id
    page.click("#audit-apply")
    rows = page.locator("#audit tbody tr[data-action]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("admin")
    expect(rows.first.locator(".badge")).to_have_text("201")


def test_a_viewer_gets_no_operator_actions(page: Page, operator_system: ConsoleSystem) -> None:
    status, body, _ = operator_system.api.call(
        "POST", "/api/v1/users", body=json.dumps({"name": "val", "role": "viewer"}).encode()
    )
    assert status == 201, body
    sign_in(page, str(body["token"]))
    expect(page.locator("#whoami")).to_have_text("val (viewer)")
    expect(page.locator('#nav a[href="#/tokens"]')).to_be_hidden()
    expect(page.locator('#nav a[href="#/audit"]')).to_be_hidden()
    node = next(iter(operator_system.agents), None)
    assert node is not None, "an earlier test joined a node"
    page.goto(f"/#/nodes/{node}")
    expect(page.locator("#node-status .badge")).not_to_be_empty()
    expect(page.locator("#node-actions button")).to_have_count(0)
    page.goto("/#/tokens")
    expect(page.locator("#not-allowed")).to_contain_text("needs an admin")


def test_a_session_in_the_fragment_is_taken_and_removed(
    page: Page, operator_system: ConsoleSystem
) -> None:
    """Where the SSO callback lands: ``/#session=<token>`` signs the tab in, then is erased."""
    status, body, _ = operator_system.api.call("POST", "/api/v1/sessions", body=b"{}")
    assert status == 201, body
    page.goto("/")
    expect(page.locator("#signin-form")).to_be_visible()
    # No identity provider configured: the SSO button stays hidden.
    expect(page.locator("#sso-button")).to_have_count(0)
    page.goto(f"/#session={body['token']}")
    expect(page.locator("#live")).to_have_text("live", timeout=MS)
    assert body["token"] not in page.url
    assert page.url.endswith("#/"), page.url
    stored = json.loads(page.evaluate("sessionStorage.getItem('edgefleet.session')"))
    assert stored["token"] == body["token"]
    expect(page.locator("#whoami")).to_have_text("admin (admin)")


def test_rotate_the_admin_token(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory, shots: Path
) -> None:
    """On a server of its own: every other test signs in with the admin token."""
    workdir = tmp_path_factory.mktemp("console-rotate")
    server = Server(workdir=workdir)
    server.start()
    try:
        old = server.admin_token
        with console_page(
            browser, base_url=server.url, height=900, ignored=lambda e: "status of 401" in e
        ) as page:
            sign_in(page, old)
            page.click('#nav a[href="#/tokens"]')
            page.click("#rotate-admin")
            expect(page.locator("dialog#confirm")).to_contain_text("Rotate the admin token?")
            page.click("#dialog-ok")
            # This session was made from the old token: it ended, back at sign-in, the new
            # token shown once.
            error = page.locator("#signin-error")
            expect(error).to_contain_text("The admin token was rotated", timeout=MS)
            expect(page.locator("#signin-form")).to_be_visible()
            new = page.locator("#new-admin-token").text_content() or ""
            assert new
            assert new != old
            assert page.evaluate("sessionStorage.length") == 0
            page.screenshot(path=shots / "admin-token-rotated.png", full_page=True)
            assert server.admin_token == new, "written to the data folder"
            api = Api(server=server)
            status, body, _ = api.call("GET", "/api/v1/nodes", token=old)
            assert status == 401, body
            status, body, _ = api.call("GET", "/api/v1/nodes", token=new)
            assert status == 200, body
            page.fill("#token", old)
            page.click("#signin-button")
            expect(page.locator("#signin-error")).to_contain_text("That token was not accepted")
            page.fill("#token", new)
            page.click("#signin-button")
            expect(page.locator("#live")).to_have_text("live", timeout=MS)
    finally:
        server.stop()
