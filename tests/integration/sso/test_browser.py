"""SSO sign-in in headless Chromium: the console's button, the provider's form, the role's view.

Built against the console's contract (docs/sso.md, ISSUE13.md): the sign-in page shows a
button "Sign in with SSO" when ``GET /api/v1/sso`` says enabled; it navigates to
``/api/v1/sso/login``, and the console takes the session from ``/#session=`` into
``sessionStorage`` and removes it from the address bar.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.harness import idp
from tests.integration.console.conftest import browser, console_page, shots  # noqa: F401
from tests.integration.sso.conftest import Sso

WAIT = 30_000  # ms: a guard against hangs, not a measurement


@pytest.fixture
def page(browser: Browser, sso: Sso) -> Iterator[Page]:  # noqa: F811 - the imported fixture
    with console_page(browser, base_url=sso.server.url, height=860, ignored=lambda _e: False) as p:
        yield p


def _sign_in_with_sso(page: Page, user: str) -> None:
    page.goto("/")
    page.get_by_role("button", name="Sign in with SSO").click()
    page.fill("#login", user)  # the provider's own form (tests/harness/idp.py)
    page.fill("#password", idp.USERS[user]["password"])
    page.click("#submit-login")
    # Back on the console, signed in: the node list shows.
    expect(page.locator("#node-list h1")).to_have_text("Nodes", timeout=WAIT)
    assert page.evaluate("sessionStorage.getItem('edgefleet.session')")


@pytest.mark.parametrize(("user", "role"), [("alice", "admin"), ("bob", "viewer")])
def test_sign_in_through_the_provider_in_the_browser(
    page: Page,
    shots: Path,  # noqa: F811 - the imported fixture
    user: str,
    role: str,
) -> None:
    _sign_in_with_sso(page, user)
    assert "#session=" not in page.url, "the token stays out of the address bar"
    stored = page.evaluate("sessionStorage.getItem('edgefleet.session')")
    assert "s2." in stored, "the session from the fragment is this tab's session"
    # The role's view: who the console says it is (from GET /api/v1/me), and the admin-only
    # pages offered to the admin alone.
    expect(page.locator("#whoami")).to_contain_text(f"sso.{user}-")
    expect(page.locator("#whoami")).to_contain_text(f"({role})")
    tokens_link = page.locator('#nav [data-may="tokens"]')
    if role == "admin":
        expect(tokens_link).to_be_visible()
    else:
        expect(tokens_link).to_be_hidden()
        page.goto("/#/tokens")
        expect(page.locator("#not-allowed")).to_be_visible()
    page.screenshot(path=shots / f"sso-{user}.png", full_page=True)
