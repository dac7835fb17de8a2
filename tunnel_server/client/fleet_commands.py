"""``token``, ``nodes``, ``clusters``, ``users`` and ``kubeconfig`` over the API."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daemon_support import arguments
from tunnel_server.client import connection, exits, fleet_objects
from tunnel_server.client.commands import (
    SubParsers,
    fmt,
    group,
    leaf,
    list_handler,
    path,
    show_json_items,
)
from tunnel_server.client.http import ApiClient
from tunnel_server.client.options import server_url
from tunnel_server.client.output import Column, say, show
from tunnel_server.identity import tokens, users

_token_ttl = arguments.duration(low=60.0, high=30 * 86400.0)


def _checked(check: Any) -> Any:  # noqa: ANN401 - a validator of identity/
    def parse(value: str) -> Any:  # noqa: ANN401
        try:
            return check(value)
        except (ValueError, users.UserError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


_name = _checked(tokens.validate_name)
_user_name = _checked(users.validate_user_name)
_clusters = _checked(users.parse_clusters)
_lifetime = _checked(users.parse_ttl)


# ---------------------------------------------------------------- bootstrap tokens

TOKENS = [
    Column("ID", "id"),
    Column("KIND", "kind"),
    Column("NAME", "name"),
    Column("STATUS", "status"),
    Column("EXPIRES", "expiresAt"),
    Column("APPROVAL", "requireApproval"),
    Column("CREATED", "createdAt", wide=True),
    Column("USED", "usedAt", wide=True),
]


def _token_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.manifest and args.kind != "cluster":
        raise exits.ClientError("--manifest installs a cluster agent: give --kind cluster", 2)
    if args.image is not None and not args.manifest:
        raise exits.ClientError("--image goes with --manifest", exits.USAGE)
    # Defaults left to the server (1 hour, no approval) are not sent.
    body: dict[str, Any] = {"name": args.name, "kind": args.kind}
    if args.ttl is not None:
        body["ttlSeconds"] = round(args.ttl)
    if args.require_approval:
        body["requireApproval"] = True
    if args.replace:
        body["replace"] = True
    if args.manifest:
        body["manifest"] = True
        if args.image:
            body["image"] = args.image
    return body


def _replaced(args: argparse.Namespace, client: ApiClient) -> dict[str, Any] | None:
    """The node ``--replace`` will revoke, if any, to say so (the answer does not)."""
    if not args.replace:
        return None
    try:
        node = client.get(path("nodes", args.name))
    except exits.ApiFailure as exc:
        if exc.status == 404:
            return None
        raise
    return node if isinstance(node, dict) and node.get("state") != "revoked" else None


def cmd_token_create(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    body = _token_body(args)
    replaced = _replaced(args, client)
    answer = client.post("/api/v1/tokens", body)
    if replaced is not None:
        say(f"# revoked {replaced.get('kind', 'node')} {args.name}: its session is cut off")
    if fmt(args) in ("json", "yaml"):
        show(answer, fmt(args), [])
        return 0
    if args.manifest:
        sys.stdout.write(str(answer.get("manifest", "")))
        say(
            f"# in cluster {args.name}, before {answer.get('expiresAt')}: pipe this into"
            f" `kubectl apply -f -`; then `tunnel-server clusters list` shows {args.name}"
        )
        return 0
    sys.stdout.write(f"{answer['token']}\n")
    if answer.get("joinCommand"):
        say(f"# on {args.name}, before {answer.get('expiresAt')}:\n{answer['joinCommand']}")
    return 0


def cmd_token_list(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    show(client.list_all("/api/v1/tokens"), fmt(args), TOKENS)
    return 0


def cmd_token_revoke(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    client.delete(path("tokens", args.id))
    sys.stdout.write(f"token {args.id} revoked\n")
    return 0


def add_token_commands(sub: SubParsers) -> None:  # type: ignore[type-arg]
    _, inner = group(
        sub,
        "token",
        "bootstrap tokens for joining nodes and clusters: create, list, revoke",
        description="The single-use bootstrap tokens `edge-agent join` needs (admin only).",
    )
    create = leaf(
        inner,
        "create",
        cmd_token_create,
        "create a single-use bootstrap token",
        description="Print a single-use bootstrap token bound to one node or cluster name on"
        " stdout (alone, for scripts); the matching `edge-agent join` line goes to stderr.",
    )
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
        metavar="DURATION",
        help="lifetime, e.g. 15m, 1h, 2d; 1m to 30d (default: the server's, 1h)",
    )
    create.add_argument(
        "--require-approval",
        action="store_true",
        help="the joiner waits until `tunnel-server nodes approve NAME`",
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
        help="with --manifest: the EdgeFleet image as the member cluster pulls it",
    )
    leaf(inner, "list", cmd_token_list, "list tokens, newest first (never their secrets)")
    revoke = leaf(
        inner, "revoke", cmd_token_revoke, "revoke an unused token: a join with it fails after"
    )
    revoke.add_argument("id", help="the token's id (first column of `token list`)")


# ---------------------------------------------------------------- nodes and clusters

NODES = [
    Column("NAME", "name"),
    Column("KIND", "kind"),
    Column("STATE", "state"),
    Column("STATUS", "status"),
    Column("LAST SEEN", "lastSeenAt"),
    Column("CERT EXPIRES", "certExpiresAt"),
    Column("AGENT", "agentVersion", wide=True),
    Column("CPU%", "cpuPercent", wide=True),
    Column("MEM%", "memoryPercent", wide=True),
    Column("DISK%", "diskPercent", wide=True),
    Column("RTT MS", "rttMs", wide=True),
    Column("OS", "os", wide=True),
]
CLUSTERS = [
    Column("NAME", "name"),
    Column("STATE", "state"),
    Column("STATUS", "status"),
    Column("LAST SEEN", "lastSeenAt"),
    Column("VERSION", "kubernetesVersion"),
    Column("NODES", "nodes"),
    Column("CERT EXPIRES", "certExpiresAt", wide=True),
    Column("AGENT", "agentVersion", wide=True),
]
EVENTS = [Column("AT", "at"), Column("TYPE", "type"), Column("DETAIL", "detail")]


def cmd_nodes_list(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    query = {
        key: str(value)
        for key, value in (
            ("status", getattr(args, "status", None)),
            ("q", getattr(args, "query", None)),
            ("sort", getattr(args, "sort", None)),
        )
        if value
    }
    document = client.list_all("/api/v1/nodes", query)
    if getattr(args, "json", False):
        show_json_items(document)
    else:
        show(document, fmt(args), NODES)
    return 0


def _get(kind: str, columns: list[Column]) -> Any:  # noqa: ANN401 - a handler
    def handler(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
        show(client.get(path(kind, args.name)), fmt(args), columns)
        return 0

    return handler


def _action(kind: str, verb: str) -> Any:  # noqa: ANN401 - a handler
    done = {"approve": "approved", "deny": "denied", "revoke": "revoked"}[verb]

    def handler(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
        answer = client.post(path(kind, args.name, verb))
        if fmt(args) in ("json", "yaml"):
            show(answer, fmt(args), [])
        else:
            what = answer.get("kind") if isinstance(answer, dict) else None
            sys.stdout.write(f"{what or kind.rstrip('s')} {args.name} {done}\n")
        return 0

    return handler


def cmd_node_events(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    show(client.list_all(path("nodes", args.name, "events")), fmt(args), EVENTS)
    return 0


_VERBS = {
    "approve": "let a pending {0} fetch its certificate",
    "deny": "refuse a pending {0}: it must join again with a new token",
    "revoke": "cut a {0} off at once; it must join again with a new token",
}


def add_node_commands(sub: SubParsers) -> None:  # type: ignore[type-arg]
    nodes, inner = group(
        sub,
        "nodes",
        "nodes (and clusters' agents): list, get, approve, deny, revoke, events",
        description="Without a sub-command: `nodes list`.",
        required=False,
    )
    nodes.set_defaults(handler=cmd_nodes_list)
    nodes.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    listing = leaf(inner, "list", cmd_nodes_list, "list nodes: state, status, last seen")
    listing.add_argument(
        "--status",
        choices=["online", "degraded", "offline", "pending", "revoked"],
        help="only nodes of this status",
    )
    listing.add_argument("-q", "--query", metavar="TEXT", help="only names containing TEXT")
    listing.add_argument("--sort", metavar="FIELD", help="order by FIELD (-FIELD: descending)")
    listing.add_argument(
        "--json",
        action="store_true",
        help="the nodes alone as a JSON list (as earlier versions printed; -o json prints the"
        " API's list document)",
    )
    leaf(inner, "get", _get("nodes", NODES), "one node in full").add_argument("name")
    for verb, text in _VERBS.items():
        leaf(inner, verb, _action("nodes", verb), text.format("node")).add_argument("name")
    leaf(inner, "events", cmd_node_events, "a node's events, newest first").add_argument("name")

    _, clusters = group(
        sub, "clusters", "registered clusters: list, get, approve, deny, revoke; accept (the fleet)"
    )
    leaf(clusters, "list", list_handler("clusters", CLUSTERS), "list registered clusters")
    leaf(clusters, "get", _get("clusters", CLUSTERS), "one cluster in full").add_argument("name")
    for verb, text in _VERBS.items():
        if verb != "deny":  # deny is the fleet's (hubAcceptsClient=false), beside accept
            leaf(clusters, verb, _action("clusters", verb), text.format("cluster")).add_argument(
                "name"
            )
    fleet_objects.add_cluster_verbs(clusters)


# ---------------------------------------------------------------- users and kubeconfig

USERS = [
    Column("NAME", "name"),
    Column("ROLE", "role"),
    Column("CLUSTERS", lambda u: "*" if u.get("clusters") is None else u["clusters"]),
    Column("CREATED", "createdAt"),
    Column("EXPIRES", "expiresAt"),
    Column("STATE", "state"),
    Column("TOKENS", "tokens"),
    Column("REVOKED", "revokedAt", wide=True),
]


def cmd_users_create(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    if args.clusters is not None:
        body["clusters"] = list(args.clusters)
    if args.ttl is not None:
        body["ttlSeconds"] = round(args.ttl)
    answer = client.post("/api/v1/users", body)
    if fmt(args) in ("json", "yaml"):
        show(answer, fmt(args), [])
        return 0
    sys.stdout.write(f"{answer['token']}\n")
    clusters = answer.get("clusters")
    say(
        f"# {answer.get('role')} {answer.get('name')}, clusters:"
        f" {','.join(clusters) if clusters else 'all'}, expires {answer.get('expiresAt')}."
        " Send it as 'Authorization: Bearer <token>', sign in to the console with it, or"
        f" `tunnel-server kubeconfig --user {args.name}`"
    )
    return 0


def cmd_users_list(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    document = client.list_all("/api/v1/users")
    if args.json:
        show_json_items(document)
    else:
        show(document, fmt(args), USERS)
    return 0


def cmd_users_revoke(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    client.delete(path("users", args.name))
    sys.stdout.write(f"user {args.name} revoked\n")
    return 0


def cmd_kubeconfig(args: argparse.Namespace, target: connection.Target, client: ApiClient) -> int:
    body: dict[str, Any] = {"server": args.kube_server or target.server}
    if args.cluster is not None:
        body["clusters"] = [args.cluster]
    if args.ttl is not None:
        body["ttlSeconds"] = round(args.ttl)
    answer = client.post(path("users", args.user, "kubeconfig"), body)
    if fmt(args) in ("json", "yaml"):
        show(answer, fmt(args), [])
        return 0
    sys.stdout.write(str(answer["kubeconfig"]))
    say(
        f"# kubeconfig of {args.user}; it holds a new token (expires {answer.get('expiresAt')}):"
        " keep the file private"
    )
    return 0


def add_user_commands(sub: SubParsers) -> None:  # type: ignore[type-arg]
    _, inner = group(
        sub,
        "users",
        "cloud users of the API, the console and kubectl: create, list, get, revoke",
        description="Users have a role (admin: everything, including users and tokens;"
        " operator: read and write within its clusters; viewer: read only) and bearer tokens"
        " (stored hashed). docs/security.md has the table of who may do what.",
    )
    create = leaf(
        inner,
        "create",
        cmd_users_create,
        "create a user and print its first token (shown once)",
        description="Create a user and print a bearer token for it on stdout, once: only its"
        " hash is kept. `tunnel-server kubeconfig --user NAME` makes more tokens of it.",
    )
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
        metavar="DURATION",
        help="lifetime of the user and its tokens: 90d, 12h, 30m or seconds; 1 minute to"
        " 730 days (default: the server's, 90d)",
    )
    listing = leaf(inner, "list", cmd_users_list, "list users (never their tokens)")
    listing.add_argument(
        "--json",
        action="store_true",
        help="the users alone as a JSON list (as earlier versions printed)",
    )
    leaf(inner, "get", _get("users", USERS), "one user").add_argument("name")
    leaf(
        inner,
        "revoke",
        cmd_users_revoke,
        "revoke a user: its tokens and console sessions stop working at once",
    ).add_argument("name", help="the user's name")

    command = leaf(
        sub,
        "kubeconfig",
        cmd_kubeconfig,
        "print a kubeconfig for a user: one context per registered cluster",
        description="Issue a new token for the user and print a kubeconfig (the server's CA"
        " embedded) with one cluster and context per registered cluster in the user's scope,"
        " each at SERVER/clusters/NAME (SERVER: --kube-server, or the API's URL)."
        " The token is in the output: keep the file private.",
    )
    command.add_argument("--user", required=True, type=_user_name, help="the user's name")
    which = command.add_mutually_exclusive_group()
    which.add_argument("--cluster", type=_name, metavar="NAME", help="only this cluster")
    which.add_argument(
        "--all-clusters",
        action="store_true",
        help="every registered cluster in the user's scope (the default)",
    )
    command.add_argument(
        "--kube-server",
        type=server_url,
        metavar="URL",
        help="https://HOST[:PORT] kubectl reaches the server at, written into the kubeconfig"
        " (default: the URL this command reaches the API at)",
    )
    command.add_argument(
        "--ttl",
        type=_lifetime,
        metavar="DURATION",
        help="lifetime of the token in it: 30d, 12h, 30m or seconds; never past the user's"
        " expiry (default: the server's, 30d)",
    )
