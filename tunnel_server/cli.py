"""``tunnel-server``: the cloud side of EdgeFleet.

Every command but ``run`` works on the data dir directly, whether the server runs or not: the
store is SQLite in WAL mode and the running server notices changes within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import ssl
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from daemon_support import arguments, logs, systemd
from tunnel_server import __version__
from tunnel_server.identity import tokens, users
from tunnel_server.identity.pki import CertificateAuthority, MissingCAError
from tunnel_server.identity.sso_mapping import sso_config_file
from tunnel_server.settings import (
    DAY,
    AutonomySettings,
    EgressSettings,
    JoinSettings,
    PkiSettings,
    ServerSettings,
)
from tunnel_server.store import STORE_FILE, NotFoundError, SqliteStore, StoreError
from tunnel_server.tunnel import tls_buffer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tunnel_server.app import ServerIdentity
    from tunnel_server.store import NodeRecord, NodeState, UserRecord

log = logging.getLogger("tunnel_server.cli")

DESCRIPTION = """\
EdgeFleet tunnel server: the cloud control point that edge agents dial into.

It serves the tunnel endpoint for agents, the REST API, the kube proxy into registered
clusters and nodes, the web console, and /healthz, /readyz and /metrics.

Joining a node:
  tunnel-server token create --kind node --name edge-1     # prints the token
  edge-agent join --server https://HOST:8443 --token T --ca-hash $(tunnel-server ca-hash)

Cloud users (roles admin, operator, viewer) and kubectl:
  tunnel-server users create alice --role operator --clusters prod-1   # prints a token
  tunnel-server kubeconfig --user alice > alice.kubeconfig
"""
EXIT_CODES = """\
exit codes:
  0  done
  1  the command failed; its one-line message says why and what to do (no CA or store in
     the data dir, the listen address in use, a name already joined, no such node, ...)
  2  usage or configuration error: a bad flag or value, a --data-dir that is not a folder,
     an unusable --kube-upstream kubeconfig
"""
_LISTEN_EXAMPLE = "0.0.0.0:8443"


class CliError(Exception):
    """A command failed in a way the operator can fix; the message says how. Exit 1."""

    exit_code = 1


class UsageError(CliError):
    """A flag's value or the data dir given cannot work at all. Exit 2, like argparse."""

    exit_code = arguments.USAGE_EXIT


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        msg = f"expected HOST:PORT (port 1-65535) such as {_LISTEN_EXAMPLE}, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - empty host means all


parse_duration = arguments.duration(low=1.0, high=365 * DAY)
"""``90``, ``90s``, ``15m``, ``1h`` or ``2d`` as seconds, from 1 s to a year."""
_idle_timeout = arguments.duration(low=1.0, high=DAY)
_token_ttl = arguments.duration(low=1.0, high=JoinSettings().max_token_ttl)

_count = arguments.whole(low=0, high=1_000_000)
"""A whole number >= 0 (0 turns a limit off)."""


_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


def _public_name(value: str) -> str:
    """A DNS name or an IP address: it goes into the serving certificate agents verify."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(value.strip("[]")))
    if _DNS_NAME.fullmatch(value.lower()):
        return value.lower()
    msg = f"expected a DNS name such as cloud.example.com or an IP address, got {value!r}"
    raise argparse.ArgumentTypeError(msg)


def _server_url(value: str) -> str:
    """``https://HOST[:PORT]``, as agents dial it; only printed, but a typo would be copied."""
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        parts = None
    if parts is None or parts.scheme != "https" or not parts.hostname or parts.path.strip("/"):
        msg = f"expected https://HOST[:PORT] such as https://cloud.example.com:8443, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return f"https://{parts.netloc}"


def _name(value: str) -> str:
    try:
        return tokens.validate_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _data_dir_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a nested sub-command must not reset a --data-dir given before it.
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"the server's data folder (default: {ServerSettings().data_dir})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.Parser(
        prog="tunnel-server",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tunnel-server {__version__}")
    arguments.add_log_level(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    defaults = ServerSettings()
    run = sub.add_parser(
        "run",
        help="serve the tunnel endpoint, API and console",
        description="Run the server in the foreground until SIGTERM or SIGINT. The first start"
        " creates the CA, the store and the admin token (written to DATA_DIR/admin-token).",
    )
    run.add_argument(
        "--listen",
        type=parse_listen,
        default=(defaults.host, defaults.port),
        metavar="HOST:PORT",
        help=f"address to listen on (default: {defaults.host}:{defaults.port})",
    )
    run.add_argument(
        "--client-cert-lifetime",
        type=parse_duration,
        default=defaults.pki.client_lifetime,
        metavar="DURATION",
        help="lifetime of certificates issued to agents, 1s to 365d; they renew after 2/3 of it "
        "over their tunnel session (default: 30d)",
    )
    run.add_argument(
        "--idle-timeout",
        type=_idle_timeout,
        default=defaults.idle_timeout,
        metavar="DURATION",
        help="close HTTP connections that send no request for this long, 1s to 1d (default: 30s)",
    )
    run.add_argument(
        "--max-tls-handshakes",
        type=_count,
        default=defaults.max_tls_handshakes,
        metavar="N",
        help="TLS handshakes in progress at once; more connections wait in the listen queue "
        "(0: no limit; default: %(default)s)",
    )
    run.add_argument(
        "--max-session-setups",
        type=_count,
        default=defaults.max_session_setups,
        metavar="N",
        help="agent sessions being set up at once; more get 503 with a Retry-After "
        "(0: no limit; default: %(default)s)",
    )
    run.add_argument(
        "--kube-upstream",
        type=Path,
        metavar="KUBECONFIG",
        help="let nodes reach this cluster's API server through their tunnels, impersonated as "
        "system:node:NAME (the kubeconfig's user needs the `impersonate` verb); checked before "
        "start (exit 2 if unusable)",
    )
    run.add_argument(
        "--egress-uds",
        type=Path,
        metavar="PATH",
        help="serve kube-apiserver's egress selector (HTTP CONNECT to edge nodes' kubelets) on "
        "this Unix socket, mode 0600 (docs/egress.md)",
    )
    run.add_argument(
        "--egress-listen",
        type=parse_listen,
        metavar="HOST:PORT",
        help="serve the egress selector over TCP with mutual TLS too; needs --egress-client-ca",
    )
    run.add_argument(
        "--egress-client-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA file: --egress-listen requires a client certificate signed by it",
    )
    run.add_argument(
        "--egress-max-per-node",
        type=arguments.whole(low=1, high=100_000),
        default=defaults.egress.max_per_node,
        metavar="N",
        help="CONNECTs relayed at once to one edge node; more get 429 (default: %(default)s)",
    )
    run.add_argument(
        "--egress-idle-timeout",
        type=arguments.duration(low=0.0, high=7 * DAY),
        default=defaults.egress.idle_timeout,
        metavar="DURATION",
        help="close a relayed connection after this long without a byte either way; 0: never"
        " (default: 4h, the kubelet's own streaming idle timeout)",
    )
    run.add_argument(
        "--sso-config",
        type=sso_config_file,
        metavar="FILE",
        help="offer OpenID Connect sign-in (console and `login --sso`) as this YAML file says"
        " (docs/sso.md); checked before start (exit 2 if unusable)",
    )
    run.add_argument(
        "--autonomy",
        action="store_true",
        help="keep pods of nodes labelled edgefleet.io/autonomy=true through their outage: "
        "serve the webhook /webhooks/autonomy and patch live pods (needs --kube-upstream; "
        "see `tunnel-server autonomy-webhook`)",
    )
    run.add_argument(
        "--access-log",
        action="store_true",
        help="log every HTTP request (off by default: at scale it costs about 8%% of CPU; "
        "tunnel sessions, joins, renewals and refusals are always logged)",
    )
    init = sub.add_parser(
        "init",
        help="create the CA, store and admin token without serving",
        description="Prepare the data dir and print the CA hash; `run` would do the same first.",
    )
    for command in (run, init):
        _data_dir_option(command)
        command.add_argument(
            "--public-name",
            type=_public_name,
            default=defaults.public_name,
            help="DNS name or IP agents use to reach this server (default: %(default)s)",
        )
    _data_dir_option(
        sub.add_parser(
            "ca-hash",
            help="print the CA hash agents pin (sha256:<hex>)",
            description="Print sha256:<hex> of the CA's public key, for `edge-agent join`.",
        )
    )
    _add_token_commands(sub)
    _add_node_commands(sub)
    _add_autonomy_command(sub)
    _add_user_commands(sub)
    _add_kubeconfig_command(sub)
    return parser


def _user_name(value: str) -> str:
    try:
        return users.validate_user_name(value)
    except users.UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _clusters(value: str) -> tuple[str, ...]:
    try:
        return users.parse_clusters(value)
    except users.UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lifetime(value: str) -> float:
    try:
        return users.parse_ttl(value)
    except users.UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_user_commands(sub: argparse._SubParsersAction[arguments.Parser]) -> None:
    group = sub.add_parser(
        "users",
        help="cloud users of the API, the console and kubectl: create, list, revoke",
        description="Users have a role (admin: everything, including users and tokens;"
        " operator: read and write within its clusters; viewer: read only) and bearer tokens"
        " (stored hashed). docs/security.md has the table of who may do what.",
    )
    _data_dir_option(group)
    users_sub = group.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    create = users_sub.add_parser(
        "create",
        help="create a user and print its first token (shown once)",
        description="Create a user and print a bearer token for it on stdout, once: only its"
        " hash is kept. `tunnel-server kubeconfig --user NAME` makes more tokens of it.",
    )
    _data_dir_option(create)
    create.add_argument("name", type=_user_name, help="1-63 of a-z 0-9 - . (not 'admin')")
    create.add_argument("--role", required=True, choices=users.ROLES, help="what it may do")
    create.add_argument(
        "--clusters",
        type=_clusters,
        metavar="C1,C2",
        help="the registered clusters it may reach (default: every cluster); operator and"
        " viewer only",
    )
    create.add_argument(
        "--ttl",
        type=_lifetime,
        default=users.DEFAULT_USER_TTL,
        metavar="DURATION",
        help="lifetime of the user and its tokens: 90d, 12h, 30m or seconds; 1 minute to"
        " 730 days (default: 90d)",
    )
    listing = users_sub.add_parser(
        "list",
        help="list users (never their tokens)",
        description="List users: name, role, clusters, created, expires, live token count.",
    )
    _data_dir_option(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = users_sub.add_parser(
        "revoke",
        help="revoke a user: its tokens and console sessions stop working at once",
        description="Revoke a user; a running server refuses its tokens and sessions at once"
        " and ends its live streams. `users create NAME` makes a new user of that name.",
    )
    _data_dir_option(revoke)
    revoke.add_argument("name", help="the user's name")


def _add_kubeconfig_command(sub: argparse._SubParsersAction[arguments.Parser]) -> None:
    command = sub.add_parser(
        "kubeconfig",
        help="print a kubeconfig for a user: one context per registered cluster",
        description="Issue a new token for the user and print a kubeconfig (the server's CA"
        " embedded) with one cluster and context per registered cluster in the user's scope,"
        " each at SERVER/clusters/NAME. The token is in the output: keep the file private.",
    )
    _data_dir_option(command)
    command.add_argument("--user", required=True, type=_user_name, help="the user's name")
    which = command.add_mutually_exclusive_group()
    which.add_argument("--cluster", type=_name, metavar="NAME", help="only this cluster")
    which.add_argument(
        "--all-clusters",
        action="store_true",
        help="every registered cluster in the user's scope (the default)",
    )
    command.add_argument(
        "--server",
        type=_server_url,
        metavar="URL",
        help="https://HOST[:PORT] kubectl reaches this server at (default: the URL `run`"
        " derived from --public-name and --listen)",
    )
    command.add_argument(
        "--ttl",
        type=_lifetime,
        default=30 * users.DAY,
        metavar="DURATION",
        help="lifetime of the token in it: 30d, 12h, 30m or seconds; never past the user's"
        " expiry (default: 30d)",
    )


def _add_autonomy_command(sub: argparse._SubParsersAction[arguments.Parser]) -> None:
    webhook = sub.add_parser(
        "autonomy-webhook",
        help="print the MutatingWebhookConfiguration of `run --autonomy`",
        description="Print YAML for `kubectl apply -f -` in the cloud cluster: pod creations go"
        " to this server's /webhooks/autonomy, verified with its CA (failurePolicy Ignore).",
    )
    _data_dir_option(webhook)
    webhook.add_argument(
        "--server",
        type=_server_url,
        metavar="URL",
        help="https://HOST[:PORT] kube-apiserver reaches this server at (default: the URL `run`"
        " derived from --public-name and --listen); the host must be in the serving"
        " certificate",
    )


def _add_token_commands(sub: argparse._SubParsersAction[arguments.Parser]) -> None:
    token = sub.add_parser(
        "token",
        help="bootstrap tokens for joining nodes and clusters",
        description="Create or list the single-use bootstrap tokens `edge-agent join` needs.",
    )
    _data_dir_option(token)
    token_sub = token.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    create = token_sub.add_parser(
        "create",
        help="create a single-use bootstrap token",
        description="Print a single-use bootstrap token bound to one node or cluster name; the"
        " matching `edge-agent join` line goes to stderr.",
    )
    _data_dir_option(create)
    create.add_argument(
        "--kind",
        choices=["node", "cluster"],
        default="node",
        help="a node (one machine) or a cluster (its in-cluster agent) (default: node)",
    )
    create.add_argument(
        "--name",
        required=True,
        type=_name,
        help="the node or cluster name it may join as (1-63 of a-z 0-9 - .); refused while a"
        " node of that name is joined or waits for approval, unless --replace",
    )
    create.add_argument(
        "--replace",
        action="store_true",
        help="re-join a reinstalled or replaced machine: revoke the existing node of that name"
        " now (its session is cut off), then create the token",
    )
    create.add_argument(
        "--ttl",
        type=_token_ttl,
        default="1h",
        metavar="DURATION",
        help="lifetime, e.g. 15m, 1h, 2d; at most 30d (default: 1h)",
    )
    create.add_argument(
        "--require-approval",
        action="store_true",
        help="the joiner waits until `tunnel-server nodes approve NAME`",
    )
    create.add_argument(
        "--server",
        type=_server_url,
        metavar="URL",
        help="https://HOST[:PORT] agents use, for the printed join line (default: the URL"
        " `run` derived from --public-name and --listen)",
    )
    create.add_argument(
        "--manifest",
        action="store_true",
        help="--kind cluster only: print the cluster agent's install manifest (namespace, RBAC,"
        " the join Secret, the Deployment) with the token, server URL and CA hash filled in,"
        " for `kubectl apply -f -` in the member cluster, instead of the bare token",
    )
    create.add_argument(
        "--image",
        metavar="IMAGE",
        help="with --manifest: the EdgeFleet image as the member cluster pulls it (default:"
        " localhost/edgefleet:VERSION, what packaging/image/build tags)",
    )
    _data_dir_option(
        token_sub.add_parser(
            "list",
            help="list tokens (never their secrets)",
            description="List bootstrap tokens: id, kind, name, status, expiry, approval.",
        )
    )


def _add_node_commands(sub: argparse._SubParsersAction[arguments.Parser]) -> None:
    nodes = sub.add_parser(
        "nodes",
        help="list, approve or revoke nodes and clusters",
        description="Without a sub-command: list nodes with state, last seen and certificate"
        " expiry.",
    )
    _data_dir_option(nodes)
    nodes.add_argument("--json", action="store_true", help="machine-readable output")
    nodes_sub = nodes.add_subparsers(dest="nodes_command", metavar="COMMAND")
    for verb, text in (
        ("approve", "let a pending node or cluster fetch its certificate"),
        ("revoke", "cut a node off at once; it must join again with a new token"),
    ):
        command = nodes_sub.add_parser(verb, help=text, description=text)
        command.add_argument("name")
        _data_dir_option(command)


# ---------------------------------------------------------------- commands


def _open(data_dir: Path) -> tuple[CertificateAuthority, SqliteStore]:
    authority = _load_ca(data_dir)
    if not (data_dir / STORE_FILE).exists():
        raise CliError(f"data dir {data_dir} has a CA but no store: run `tunnel-server run` once")
    try:
        return authority, SqliteStore.open(data_dir)
    except sqlite3.OperationalError as exc:
        raise CliError(
            f"cannot open {data_dir / STORE_FILE} ({exc}): run as the server's user"
        ) from None


def _load_ca(data_dir: Path) -> CertificateAuthority:
    """The CA of the data dir; MissingCAError says how to make one, a broken one says so."""
    try:
        return CertificateAuthority.load(data_dir)
    except ValueError as exc:
        raise CliError(
            f"the CA in {data_dir} (ca.crt, ca.key) cannot be read ({exc}): restore it from a"
            " backup"
        ) from None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def cmd_token_create(args: argparse.Namespace, data_dir: Path) -> int:
    if args.manifest and args.kind != "cluster":
        raise UsageError("--manifest installs a cluster agent: give --kind cluster")
    if args.image is not None and not args.manifest:
        raise UsageError("--image goes with --manifest")
    authority, store = _open(data_dir)
    with contextlib.closing(store):
        server = args.server or store.get_meta("public_url")
        if args.manifest:
            _check_manifest(args, server=server, ca_hash=authority.ca_hash())
        server = server or "https://SERVER:8443"
        try:
            replaced = tokens.free_name(store, args.name, replace=args.replace)
        except tokens.NameInUseError as exc:
            raise CliError(str(exc)) from None
        if replaced is not None:
            print(  # noqa: T201 - what --replace did, off stdout (the token only goes there)
                f"# revoked {replaced.kind} {args.name}: its session is cut off",
                file=sys.stderr,
            )
        spec = tokens.TokenSpec(
            kind=args.kind, name=args.name, ttl=args.ttl, require_approval=args.require_approval
        )
        token = tokens.create_token(store, spec, now=time.time())
    if args.manifest:
        return _print_manifest(args, token=str(token), server=server, ca_hash=authority.ca_hash())
    print(token)  # noqa: T201 - the command's output
    print(  # noqa: T201 - the operator's next step, kept off stdout so scripts get the token only
        f"# on {args.name}, within {args.ttl:g}s:\n"
        f"edge-agent join --server {server} --token {token}"
        f" --ca-hash {authority.ca_hash()} --name {args.name}",
        file=sys.stderr,
    )
    return 0


def _check_manifest(args: argparse.Namespace, *, server: str | None, ca_hash: str) -> None:
    """Refuse what cannot make a working manifest before a token is made or a node revoked."""
    from tunnel_server.fleet import manifest  # noqa: PLC0415 - only --manifest needs it

    if not server:
        raise UsageError(
            "the server's URL is not known yet (`tunnel-server run` records it): give --server"
            " https://HOST[:PORT] as the member cluster reaches this server"
        )
    try:
        manifest.check(server=server, ca_hash=ca_hash, image=args.image or manifest.DEFAULT_IMAGE)
    except manifest.ManifestError as exc:
        raise UsageError(str(exc)) from None


def _print_manifest(args: argparse.Namespace, *, token: str, server: str, ca_hash: str) -> int:
    from tunnel_server.fleet import manifest  # noqa: PLC0415 - only --manifest needs YAML

    join = manifest.ClusterJoin(
        name=args.name,
        server=server,
        ca_hash=ca_hash,
        token=token,
        image=args.image or manifest.DEFAULT_IMAGE,
    )
    try:
        text = manifest.render(join)
    except manifest.ManifestError as exc:
        raise CliError(f"{exc} (the token made is unused and expires in {args.ttl:g}s)") from None
    print(  # noqa: T201 - the command's output: a YAML stream that names what it is for
        f"# EdgeFleet cluster agent for cluster {args.name}, joining {server}.\n"
        f"# Holds a single-use join token valid for {args.ttl:g}s: apply it in that cluster"
        " now, with\n#   kubectl apply -f -\n# and keep it secret until then.\n" + text,
        end="",
    )
    print(  # noqa: T201 - the operator's next step, off stdout (stdout is the manifest)
        f"# in cluster {args.name}, within {args.ttl:g}s: pipe this into `kubectl apply -f -`;"
        f" then `tunnel-server nodes` shows {args.name} once its agent joined",
        file=sys.stderr,
    )
    if _is_loopback(urlsplit(server).hostname or ""):
        print(  # noqa: T201 - a warning, off stdout
            f"# warning: the agent will dial {server}, a loopback address: a pod reaches that"
            " only if the cluster runs on this machine; give --server with the URL the"
            " cluster's pods reach this server at",
            file=sys.stderr,
        )
    return 0


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_token_list(data_dir: Path) -> int:
    _, store = _open(data_dir)
    now = time.time()
    with contextlib.closing(store):
        rows = [
            [
                t.id,
                t.kind,
                t.name,
                "used" if t.used_at else ("expired" if t.expires_at <= now else "valid"),
                _iso(t.expires_at) or "-",
                "yes" if t.require_approval else "no",
            ]
            for t in store.list_tokens()
        ]
    _table(["ID", "KIND", "NAME", "STATUS", "EXPIRES", "APPROVAL"], rows)
    return 0


def _node_json(node: NodeRecord) -> dict[str, Any]:
    return {
        "name": node.name,
        "kind": node.kind,
        "state": node.state,
        "created_at": _iso(node.created_at),
        "last_seen": _iso(node.last_seen),
        "cert_serial": node.cert_serial,
        "cert_expires": _iso(node.cert_not_after),
        "agent_version": node.agent_version,
    }


def cmd_nodes(args: argparse.Namespace, data_dir: Path) -> int:
    _, store = _open(data_dir)
    with contextlib.closing(store):
        if args.nodes_command in ("approve", "revoke"):
            return _set_state(store, args.name, args.nodes_command)
        nodes = [_node_json(n) for n in store.list_nodes()]
    if args.json:
        print(json.dumps(nodes, indent=2))  # noqa: T201 - the command's output
        return 0
    columns = ["name", "kind", "state", "last_seen", "cert_expires"]
    _table(
        ["NAME", "KIND", "STATE", "LAST SEEN", "CERT EXPIRES"],
        [[n[c] or "-" for c in columns] for n in nodes],
    )
    return 0


def _set_state(store: SqliteStore, name: str, verb: str) -> int:
    state: NodeState = "approved" if verb == "approve" else "revoked"
    node = store.get_node(name)
    if node is None:
        raise CliError(f"no node named {name!r}: see `tunnel-server nodes`")
    if verb == "approve" and node.state == "revoked":
        raise CliError(f"{name!r} is revoked: it must join again with a new token")
    try:
        store.set_node_state(name, state)
    except NotFoundError as exc:
        raise CliError(str(exc)) from None
    log.info("node %s", state, extra={"kv": {"name": name, "was": node.state}})
    print(f"{node.kind} {name} {state}")  # noqa: T201 - the command's output
    return 0


def cmd_users(args: argparse.Namespace, data_dir: Path) -> int:
    _, store = _open(data_dir)
    now = time.time()
    with contextlib.closing(store):
        try:
            if args.users_command == "create":
                user, token = users.create_user(
                    store,
                    args.name,
                    role=args.role,
                    clusters=args.clusters,
                    ttl=args.ttl,
                    now=now,
                )
                print(token)  # noqa: T201 - the command's output, shown this once
                print(  # noqa: T201 - the next step, off stdout so scripts get the token only
                    f"# {user.role} {user.name}, clusters:"
                    f" {','.join(user.clusters) if user.clusters else 'all'}, expires"
                    f" {_iso(user.expires_at)}. Send it as 'Authorization: Bearer <token>', sign"
                    f" in to the console with it, or `tunnel-server kubeconfig --user {user.name}`",
                    file=sys.stderr,
                )
                return 0
            if args.users_command == "revoke":
                user = users.revoke_user(store, args.name, now=now)
                print(f"user {user.name} revoked")  # noqa: T201 - the command's output
                return 0
        except users.UserError as exc:
            raise CliError(str(exc)) from None
        rows = [_user_json(u, now) for u in store.list_users(now=now)]
    if args.json:
        print(json.dumps(rows, indent=2))  # noqa: T201 - the command's output
        return 0
    _table(
        ["NAME", "ROLE", "CLUSTERS", "CREATED", "EXPIRES", "STATE", "TOKENS"],
        [
            [
                r["name"],
                r["role"],
                ",".join(r["clusters"]) if r["clusters"] is not None else "*",
                r["created_at"],
                r["expires_at"],
                r["state"],
                str(r["tokens"]),
            ]
            for r in rows
        ],
    )
    return 0


def _user_json(user: UserRecord, now: float) -> dict[str, Any]:
    state = "revoked" if user.revoked_at else ("expired" if user.expires_at <= now else "active")
    return {
        "name": user.name,
        "role": user.role,
        "clusters": None if user.clusters is None else list(user.clusters),
        "created_at": _iso(user.created_at),
        "expires_at": _iso(user.expires_at),
        "revoked_at": _iso(user.revoked_at),
        "state": state,
        "tokens": user.tokens,
    }


def cmd_kubeconfig(args: argparse.Namespace, data_dir: Path) -> int:
    import base64  # noqa: PLC0415 - only this command needs them

    import yaml  # noqa: PLC0415 - see above

    authority, store = _open(data_dir)
    now = time.time()
    with contextlib.closing(store):
        try:
            user = users.active_user(store, args.user, now=now)
        except users.UserError as exc:
            raise CliError(str(exc)) from None
        registered = [
            n.name for n in store.list_nodes() if n.kind == "cluster" and n.state != "revoked"
        ]
        scope = [n for n in registered if user.clusters is None or n in user.clusters]
        if args.cluster is not None:
            if user.clusters is not None and args.cluster not in user.clusters:
                raise CliError(
                    f"cluster {args.cluster!r} is outside user {user.name!r}'s scope"
                    f" ({', '.join(user.clusters)}): make a user whose --clusters name it"
                )
            if args.cluster not in registered:
                raise CliError(
                    f"no registered cluster named {args.cluster!r}: see `tunnel-server nodes`"
                    f" (join it with `tunnel-server token create --kind cluster --name"
                    f" {args.cluster}`)"
                )
            scope = [args.cluster]
        if not scope:
            raise CliError(
                f"no registered cluster is in user {user.name!r}'s scope yet: join one with"
                " `tunnel-server token create --kind cluster --name NAME`"
            )
        server = args.server or store.get_meta("public_url") or "https://SERVER:8443"
        try:
            token = users.issue_user_token(store, user.name, ttl=args.ttl, now=now)
        except users.UserError as exc:
            raise CliError(str(exc)) from None
    ca_data = base64.b64encode(authority.ca_pem()).decode()
    document = _kubeconfig(user.name, token, scope, server, ca_data)
    print(yaml.safe_dump(document, sort_keys=False), end="")  # noqa: T201 - the command's output
    print(  # noqa: T201 - what it holds, off stdout
        f"# kubeconfig of {user.role} {user.name}: {len(scope)} context(s); it holds a new"
        f" token (expires {_iso(min(now + args.ttl, user.expires_at))}): keep the file private",
        file=sys.stderr,
    )
    return 0


def _kubeconfig(
    user: str, token: str, clusters: list[str], server: str, ca_data: str
) -> dict[str, Any]:
    entry = f"edgefleet-{user}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": f"{server}/clusters/{name}",
                    "certificate-authority-data": ca_data,
                },
            }
            for name in clusters
        ],
        "users": [{"name": entry, "user": {"token": token}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": entry}} for name in clusters
        ],
        "current-context": clusters[0],
    }


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        line = "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        print(line.rstrip())  # noqa: T201 - the command's output


async def serve(
    settings: ServerSettings,
    identity: ServerIdentity,
    *,
    kube_upstream: Path | None = None,
    access_log: bool = False,
) -> None:
    # Imported here, not at the top: aiohttp and prometheus take half a second to import, and
    # only `run` needs them; `token create` and `nodes` stay quick for operators and scripts.
    from aiohttp import web  # noqa: PLC0415 - see above

    from tunnel_server.app import create_app  # noqa: PLC0415 - see above
    from tunnel_server.app_keys import REGISTRY_KEY  # noqa: PLC0415 - see above
    from tunnel_server.identity.tls import HandshakeGate, server_ssl_context  # noqa: PLC0415 - see above

    app = create_app(settings, identity=identity)
    if kube_upstream is not None:
        from tunnel_server import kube  # noqa: PLC0415 - see above

        kube.setup(app, kubeconfig=kube_upstream)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_grace,
        keepalive_timeout=settings.idle_timeout,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
    )
    await runner.setup()
    ssl_context = server_ssl_context(identity.authority)
    # asyncio gives every TLS connection a fixed 256 KiB read buffer; with thousands of idle
    # agent sessions that is most of the memory (see tls_buffer.py and docs/benchmarks.md).
    if tls_buffer.install(small=settings.tls_idle_read_buffer, large=settings.tls_read_buffer):
        tls_buffer.register_metrics(app[REGISTRY_KEY])
    gate: HandshakeGate | None = None
    if settings.max_tls_handshakes and runner.server is not None:
        gate = HandshakeGate(
            protocol_factory=runner.server,
            ssl_context=ssl_context,
            limit=settings.max_tls_handshakes,
            timeout=settings.tls_handshake_timeout,
            registry=app[REGISTRY_KEY],
        )
        with _listen_errors(settings):
            gate.bind(settings.host, settings.port, backlog=settings.listen_backlog)
        addresses = gate.addresses
    else:  # no handshake limit: asyncio's own listener
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            ssl_context=ssl_context,
            backlog=settings.listen_backlog,
        )
        with _listen_errors(settings):
            await site.start()
        addresses = runner.addresses
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for address in addresses:
        log.info("listening", extra={"kv": {"address": f"https://{address[0]}:{address[1]}"}})
    log.info("agents pin the CA with", extra={"kv": {"ca_hash": identity.authority.ca_hash()}})
    try:
        async with asyncio.TaskGroup() as group:
            if gate is not None:
                group.create_task(gate.serve(), name="tls.listener")
            systemd.notify("READY=1")
            await stop.wait()
            if gate is not None:
                gate.close()
    finally:
        systemd.notify("STOPPING=1")
        log.info("stopping")
        await runner.cleanup()


_LISTEN_HINTS = {
    errno.EADDRINUSE: "another process listens there (another tunnel-server?): stop it or"
    " choose another --listen",
    errno.EACCES: "ports below 1024 need privileges: choose another --listen",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address: check --listen",
}


@contextlib.contextmanager
def _listen_errors(settings: ServerSettings) -> Iterator[None]:
    """A listen address we cannot bind as one line with the likely fix, not a traceback."""
    try:
        yield
    except OSError as exc:
        hint = _LISTEN_HINTS.get(exc.errno or 0, "check --listen")
        if isinstance(exc, socket.gaierror):  # its errno is no errno (-2 and the like)
            reason = f"cannot resolve the host name ({exc.strerror})"
        else:  # asyncio's own message repeats the address; the errno's text is enough
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise CliError(
            f"cannot listen on {settings.host}:{settings.port}: {reason}; {hint}"
        ) from None


def _check_data_dir(data_dir: Path) -> None:
    # The nearest part of the path that exists must be a folder, or mkdir fails later.
    existing = next((p for p in (data_dir, *data_dir.parents) if p.exists()), data_dir)
    if existing.exists() and not existing.is_dir():
        raise UsageError(
            f"--data-dir {data_dir} is not a folder: give the server's data folder"
            f" (default: {ServerSettings().data_dir})"
        )


def _check_kube_upstream(kubeconfig: Path) -> None:
    """Read the kubeconfig as ``run`` will, so a bad one stops us before anything starts."""
    import yaml  # noqa: PLC0415 - see serve(): only `run --kube-upstream` needs these
    from kubernetes.config import ConfigException  # noqa: PLC0415 - see above

    from tunnel_server import kube  # noqa: PLC0415 - see above

    try:
        kube.load_upstream(kubeconfig)
    except (
        ConfigException,  # missing file, empty, no current-context, missing CA file
        yaml.YAMLError,  # not YAML
        OSError,  # unreadable, a folder, a CA or key file OpenSSL refuses
        ValueError,  # not UTF-8
        TypeError,  # YAML, but not a mapping
        KeyError,
        AttributeError,
    ) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"--kube-upstream {kubeconfig} is unusable: {reason}") from None


def _check_fleet_flags(args: argparse.Namespace) -> None:
    """Flags of the egress selector and autonomy that cannot work, before anything starts."""
    if args.egress_listen is not None and args.egress_client_ca is None:
        raise UsageError(
            "--egress-listen needs --egress-client-ca (the CA of kube-apiserver's"
            " client certificate)"
        )
    if args.egress_client_ca is not None:
        try:
            ssl.create_default_context(cafile=str(args.egress_client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"--egress-client-ca {args.egress_client_ca} is unusable: {exc}"
            ) from None
    if args.egress_uds is not None:
        from tunnel_server.fleet import egress  # noqa: PLC0415 - see serve()

        if not args.egress_uds.parent.is_dir():
            raise UsageError(
                f"--egress-uds {args.egress_uds}: {args.egress_uds.parent} is no folder"
            )
        if len(os.fsencode(args.egress_uds)) > egress.MAX_SOCKET_PATH:
            raise UsageError(
                f"--egress-uds {args.egress_uds} is longer than a Unix socket path may be"
                f" ({egress.MAX_SOCKET_PATH} bytes): choose a shorter path"
            )
        problem = egress.socket_path_problem(args.egress_uds)
        if problem is not None:
            raise UsageError(problem)
    if args.autonomy and args.kube_upstream is None:
        raise UsageError("--autonomy needs --kube-upstream (the cloud cluster's kubeconfig)")


def cmd_autonomy_webhook(args: argparse.Namespace, data_dir: Path) -> int:
    import yaml  # noqa: PLC0415 - see serve()

    from tunnel_server.fleet import autonomy_rules  # noqa: PLC0415 - see serve()

    authority, store = _open(data_dir)
    with contextlib.closing(store):
        server = args.server or store.get_meta("public_url")
    if not server:
        raise CliError("no server URL known: give --server https://HOST:PORT")
    document = autonomy_rules.webhook_configuration(
        url=server + autonomy_rules.WEBHOOK_PATH,
        ca_pem=authority.ca_pem(),
        timeout_seconds=AutonomySettings().webhook_timeout,
    )
    print(yaml.safe_dump(document, sort_keys=False), end="")  # noqa: T201 - the output
    return 0


_COMMANDS = {
    "users": cmd_users,
    "kubeconfig": cmd_kubeconfig,
    "autonomy-webhook": cmd_autonomy_webhook,
}


def _dispatch(args: argparse.Namespace) -> int:
    data_dir: Path = getattr(args, "data_dir", ServerSettings().data_dir)
    _check_data_dir(data_dir)
    if getattr(args, "kube_upstream", None) is not None:
        _check_kube_upstream(args.kube_upstream)
    if args.command == "run":
        _check_fleet_flags(args)
    if args.command in ("run", "init"):
        host, port = getattr(args, "listen", (ServerSettings().host, ServerSettings().port))
        lifetime = getattr(args, "client_cert_lifetime", ServerSettings().pki.client_lifetime)
        settings = ServerSettings(
            host=host,
            port=port,
            data_dir=data_dir,
            public_name=args.public_name,
            pki=PkiSettings(client_lifetime=lifetime),
            idle_timeout=getattr(args, "idle_timeout", ServerSettings().idle_timeout),
            max_tls_handshakes=getattr(
                args, "max_tls_handshakes", ServerSettings().max_tls_handshakes
            ),
            max_session_setups=getattr(
                args, "max_session_setups", ServerSettings().max_session_setups
            ),
            egress=EgressSettings(
                uds_path=getattr(args, "egress_uds", None),
                listen=getattr(args, "egress_listen", None),
                client_ca=getattr(args, "egress_client_ca", None),
                max_per_node=getattr(args, "egress_max_per_node", EgressSettings().max_per_node),
                idle_timeout=getattr(args, "egress_idle_timeout", EgressSettings().idle_timeout),
            ),
            autonomy=AutonomySettings(enabled=getattr(args, "autonomy", False)),
            sso_config=getattr(args, "sso_config", None),
        )
        from tunnel_server.app import bootstrap  # noqa: PLC0415 - see serve()

        try:
            identity = bootstrap(settings)
        except ValueError as exc:  # a PEM file that does not parse
            raise CliError(
                f"a certificate or key in {data_dir} cannot be read ({exc}): restore ca.crt and"
                " ca.key from a backup; a broken server.crt or server.key may be deleted, `run`"
                " makes new ones"
            ) from None
        try:
            if args.command == "run":
                with contextlib.suppress(KeyboardInterrupt):
                    asyncio.run(
                        serve(
                            settings,
                            identity,
                            kube_upstream=args.kube_upstream,
                            access_log=args.access_log,
                        )
                    )
            else:
                print(identity.authority.ca_hash())  # noqa: T201 - the command's output
        finally:
            identity.store.close()
        return 0
    if args.command == "ca-hash":
        print(_load_ca(data_dir).ca_hash())  # noqa: T201 - the output
        return 0
    if args.command == "token":
        if args.subcommand == "create":
            return cmd_token_create(args, data_dir)
        return cmd_token_list(data_dir)
    if args.command in _COMMANDS:
        return _COMMANDS[args.command](args, data_dir)
    return cmd_nodes(args, data_dir)


def _fail(message: str, code: int) -> int:
    print(f"tunnel-server: error: {message}", file=sys.stderr)  # noqa: T201 - the CLI's answer
    return code


def main(argv: list[str] | None = None) -> int:
    """The command line; exit codes as in ``EXIT_CODES`` (and docs/tunnel.md)."""
    parser = build_parser()
    given = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(arguments.join_negative_values(parser, given))
    logs.setup(args.log_level)
    try:
        return _dispatch(args)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except (MissingCAError, StoreError, ValueError) as exc:
        return _fail(str(exc), 1)
    except sqlite3.DatabaseError as exc:
        return _fail(f"the store in {args.data_dir} is unusable ({exc}): restore a backup", 1)
    except OSError as exc:  # a file we may not read or write, a full or read-only disk
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}: run as the server's user, check the disk", 1)


if __name__ == "__main__":
    sys.exit(main())
