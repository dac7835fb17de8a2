"""The management subcommands of ``tunnel-server``: each one call (or a few) of the API.

``add_commands`` adds their parsers to the CLI; every leaf sets ``handler``, and ``run`` calls
it with the API client the flags, the environment or the login config point at.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from tunnel_server.client import config, connection, exits
from tunnel_server.client.http import ApiClient, segment
from tunnel_server.client.options import CONNECTION_HELP, add_connection
from tunnel_server.client.output import Column, say, show

Handler = Callable[[argparse.Namespace, connection.Target, ApiClient], int]
SubParsers = argparse._SubParsersAction  # noqa: SLF001 - argparse names it nowhere else


def fmt(args: argparse.Namespace) -> str:
    return str(getattr(args, "output", "table"))


def leaf(
    sub: SubParsers,  # type: ignore[type-arg]
    name: str,
    handler: Handler,
    text: str,
    *,
    description: str | None = None,
    output: bool = True,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=text,
        description=description or text,
        epilog=CONNECTION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection(parser, output=output)
    parser.set_defaults(handler=handler)
    return parser


def group(
    sub: SubParsers,  # type: ignore[type-arg]
    name: str,
    text: str,
    *,
    description: str | None = None,
    required: bool = True,
) -> tuple[argparse.ArgumentParser, SubParsers]:  # type: ignore[type-arg]
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=text,
        description=description or text,
        epilog=CONNECTION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection(parser)
    inner = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=required)
    return parser, inner


def run(args: argparse.Namespace) -> int:
    """Run the chosen subcommand; every failure is one line on stderr and its exit code."""
    handler: Handler = args.handler
    try:
        if getattr(args, "no_target", False):
            return handler(args, _NO_TARGET, _NO_CLIENT)
        target = connection.resolve(args)
        return handler(args, target, target.client())
    except exits.ClientError as exc:
        sys.stderr.write(f"tunnel-server: error: {exc}\n")
        return exc.code


# login and logout resolve their own target; these placeholders are never used.
_NO_TARGET = connection.Target(server="", ca_pem="", token=None)
_NO_CLIENT: Any = None


# ---------------------------------------------------------------- login, whoami, admin token


def cmd_login(args: argparse.Namespace, _t: connection.Target, _c: ApiClient) -> int:
    server: str | None = getattr(args, "server", None)
    if server is None:
        raise exits.ClientError("login needs --server https://HOST[:PORT]", exits.USAGE)
    if getattr(args, "ca_file", None) is not None:
        ca_pem = connection.read_ca_file(args.ca_file)
    elif getattr(args, "ca_hash", None) is not None:
        ca_pem = connection.fetch_ca(server, args.ca_hash)
    else:
        raise exits.ClientError(
            "login needs --ca-hash sha256:... (`tunnel-server ca-hash` on the server prints it)"
            " or --ca-file (its ca.crt), to know it is the right server",
            exits.USAGE,
        )
    token = getattr(args, "token", None) or os.environ.get(connection.TOKEN_ENV)
    if args.sso:
        token = _sso_token(server, ca_pem, open_browser=not args.no_browser)
    if not token:
        raise exits.ClientError(
            f"login needs --token T (or ${connection.TOKEN_ENV}), or --sso", exits.USAGE
        )
    target = connection.Target(server=server, ca_pem=ca_pem, token=token)
    me = target.client().get("/api/v1/me")
    where = config.save(config.LoginConfig(server=server, ca_pem=ca_pem, token=token))
    if fmt(args) in ("json", "yaml"):
        show(me, fmt(args), [])
    else:
        sys.stdout.write(f"logged in to {server} as {_who(me)}\n")
        say(f"# saved in {where} (0600); `tunnel-server logout` forgets it")
    return 0


def _sso_token(server: str, ca_pem: str, *, open_browser: bool) -> str:
    try:  # written in parallel by the SSO part; a build without it says so
        module = importlib.import_module("tunnel_server.client.sso_login")
    except ImportError:
        raise exits.ClientError(
            "this tunnel-server has no SSO sign-in (tunnel_server.client.sso_login is missing):"
            " log in with --token instead",
            exits.USAGE,
        ) from None
    try:
        token = module.sso_login(
            server=server, ca_pem=ca_pem.encode(), open_browser=open_browser, tell=say
        )
    except module.SsoLoginError as exc:
        raise exits.ClientError(f"SSO sign-in failed: {exc}", exits.UNAUTHENTICATED) from None
    return str(token)


def _who(me: dict[str, Any]) -> str:
    clusters = me.get("clusters")
    scope = "all clusters" if clusters is None else ("clusters " + ",".join(clusters) or "none")
    return f"{me.get('user')} ({me.get('role')}, {scope})"


def cmd_logout(_args: argparse.Namespace, _t: connection.Target, _c: ApiClient) -> int:
    saved = config.load()
    if saved is None:
        sys.stdout.write("not logged in\n")
        return 0
    target = connection.Target(server=saved.server, ca_pem=saved.ca_pem, token=saved.token)
    # A console session (SSO) ends on the server too; other tokens stay valid.
    with contextlib.suppress(exits.ClientError):
        target.client().request("DELETE", "/api/v1/sessions/current")
    config.remove()
    sys.stdout.write(f"logged out of {saved.server}\n")
    return 0


WHOAMI = [
    Column("USER", "user"),
    Column("ROLE", "role"),
    Column("CLUSTERS", lambda me: "*" if me.get("clusters") is None else me["clusters"]),
    Column("EXPIRES", "expiresAt"),
]


def cmd_whoami(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    show(client.get("/api/v1/me"), fmt(args), WHOAMI)
    return 0


def cmd_admin_token_rotate(
    args: argparse.Namespace, target: connection.Target, client: ApiClient
) -> int:
    answer = client.post("/api/v1/admin-token/rotate")
    token = str(answer["token"])
    saved = config.load()
    if saved is not None and saved.server == target.server and saved.token == target.token:
        config.save(config.LoginConfig(server=saved.server, ca_pem=saved.ca_pem, token=token))
        say(f"# the login config {config.path()} now holds the new token")
    if fmt(args) in ("json", "yaml"):
        show(answer, fmt(args), [])
    else:
        sys.stdout.write(token + "\n")
        say(
            "# the old admin token and its console sessions stop working now; the server"
            " wrote the new one to its data dir (admin-token)"
        )
    return 0


def add_session_commands(sub: SubParsers) -> None:  # type: ignore[type-arg]
    login = leaf(
        sub,
        "login",
        cmd_login,
        "check a server and a token, and save them for later commands",
        description="Fetch the server's CA and accept it only with --ca-hash (or take it from"
        " --ca-file), check the token with GET /api/v1/me, and write the login config"
        " ($XDG_CONFIG_HOME/edgefleet/cli.yaml, mode 0600) that later commands use.",
    )
    login.add_argument(
        "--sso", action="store_true", help="sign in through the server's identity provider"
    )
    login.add_argument(
        "--no-browser",
        action="store_true",
        help="with --sso: only print the sign-in URL (open it in a browser on this machine)",
    )
    login.set_defaults(no_target=True)
    leaf(sub, "logout", cmd_logout, "forget the saved login (and end an SSO session)").set_defaults(
        no_target=True
    )
    leaf(sub, "whoami", cmd_whoami, "who the token is: user, role, clusters, expiry")
    _, admin = group(sub, "admin-token", "the bootstrap admin token")
    leaf(
        admin,
        "rotate",
        cmd_admin_token_rotate,
        "make a new admin token; the old one and its sessions stop working at once",
        description="POST /api/v1/admin-token/rotate (admin): prints the new token; the server"
        " writes it to DATA_DIR/admin-token. A login config holding the old one is updated.",
    )


def show_json_items(document: dict[str, Any]) -> None:
    """``--json`` of earlier versions: the items alone, as a JSON list."""
    sys.stdout.write(json.dumps(document.get("items", []), indent=2) + "\n")


def path(*parts: str) -> str:
    return "/api/v1/" + "/".join(segment(p) if i else p for i, p in enumerate(parts))


def list_handler(kind: str, columns: list[Column], **filters: str) -> Any:  # noqa: ANN401 - a handler
    def handler(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
        query = {
            param: str(getattr(args, attr))
            for attr, param in filters.items()
            if getattr(args, attr, None)
        }
        show(client.list_all(f"/api/v1/{kind}", query), fmt(args), columns)
        return 0

    return handler
