"""``tunnel-server run`` plus one test-only route, for the offline conflict test.

Usage: ``python -m tests.integration.twins_e2e.server_proc --listen HOST:PORT --data-dir DIR
--public-name NAME``. It builds the application exactly as ``tunnel-server run`` does
(``bootstrap`` + ``create_app``, which mounts the twins part) and serves it over TLS.

Test-only extra: ``POST /test/twins/{node}:{device}/{section}`` with a merge patch writes a
section in the cloud as a local write, so a test can make the cloud edit ``reported``
(the REST API only lets operators edit desired) to check the conflict rule. The product has
no such route.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path

from aiohttp import web

from daemon_support import logs
from device_models import DeviceModelsError, Section
from tunnel_server.app import bootstrap, create_app
from tunnel_server.app_keys import TWINS_KEY
from tunnel_server.cli import parse_listen
from tunnel_server.identity.tls import server_ssl_context
from tunnel_server.settings import ServerSettings

log = logging.getLogger("tests.twins_e2e.server")


async def local_write(request: web.Request) -> web.Response:
    cloud = request.app[TWINS_KEY]
    node, _, device = request.match_info["id"].rpartition(":")
    section = Section(request.match_info["section"])
    patch = json.loads(await request.read())
    try:
        row = cloud.write((node, device), section, patch)
    except DeviceModelsError as error:
        return web.json_response({"error": str(error)}, status=400)
    return web.json_response(row.replica.twin.to_json())


async def serve(settings: ServerSettings) -> None:
    identity = bootstrap(settings)
    app = create_app(settings, identity=identity)
    app.router.add_post("/test/twins/{id}/{section}", local_write)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(
        runner, settings.host, settings.port, ssl_context=server_ssl_context(identity.authority)
    )
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving on %s:%s", settings.host, settings.port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        identity.store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", type=parse_listen, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--public-name", default="127.0.0.1")
    args = parser.parse_args()
    logs.setup("INFO")
    host, port = args.listen
    settings = ServerSettings(
        host=host, port=port, data_dir=args.data_dir, public_name=args.public_name
    )
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
