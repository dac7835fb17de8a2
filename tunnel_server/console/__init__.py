"""The web console at ``/``: plain HTML, CSS and JavaScript shipped inside the package.

No build step and nothing fetched from the internet: the files in ``static/`` are served as
they are, with a Content-Security-Policy that allows only this origin (no inline script, no
inline style, no other host), so even an injected string cannot load or run anything. The
console signs in with the admin token, keeps only a console session token in
``sessionStorage`` (no cookies), reads the REST API and follows ``/api/v1/events``.
"""

from __future__ import annotations

import logging
from importlib import resources

from aiohttp import web

from tunnel_server.app_keys import FILES_KEY

log = logging.getLogger("tunnel_server.console")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
ASSETS = ("app.js", "fleet.js", "elastic.js", "app.css", "icon.svg")


def _load() -> dict[str, bytes]:
    folder = resources.files(__package__) / "static"
    return {name: (folder / name).read_bytes() for name in ("index.html", *ASSETS)}


def _answer(request: web.Request, name: str) -> web.Response:
    body = request.app[FILES_KEY][name]
    suffix = name[name.rfind(".") :]
    cache = "no-cache" if name == "index.html" else "public, max-age=300"
    return web.Response(
        body=body, headers={**HEADERS, "Content-Type": TYPES[suffix], "Cache-Control": cache}
    )


async def index(request: web.Request) -> web.Response:
    return _answer(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name not in ASSETS:
        raise web.HTTPNotFound(text="no such console file", headers=HEADERS)
    return _answer(request, name)


def setup(app: web.Application) -> None:
    """Serve the console at ``/`` and its files under ``/console/``."""
    app[FILES_KEY] = _load()
    app.router.add_get("/", index)
    app.router.add_get("/console/{file}", asset)
