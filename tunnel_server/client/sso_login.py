"""``tunnel-server login --sso``: sign in through the server's OpenID provider from a terminal.

The CLI listens on a loopback port, sends the browser to the server's
``/api/v1/sso/login?cliPort=<port>&cliChallenge=<S256 of a secret>``, and the server, once
the person signed in at the provider, sends the browser back to
``http://127.0.0.1:<port>/callback?code=<one-time code>``. The CLI then trades the code and
its secret for a console session token at ``POST /api/v1/sso/exchange`` over HTTPS with the
server's CA pinned. The token never travels in a URL; the code is worth nothing without the
secret, which never leaves this process, and works once, for 2 minutes.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import re
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request
import webbrowser
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("tunnel_server.client.sso")

DEFAULT_TIMEOUT = 300.0
"""Seconds to wait for the person to finish signing in (password, second factor)."""
MAX_ANSWER = 64 * 1024
"""Bytes of the exchange answer read: a session token and a few fields."""
_CODE = re.compile(r"[A-Za-z0-9_-]{43}")
_DONE_PAGE = (
    b"<!doctype html><title>Signed in</title><p>Signed in to EdgeFleet. You may close this"
    b" window and return to the terminal.</p>"
)


class SsoLoginError(Exception):
    """Signing in did not work; the message says why and what to do."""


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class _Catcher(http.server.BaseHTTPRequestHandler):
    """Takes the one ``/callback?code=`` the server sends the browser to; nothing else."""

    code: str | None = None

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        code = parse_qs(parts.query).get("code", [""])[0]
        if parts.path != "/callback" or not _CODE.fullmatch(code):
            self.send_error(404)
            return
        type(self).code = code
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(_DONE_PAGE)))
        self.end_headers()
        self.wfile.write(_DONE_PAGE)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401 - signature
        log.debug(format, *args)


def sso_login(
    *,
    server: str,
    ca_pem: bytes,
    open_browser: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    browser: Callable[[str], object] | None = None,
    tell: Callable[[str], object] = print,
) -> str:
    """A console session token for the person who signs in; SsoLoginError if they do not.

    ``browser`` (tests) is called with the sign-in URL instead of the system's web browser;
    ``tell`` shows the URL to the person, for a machine with no browser.
    """
    _check_offered(server, ca_pem)
    verifier = secrets.token_urlsafe(32)
    catcher: type[_Catcher] = type("Catcher", (_Catcher,), {"code": None})
    listener = http.server.HTTPServer(("127.0.0.1", 0), catcher)
    try:
        port = listener.server_address[1]
        url = (
            f"{server.rstrip('/')}/api/v1/sso/login?cliPort={port}"
            f"&cliChallenge={_challenge(verifier)}"
        )
        tell(f"Sign in in your browser: {url}")
        opener = browser or (webbrowser.open if open_browser else None)
        if opener is not None:
            threading.Thread(target=opener, args=(url,), name="sso-browser", daemon=True).start()
        deadline = time.monotonic() + timeout
        while catcher.code is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SsoLoginError(
                    f"nobody finished signing in within {timeout:g} s: run"
                    " `tunnel-server login --sso` again"
                )
            listener.timeout = min(left, 1.0)
            listener.handle_request()
        code = catcher.code
    finally:
        listener.server_close()
    return _exchange(server, ca_pem, code=code, verifier=verifier)


def _check_offered(server: str, ca_pem: bytes) -> None:
    """Fail at once on a server without SSO, rather than after the sign-in timeout."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        with urllib.request.urlopen(  # noqa: S310 - the server's own https URL
            f"{server.rstrip('/')}/api/v1/sso", timeout=30, context=context
        ) as answer:
            body = json.loads(answer.read(MAX_ANSWER))
    except urllib.error.HTTPError as error:
        error.close()
        raise SsoLoginError(f"{server} answered {error.code} to GET /api/v1/sso") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise SsoLoginError(f"cannot reach {server}: {error}") from None
    if not isinstance(body, dict) or body.get("enabled") is not True:
        raise SsoLoginError(
            f"{server} offers no SSO sign-in (its admin starts it with `run --sso-config`):"
            " log in with --token instead"
        )


def _exchange(server: str, ca_pem: bytes, *, code: str, verifier: str) -> str:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    request = urllib.request.Request(  # noqa: S310 - the server's own https URL
        f"{server.rstrip('/')}/api/v1/sso/exchange",
        data=json.dumps({"code": code, "verifier": verifier}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:  # noqa: S310
            body = json.loads(answer.read(MAX_ANSWER))
    except urllib.error.HTTPError as error:
        with error:  # closes the connection now, not at some later garbage collection
            try:
                detail = json.loads(error.read(MAX_ANSWER)).get("detail", "")
            except ValueError:
                detail = ""
        raise SsoLoginError(f"the server refused the sign-in ({error.code}): {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise SsoLoginError(f"cannot reach {server}: {error}") from None
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise SsoLoginError("the server's answer holds no session token")
    return token
