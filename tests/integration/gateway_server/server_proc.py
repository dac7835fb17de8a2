"""``tunnel-server`` with a fixed gateway route table, for the gateway tests.

Usage: ``python -m tests.integration.gateway_server.server_proc ROUTES.json run [options]``.
ROUTES.json maps a ``Host`` (or ``"*"``) to backends ``"cluster/namespace/service:port"``
in the order to try. It runs ``tunnel-server`` exactly as the installed command does
(``tunnel_server.cli.main``), with ``StaticRouter`` instead of the router that is not wired
to MultiClusterRoute objects yet.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tunnel_server import cli
from tunnel_server.fleet.gateway import Backend, StaticRouter

_BACKEND = re.compile(r"([^/]+)/([^/]+)/([^/:]+):(\d+)")


def parse_backend(text: str) -> Backend:
    match = _BACKEND.fullmatch(text)
    if match is None:
        raise SystemExit(f"not cluster/namespace/service:port: {text!r}")
    cluster, namespace, service, port = match.groups()
    return Backend(cluster=cluster, namespace=namespace, service=service, port=int(port))


def main() -> int:
    routes = json.loads(Path(sys.argv[1]).read_text())
    router = StaticRouter(
        {host: [parse_backend(b) for b in backends] for host, backends in routes.items()}
    )
    return cli.main(sys.argv[2:], gateway_router=router)


if __name__ == "__main__":
    sys.exit(main())
