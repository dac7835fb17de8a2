"""``tunnel-server``: the cloud side of EdgeFleet.

``run``, ``init``, ``ca-hash``, ``ca`` (rotation) and ``autonomy-webhook`` work on the data
dir. Every command
that manages things (tokens, nodes, clusters, users, devices, models, the audit log) is a
client of the running server's API (``tunnel_server.client``): with ``--server`` and a token,
the login config, or ``--data-dir`` on the server machine (docs/cli.md).
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
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from daemon_support import arguments, event_loop, logs, systemd
from daemon_support.schema import SchemaError
from tunnel_server import __version__, migrate_cli
from tunnel_server.client import commands, device_commands, fleet_commands, fleet_objects
from tunnel_server.identity.pki import CertificateAuthority, MissingCAError, spki_hash
from tunnel_server.identity.sso_mapping import sso_config_file
from tunnel_server.kubestore.settings import KubeStoreSettings
from tunnel_server.replicas.rules import valid_replica_name
from tunnel_server.settings import (
    DAY,
    AutonomySettings,
    EgressSettings,
    GatewaySettings,
    PkiSettings,
    ReplicaSettings,
    ServerSettings,
)
from tunnel_server.store import STORE_FILE, SqliteStore, StoreError
from tunnel_server.tunnel import tls_buffer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tunnel_server.app import ServerIdentity
    from tunnel_server.fleet.gateway import Router

log = logging.getLogger("tunnel_server.cli")

DESCRIPTION = """\
EdgeFleet tunnel server: the cloud control point that edge agents dial into.

It serves the tunnel endpoint for agents, the REST API, the kube proxy into registered
clusters and nodes, the web console, and /healthz, /readyz and /metrics.

Managing it from anywhere (like kubectl; docs/cli.md):
  tunnel-server login --server https://HOST:8443 --ca-hash sha256:... --token T
  tunnel-server token create --kind node --name edge-1     # prints the token
  tunnel-server nodes list
On the server machine, --data-dir DIR instead of a login takes the running server's URL, CA
and admin token from its data folder.

Joining a node:
  edge-agent join --server https://HOST:8443 --token T --ca-hash $(tunnel-server ca-hash)

Cloud users (roles admin, operator, viewer) and kubectl:
  tunnel-server users create alice --role operator --clusters prod-1   # prints a token
  tunnel-server kubeconfig --user alice > alice.kubeconfig
"""
EXIT_CODES = """\
exit codes:
  0  done
  1  the command failed; its one-line message says why and what to do (no CA or store in
     the data dir, the listen address in use, the server answered 5xx, ...)
  2  usage or configuration error: a bad flag or value, a --data-dir that is not a folder,
     an unusable --kube-upstream kubeconfig, no server or token configured
  3  not authenticated: the token is wrong, expired or revoked (401)
  4  forbidden: the token's role or cluster scope does not allow it (403)
  5  not found (404)
  6  conflict: the object's state or version does not allow it (409, 412)
  7  the server is unreachable, or is not the one pinned (TLS, CA hash)
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


def _add_store_options(run: argparse.ArgumentParser) -> None:
    store = KubeStoreSettings()
    run.add_argument(
        "--store",
        choices=("sqlite", "kubernetes"),
        default="sqlite",
        help="where the state lives: a SQLite file in the data dir (one machine), or custom"
        " resources in the Kubernetes API, shared by replicas (docs/ha.md) (default: %(default)s)",
    )
    run.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="FILE",
        help="with --store kubernetes: the kubeconfig to use (default: in-cluster, the pod's"
        " service account)",
    )
    run.add_argument(
        "--namespace",
        type=_namespace,
        default=store.namespace,
        help="with --store kubernetes: the namespace of the store's objects (default: %(default)s)",
    )
    run.add_argument(
        "--replica-name",
        type=_replica_name,
        metavar="NAME",
        help="with --store kubernetes: this replica's name, unique per replica (its Lease, the"
        " holder of its agents; default: $POD_NAME, else HOSTNAME-PORT)",
    )
    run.add_argument(
        "--peer-address",
        type=_peer_address,
        metavar="HOST:PORT",
        help="with --store kubernetes: where the other replicas reach this one (advertised in"
        " its Lease; default: $POD_IP, else the hostname, with the --listen port)",
    )


def _replica_name(value: str) -> str:
    if not valid_replica_name(value):
        msg = f"{value!r} is not a replica name (a DNS subdomain of at most 235 characters)"
        raise argparse.ArgumentTypeError(msg)
    return value


def _peer_address(value: str) -> str:
    host, _port = parse_listen(value)
    if host == "0.0.0.0":  # noqa: S104 - refused, not bound: peers need an address to dial
        raise argparse.ArgumentTypeError(f"expected the HOST peers dial, got {value!r}")
    return value


def _namespace(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a namespace name (a DNS label)")
    return value


def _kube_store(args: argparse.Namespace) -> KubeStoreSettings | None:
    if getattr(args, "store", "sqlite") != "kubernetes":
        for flag in ("kubeconfig", "replica_name", "peer_address"):
            if getattr(args, flag, None) is not None:
                option = "--" + flag.replace("_", "-")
                raise UsageError(f"{option} is for --store kubernetes")
        return None
    return KubeStoreSettings(namespace=args.namespace, kubeconfig=args.kubeconfig)


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
    logs.add_log_format(parser)
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
    _add_gateway_options(run, defaults.gateway)
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
    _add_store_options(run)
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
    _add_ca_commands(sub)
    _add_backup_commands(sub)
    migrate_cli.add_migrate_command(sub, namespace_type=_namespace)
    commands.add_session_commands(sub)
    fleet_commands.add_token_commands(sub)
    fleet_commands.add_node_commands(sub)
    fleet_commands.add_user_commands(sub)
    fleet_objects.add_fleet_object_commands(sub)
    device_commands.add_device_commands(sub)
    device_commands.add_twin_commands(sub)
    device_commands.add_model_commands(sub)
    device_commands.add_audit_commands(sub)
    _add_autonomy_command(sub)
    return parser


def _add_gateway_options(run: argparse.ArgumentParser, defaults: GatewaySettings) -> None:
    run.add_argument(
        "--gateway-listen",
        type=parse_listen,
        metavar="HOST:PORT",
        help="serve the multi-cluster gateway on this address: HTTP requests forwarded through "
        "a cluster's tunnel to a Service (docs/gateway-data-path.md); off by default",
    )
    run.add_argument(
        "--gateway-cert-file",
        type=Path,
        metavar="FILE",
        help="PEM certificate chain of the gateway listener: with --gateway-key-file it "
        "serves HTTPS, without both plain HTTP",
    )
    run.add_argument(
        "--gateway-key-file", type=Path, metavar="FILE", help="PEM private key of the above"
    )
    run.add_argument(
        "--gateway-idle-timeout",
        type=_idle_timeout,
        default=defaults.idle_timeout,
        metavar="DURATION",
        help="close gateway client connections idle this long between requests, or that take "
        "this long to send a request head, 1s to 1d (default: %(default)gs)",
    )
    run.add_argument(
        "--gateway-response-timeout",
        type=parse_duration,
        default=defaults.response_timeout,
        metavar="DURATION",
        help="answer 504 when a backend starts no answer this long after the last request "
        "byte, 1s to 365d (default: %(default)gs)",
    )
    run.add_argument(
        "--gateway-stream-idle-timeout",
        type=arguments.duration(low=0.0, high=DAY),
        default=defaults.stream_idle_timeout,
        metavar="DURATION",
        help="cut an answer or WebSocket through the gateway that moves no byte either way "
        "this long; 0: never (default: %(default)gs)",
    )
    run.add_argument(
        "--gateway-max-body-bytes",
        type=arguments.whole(low=0, high=2**62),
        default=defaults.max_body_bytes,
        metavar="N",
        help="largest request body the gateway forwards, in bytes; more is answered 413 "
        "(0: no limit; default: %(default)s)",
    )
    run.add_argument(
        "--gateway-replay-body-limit",
        type=arguments.whole(low=0, high=16 * 1024**2),
        default=defaults.replay_body_limit,
        metavar="N",
        help="bytes of a request body the gateway holds so a retry or a mirror can send it "
        "again; a bigger body streams once (0: never hold; default: %(default)s)",
    )


def _gateway_settings(args: argparse.Namespace) -> GatewaySettings:
    defaults = GatewaySettings()
    return GatewaySettings(
        listen=getattr(args, "gateway_listen", None),
        cert_file=getattr(args, "gateway_cert_file", None),
        key_file=getattr(args, "gateway_key_file", None),
        idle_timeout=getattr(args, "gateway_idle_timeout", defaults.idle_timeout),
        response_timeout=getattr(args, "gateway_response_timeout", defaults.response_timeout),
        max_body_bytes=getattr(args, "gateway_max_body_bytes", defaults.max_body_bytes),
        replay_body_limit=getattr(args, "gateway_replay_body_limit", defaults.replay_body_limit),
        stream_idle_timeout=getattr(
            args, "gateway_stream_idle_timeout", defaults.stream_idle_timeout
        ),
    )


def _check_gateway_flags(args: argparse.Namespace) -> None:
    """Gateway flags that cannot work, before anything starts."""
    cert, key = args.gateway_cert_file, args.gateway_key_file
    if (cert is None) != (key is None):
        raise UsageError("--gateway-cert-file and --gateway-key-file go together")
    if (cert is not None or key is not None) and args.gateway_listen is None:
        raise UsageError("--gateway-cert-file and --gateway-key-file need --gateway-listen")
    if cert is not None and key is not None:
        from tunnel_server.fleet.gateway import tls_context  # noqa: PLC0415 - see serve()

        try:
            tls_context(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"--gateway-cert-file {cert} / --gateway-key-file {key}: {exc}"
            ) from None
    if args.gateway_listen is not None and args.gateway_listen == getattr(args, "listen", None):
        raise UsageError("--gateway-listen must differ from --listen")


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


def _add_ca_commands(sub: argparse._SubParsersAction[arguments.Parser]) -> None:
    ca = sub.add_parser(
        "ca",
        help="rotate the CA agents pin, without re-joining them (docs/security.md)",
        description="Rotating the CA: `rotate` makes a next CA that connected agents are told"
        " of over their session and trust from then on; `promote` (server stopped) makes it"
        " current, and agents renew onto it; `retire` stops trusting the old one."
        ' See docs/security.md, "Rotating the CA".',
    )
    _data_dir_option(ca)
    inner = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)
    commands_help = {
        "status": "show the current, next and previous CA (hash, subject, expiry)",
        "rotate": "create the next CA; a running server announces it to its agents",
        "promote": "make the next CA current (run with the server stopped, then start it)",
        "retire": "stop trusting the previous CA (refused while nodes still hold its certificates)",
    }
    for name, text in commands_help.items():
        command = inner.add_parser(name, help=text, description=text)
        _data_dir_option(command)
        if name == "status":
            command.add_argument("-o", "--output", choices=("text", "json"), default="text")
        if name == "retire":
            command.add_argument(
                "--force",
                action="store_true",
                help="retire even though some nodes still hold a certificate of the previous CA"
                " (they must join again)",
            )


class ConflictError(CliError):
    """The data dir's state does not allow this step now. Exit 6, like the API's 409."""

    exit_code = 6


def cmd_ca(args: argparse.Namespace, data_dir: Path) -> int:
    """``tunnel-server ca-hash`` and ``ca status|rotate|promote|retire`` on the data dir."""
    from tunnel_server import backup  # noqa: PLC0415 - see serve()
    from tunnel_server.identity.pki import RotationError  # noqa: PLC0415 - see serve()

    authority = _load_ca(data_dir)
    action: str = "hash" if args.command == "ca-hash" else args.ca_command
    busy = backup.server_running(data_dir) if action == "promote" else None
    if busy is not None:
        raise ConflictError(
            f"the server of {data_dir} is running ({busy} is open): stop it, run `tunnel-server"
            " ca promote`, then start it (it re-issues its TLS certificate from the new CA)"
        )
    try:
        if action == "status":
            _ca_status(authority, as_json=args.output == "json")
        elif action == "rotate":
            print(spki_hash(authority.rotate()))  # noqa: T201 - the output
        elif action == "promote":
            print(spki_hash(authority.promote()))  # noqa: T201 - the output
        elif action == "retire":
            _ca_retire(authority, data_dir, force=args.force)
        else:
            print(authority.ca_hash())  # noqa: T201 - the output
    except RotationError as exc:
        raise ConflictError(str(exc)) from None
    return 0


def _ca_status(authority: CertificateAuthority, *, as_json: bool) -> None:
    state = authority.state()
    if as_json:
        print(json.dumps(state, indent=2))  # noqa: T201 - the output
        return
    for role, ca in state.items():
        text = "-" if ca is None else f"{ca['hash']}  expires {ca['expires']}  {ca['subject']}"
        print(f"{role:9} {text}")  # noqa: T201 - the output


def _ca_retire(authority: CertificateAuthority, data_dir: Path, *, force: bool) -> None:
    from tunnel_server.identity import rotation  # noqa: PLC0415 - see serve()

    if authority.previous_certificate is None:
        raise ConflictError("there is no previous CA to retire")
    _, store = _open(data_dir)
    try:
        holders = rotation.nodes_on_previous_ca(
            store, promoted_at=authority.promoted_at, now=time.time()
        )
    finally:
        store.close()
    if holders and not force:
        shown = ", ".join(holders[:10]) + (" ..." if len(holders) > 10 else "")
        raise ConflictError(
            f"{len(holders)} node(s) still hold a certificate of the previous CA ({shown}):"
            " they renew onto the new CA once connected; wait, or pass --force (they must"
            " join again)"
        )
    retired = authority.retire()
    print(f"retired {spki_hash(retired)}")  # noqa: T201 - the output


def _add_backup_commands(sub: argparse._SubParsersAction[arguments.Parser]) -> None:
    backup = sub.add_parser(
        "backup",
        help="write the data folder (CA key, stores, tokens) to a tar.gz, also while serving",
        description="Copy every database with SQLite's online backup (consistent while the"
        " server runs), the CA and serving key pairs and the tokens into FILE (tar.gz, mode"
        " 0600, written atomically) with a manifest of sha256 hashes (docs/install.md).",
    )
    _data_dir_option(backup)
    backup.add_argument("--out", type=Path, required=True, metavar="FILE", help="the archive")
    restore = sub.add_parser(
        "restore",
        help="put a backup into a data folder (empty, or --force with its server stopped)",
        description="Check the whole archive (manifest hashes, member names) before writing"
        " anything, then restore the files with their modes (docs/install.md).",
    )
    _data_dir_option(restore)
    restore.add_argument(
        "--from", dest="archive", type=Path, required=True, metavar="FILE", help="the archive"
    )
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace what a non-empty data folder holds (refused while its server runs)",
    )


def _backup_or_restore(args: argparse.Namespace, data_dir: Path) -> int:
    from tunnel_server import backup  # noqa: PLC0415 - see serve()

    try:
        if args.command == "backup":
            members = backup.backup(data_dir, args.out)
            print(f"{args.out}: {len(members)} files")  # noqa: T201 - the output
        else:
            members = backup.restore(args.archive, data_dir, force=args.force)
            print(f"{data_dir}: {len(members)} files restored")  # noqa: T201 - the output
    except backup.BackupError as exc:
        return _fail(str(exc), exc.exit_code)
    return 0


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


def _systemd_watchdog() -> systemd.Watchdog | None:
    """The watchdog systemd armed (None without one); CliError for a value it never sets."""
    try:
        return systemd.watchdog_from_environment()
    except systemd.WatchdogError as error:
        raise CliError(str(error)) from None


async def serve(
    settings: ServerSettings,
    identity: ServerIdentity,
    *,
    kube_upstream: Path | None = None,
    access_log: bool = False,
    gateway_router: Router | None = None,
) -> None:
    watchdog = _systemd_watchdog()  # first: a watchdog setting systemd never writes stops us
    # Imported here, not at the top: aiohttp and prometheus take half a second to import, and
    # only `run` needs them; `token create` and `nodes` stay quick for operators and scripts.
    from aiohttp import web  # noqa: PLC0415 - see above

    from tunnel_server.app import create_app  # noqa: PLC0415 - see above
    from tunnel_server.app_keys import REGISTRY_KEY  # noqa: PLC0415 - see above
    from tunnel_server.identity.tls import HandshakeGate, server_ssl_context  # noqa: PLC0415 - see above

    app = create_app(settings, identity=identity, gateway_router=gateway_router)
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
            pings = group.create_task(systemd.feed_watchdog(watchdog), name="server.watchdog")
            await stop.wait()
            if gate is not None:
                gate.close()
            pings.cancel()  # stopping: TimeoutStopSec=, not the watchdog, bounds the drain
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
    from tunnel_server import kube  # noqa: PLC0415 - see serve(): only `run --kube-upstream`

    try:
        kube.load_upstream(kubeconfig)
    except ValueError as exc:  # KubeconfigError: the message names the field to fix
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


def _dispatch(args: argparse.Namespace, *, gateway_router: Router | None = None) -> int:
    if getattr(args, "handler", None) is not None:  # a management command: over the API
        return commands.run(args)
    if args.command == "migrate":  # its folder is --from's, not --data-dir
        return migrate_cli.run(args)
    data_dir: Path = getattr(args, "data_dir", ServerSettings().data_dir)
    _check_data_dir(data_dir)
    if getattr(args, "kube_upstream", None) is not None:
        _check_kube_upstream(args.kube_upstream)
    if args.command == "run":
        _check_fleet_flags(args)
        _check_gateway_flags(args)
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
            gateway=_gateway_settings(args),
            sso_config=getattr(args, "sso_config", None),
            replicas=ReplicaSettings(
                name=getattr(args, "replica_name", None),
                peer_address=getattr(args, "peer_address", None),
            ),
        )
        from tunnel_server.app import bootstrap  # noqa: PLC0415 - see serve()

        try:
            identity = bootstrap(settings, kube_store=_kube_store(args))
        except ValueError as exc:  # a PEM file that does not parse
            raise CliError(
                f"a certificate or key in {data_dir} cannot be read ({exc}): restore ca.crt and"
                " ca.key from a backup; a broken server.crt or server.key may be deleted, `run`"
                " makes new ones"
            ) from None
        try:
            if args.command == "run":
                with contextlib.suppress(KeyboardInterrupt):
                    event_loop.run(
                        serve(
                            settings,
                            identity,
                            kube_upstream=args.kube_upstream,
                            access_log=args.access_log,
                            gateway_router=gateway_router,
                        )
                    )
            else:
                print(identity.authority.ca_hash())  # noqa: T201 - the command's output
        finally:
            identity.store.close()
        return 0
    if args.command in ("backup", "restore"):
        return _backup_or_restore(args, data_dir)
    if args.command in ("ca", "ca-hash"):
        return cmd_ca(args, data_dir)
    return cmd_autonomy_webhook(args, data_dir)


def _fail(message: str, code: int) -> int:
    print(f"tunnel-server: error: {message}", file=sys.stderr)  # noqa: T201 - the CLI's answer
    return code


def main(argv: list[str] | None = None, *, gateway_router: Router | None = None) -> int:
    """The command line; exit codes as in ``EXIT_CODES`` (and docs/tunnel.md).

    ``gateway_router`` picks the gateway's backends instead of the default (which answers
    every request 404 until MultiClusterRoute objects are wired); for test launchers.
    """
    parser = build_parser()
    given = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(arguments.join_negative_values(parser, given))
    logs.setup(args.log_level, log_format=args.log_format)
    try:
        return _dispatch(args, gateway_router=gateway_router)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except SchemaError as exc:  # a newer release's database: exit 2, systemd does not loop
        return _fail(str(exc), 2)
    except (MissingCAError, StoreError, ValueError) as exc:
        return _fail(str(exc), 1)
    except sqlite3.DatabaseError as exc:
        return _fail(f"the store in {args.data_dir} is unusable ({exc}): restore a backup", 1)
    except OSError as exc:  # a file we may not read or write, a full or read-only disk
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}: run as the server's user, check the disk", 1)


if __name__ == "__main__":
    sys.exit(main())
