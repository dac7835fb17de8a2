"""Flags every management subcommand shares: where the server is, who calls, how to print."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from tunnel_server.client import connection
from tunnel_server.client.output import FORMATS

CONNECTION_HELP = """\
where and who (first that applies):
  --server URL --token T        with --ca-file FILE or --ca-hash sha256:... (also from
                                $EDGEFLEET_SERVER and $EDGEFLEET_TOKEN)
  --data-dir DIR                on the server machine: its URL, CA and admin token (the
                                server must be running)
  the login config              written by `tunnel-server login`
                                ($XDG_CONFIG_HOME/edgefleet/cli.yaml)

exit codes: 0 ok, 1 failed (server error, other), 2 usage or configuration, 3 not
authenticated (401), 4 forbidden (403), 5 not found (404), 6 conflict (409, 412),
7 server unreachable or not the pinned one (TLS, CA hash)
"""


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        try:
            return check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


server_url = _checked(connection.server_url)
ca_hash = _checked(connection.check_ca_hash)


def add_connection(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    """The shared flags; SUPPRESS so a flag given before a nested subcommand is kept."""
    group = parser.add_argument_group("server and credentials")
    group.add_argument(
        "--server",
        type=server_url,
        default=argparse.SUPPRESS,
        metavar="URL",
        help="https://HOST[:PORT] of the tunnel server's API",
    )
    group.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        metavar="T",
        help="bearer token: the admin token, a user token or a session (default:"
        " $EDGEFLEET_TOKEN, or the login config's)",
    )
    group.add_argument(
        "--ca-file",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="the server's CA certificate (its ca.crt); never the system's trust store",
    )
    group.add_argument(
        "--ca-hash",
        type=ca_hash,
        default=argparse.SUPPRESS,
        metavar="sha256:HEX",
        help="fetch the server's CA and accept it only with this hash (`tunnel-server ca-hash`)",
    )
    group.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="on the server machine: take URL, CA and admin token from the running server's"
        " data folder",
    )
    if output:
        group.add_argument(
            "-o",
            "--output",
            choices=FORMATS,
            default=argparse.SUPPRESS,
            help="table (default), wide (more columns), json (the API's JSON), yaml",
        )
