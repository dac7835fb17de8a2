"""The console in headless Chromium (Debian's package, driven by Playwright).

Against real processes: sign in, watch the node table, kill and restart an agent and see it
go offline and come back without a reload, open a node page with charts, sign-in errors.

Screenshots of every page go to ``<test_output_dir>/console/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.integration.console.conftest import ConsoleSystem, console_page


@pytest.fixture
def page(browser: Browser, console_system: ConsoleSystem) -> Iterator[Page]:
    # A refused token (401) is logged by the browser as a failed load; nothing else may be.
    with console_page(
        browser, base_url=console_system.server.url, height=860, ignored=lambda e: "401" in e
    ) as opened:
        yield opened


def sign_in(page: Page, token: str) -> None:
    page.goto("/")
    page.fill("#token", token)
    page.click("#signin-button")


def test_bad_token_is_refused_with_a_clear_message(page: Page, shots: Path) -> None:
    sign_in(page, "abcdef.not-the-admin-token")
    error = page.locator("#signin-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("That token was not accepted")
    expect(error).to_contain_text("admin-token")
    page.screenshot(path=shots / "signin-bad-token.png", full_page=True)
    assert page.evaluate("sessionStorage.length") == 0


def test_sign_in_and_see_the_nodes(page: Page, console_system: ConsoleSystem, shots: Path) -> None:
    sign_in(page, console_system.server.admin_token)
    # The page of nodes says so ("fleet" is the word for clusters, see docs/architecture.md).
    expect(page.locator("#node-list h1")).to_have_text("Nodes")
    expect(page.locator('#nav a[href="#/"]')).to_have_text("Nodes")
    for name in console_system.agents:
        expect(page.locator(f'tr[data-node="{name}"] .badge')).to_have_text("online")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator('[data-card="online"] .n')).to_have_text("2")
    stored = page.evaluate("sessionStorage.getItem('edgefleet.session')")
    assert console_system.server.admin_token not in stored, "only a session token is kept"
    assert page.context.cookies() == []
    page.screenshot(path=shots / "nodes.png", full_page=True)

    # Filter and sort without a reload.
    page.fill("#filter", "edge-b")  # the server filters (q=), sorts and pages the table
    expect(page.locator("tbody tr[data-node]")).to_have_count(1)
    page.fill("#filter", "")
    page.click('th[data-field="name"] button')  # already by name: now descending
    expect(page.locator("tbody tr[data-node]").first).to_have_attribute("data-node", "edge-b")
    page.select_option("#status-filter", "offline")
    expect(page.locator("td.empty")).to_contain_text("No node matches")
    page.select_option("#status-filter", "")


def test_the_node_table_pages_through_the_server(page: Page, console_system: ConsoleSystem) -> None:
    # One row per page (50 in use): the list's `continue` token brings the next page.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/api/v1/nodes?" in r.url else None)
    sign_in(page, console_system.server.admin_token)
    expect(page.locator('tr[data-node="edge-a"] .badge')).to_have_text("online")
    page.evaluate("state.pageSize = 1; firstPage()")
    rows = page.locator("tbody tr[data-node]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-node", "edge-a")
    expect(page.locator("#page-prev")).to_be_disabled()
    page.click("#page-next")
    expect(rows.first).to_have_attribute("data-node", "edge-b")
    expect(page.locator("#page-label")).to_have_text("Page 2")
    expect(page.locator("#page-next")).to_be_disabled()  # the last page: continue is null
    assert any("continue=" in url and "limit=1" in url for url in requests), requests
    page.click("#page-prev")
    expect(rows.first).to_have_attribute("data-node", "edge-a")
    expect(page.locator("#page-prev")).to_be_disabled()


def test_live_update_keeps_the_focused_link(page: Page, console_system: ConsoleSystem) -> None:
    # A tap, a click or keyboard focus on a node's link must survive a live update of
    # its row: the row is patched, not rebuilt (a rebuilt row lost taps between
    # mousedown and mouseup on phones).
    sign_in(page, console_system.server.admin_token)
    expect(page.locator('tr[data-node="edge-a"] .badge')).to_have_text("online")
    page.focus('tr[data-node="edge-a"] td.name a')
    changed = page.evaluate(
        """() => {
            const link = document.querySelector('tr[data-node="edge-a"] td.name a');
            const node = state.nodes.get('edge-a');
            node.cpuPercent = 77.5;
            renderRows();
            const cpu = document.querySelector('tr[data-node="edge-a"] td[data-label="CPU"]');
            return {
                same: link.isConnected && document.activeElement === link,
                cpu: cpu.textContent,
            };
        }"""
    )
    assert changed["same"], "the focused link was replaced by the update"
    assert changed["cpu"] == "78%", changed  # the row did update


def test_node_goes_offline_and_comes_back_live(
    page: Page, console_system: ConsoleSystem, shots: Path
) -> None:
    sign_in(page, console_system.server.admin_token)
    badge = page.locator('tr[data-node="edge-b"] .badge')
    expect(badge).to_have_text("online")
    agent = console_system.agents["edge-b"]
    assert agent.process is not None
    page.evaluate("window.__marker = 'same page'")  # gone if the page reloads
    killed = time.monotonic()
    agent.process.kill()
    expect(badge).to_have_text("offline", timeout=15_000)
    seen_offline = time.monotonic() - killed
    expect(page.locator('[data-card="offline"] .n')).to_have_text("1")
    page.screenshot(path=shots / "nodes-node-offline.png", full_page=True)
    agent.start()
    agent.wait_connected()
    expect(badge).to_have_text("online", timeout=15_000)
    assert page.evaluate("window.__marker") == "same page", "updated live, without a reload"
    page.screenshot(path=shots / "nodes-node-back.png", full_page=True)
    assert seen_offline < 15


def test_node_page_with_charts(page: Page, console_system: ConsoleSystem, shots: Path) -> None:
    sign_in(page, console_system.server.admin_token)
    page.click('tr[data-node="edge-a"] td.name a')
    expect(page.locator("#node h1")).to_have_text("edge-a")
    expect(page.locator("#node-status .badge")).to_have_text("online")
    expect(page.locator('[data-fact="Kernel"] dd')).not_to_have_text(
        "\u2013"
    )  # the console's "no value" dash
    for series in ("cpu", "memory", "disk"):
        chart = page.locator(f'figure.chart[data-series="{series}"]')
        expect(chart).to_be_visible()
        expect(chart.locator("path.line")).to_have_count(1)
    assert int(page.locator('figure.chart[data-series="cpu"]').get_attribute("data-points") or 0)
    expect(page.locator("#devices")).to_be_empty()  # no [twins], no device: no section
    page.screenshot(path=shots / "node.png", full_page=True)
    page.click('button[data-window="86400"]')
    expect(page.locator('button[data-window="86400"]')).to_have_attribute("aria-pressed", "true")
    expect(page.locator('figure.chart[data-series="disk"] path.line')).to_have_count(1)


def test_phone_width(browser: Browser, console_system: ConsoleSystem, shots: Path) -> None:
    context = browser.new_context(
        ignore_https_errors=True,
        base_url=console_system.server.url,
        viewport={"width": 375, "height": 812},
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    try:
        sign_in(page, console_system.server.admin_token)
        row = page.locator('tr[data-node="edge-a"]')
        expect(row.locator(".badge")).to_have_text("online")
        # Nothing wider than the screen: no sideways scrolling on a phone.
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        # One evaluation: live updates may replace the row between two separate calls.
        width = page.evaluate(
            """document.querySelector('tr[data-node="edge-a"]').getBoundingClientRect().width"""
        )
        assert 0 < width <= 375
        expect(page.locator("#sort-select")).to_be_visible()
        page.screenshot(path=shots / "nodes-phone.png", full_page=True)
        row.locator("td.name a").click()
        expect(page.locator('figure.chart[data-series="cpu"]')).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(path=shots / "node-phone.png", full_page=True)
    finally:
        context.close()


def test_expired_session_returns_to_sign_in(
    page: Page, console_system: ConsoleSystem, shots: Path
) -> None:
    from tunnel_server.api.signer import SessionSigner  # noqa: PLC0415 - the server's own signer

    signer = SessionSigner.load_or_create(console_system.server.data_dir)
    expired, _ = signer.issue(now=time.time() - 3600, ttl=60)
    page.goto("/")
    page.evaluate(
        "token => sessionStorage.setItem('edgefleet.session', JSON.stringify({token}))", expired
    )
    page.goto("/#/nodes/edge-a")
    error = page.locator("#signin-error")
    expect(error).to_contain_text("Your session expired")
    assert page.evaluate("sessionStorage.length") == 0
    page.screenshot(path=shots / "signin-expired.png", full_page=True)


def test_sign_out_revokes_the_session_on_the_server(
    page: Page, console_system: ConsoleSystem, shots: Path
) -> None:
    sign_in(page, console_system.server.admin_token)
    expect(page.locator("#live")).to_have_text("live")
    token = page.evaluate("JSON.parse(sessionStorage.getItem('edgefleet.session')).token")
    # A second tab holding the same session (a duplicated tab copies sessionStorage).
    twin = page.context.new_page()
    twin.goto("/")
    twin.evaluate(
        "token => sessionStorage.setItem('edgefleet.session', JSON.stringify({token}))", token
    )
    twin.goto("/#/")
    expect(twin.locator("#live")).to_have_text("live")

    page.click("#signout")
    error = page.locator("#signin-error")
    expect(error).to_have_text(
        "Signed out. The session no longer works anywhere, not even a copy of its token."
    )
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    page.screenshot(path=shots / "signin-signed-out.png", full_page=True)
    status, body, _ = console_system.api.call("GET", "/api/v1/nodes", token=token)
    assert (status, body["reason"]) == (401, "session_revoked"), "the token is dead on the server"
    # The other tab's live stream ends with 'revoked': it is back at sign-in without a click.
    expect(twin.locator("#signin-error")).to_contain_text("This session was signed out")
    assert twin.evaluate("sessionStorage.length") == 0
    twin.close()


def test_sign_out_when_the_server_cannot_be_told(
    browser: Browser, console_system: ConsoleSystem, shots: Path
) -> None:
    """Best effort: the tab signs out anyway and says the token still works elsewhere."""
    context = browser.new_context(ignore_https_errors=True, base_url=console_system.server.url)
    page = context.new_page()  # its failed DELETE is logged as an error on purpose: no check
    try:
        sign_in(page, console_system.server.admin_token)
        expect(page.locator("#live")).to_have_text("live")
        token = page.evaluate("JSON.parse(sessionStorage.getItem('edgefleet.session')).token")
        page.route("**/api/v1/sessions/current", lambda route: route.abort("connectionrefused"))
        page.click("#signout")
        error = page.locator("#signin-error")
        expect(error).to_contain_text("Signed out of this tab only")
        expect(error).to_contain_text("a copy of the session token keeps working until")
        assert page.evaluate("sessionStorage.length") == 0
        page.screenshot(path=shots / "signin-signed-out-offline.png", full_page=True)
        assert console_system.api.call("GET", "/api/v1/nodes", token=token)[0] == 200
        assert console_system.api.call("DELETE", "/api/v1/sessions/current", token=token)[0] == 204
    finally:
        context.close()


def test_security_headers(page: Page) -> None:
    answer = page.goto("/")
    assert answer is not None
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert answer.headers["x-frame-options"] == "DENY"
    assert "set-cookie" not in answer.headers
