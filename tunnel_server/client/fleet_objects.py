"""``apply -f``, ``get``, ``delete`` and ``clusters accept|deny``: fleet objects, like kubectl.

Every command is a few calls of ``/api/v1/fleet/{plural}[/{name}]`` (docs/api.md, the fleet
section). ``apply`` reads and checks every document first (``fleet_reader``): one that cannot
be read or is not a valid fleet document stops the command before the first write. The server
may still refuse a document (its role, a stale resourceVersion, a rule of the hub): then, as
kubectl does, the others are still applied, each refusal is printed with its file, document
number and JSON pointer, and the command exits non-zero.
"""

from __future__ import annotations

import argparse
import sys
import time
from calendar import timegm
from collections.abc import Sequence
from typing import Any

from fleet_model.documents import KINDS
from tunnel_server.client import connection, elastic_commands, exits, fleet_reader
from tunnel_server.client.commands import SubParsers, fmt, leaf, path
from tunnel_server.client.http import ApiClient, segment
from tunnel_server.client.output import Column, say, show

GROUP = "fleet.edgefleet.io"
HUB_LABEL_PREFIX = "fleet.edgefleet.io/"
"""Labels the hub sets itself (``fleet.edgefleet.io/cluster`` on a Work …): not the operator's."""

_SHORT = {
    "mc": "ManagedCluster",
    "mcs": "ManagedClusterSet",
    "clusterset": "ManagedClusterSet",
    "clustersets": "ManagedClusterSet",
    "mcr": "MultiClusterRoute",
}


def _aliases() -> dict[str, str]:
    names = dict(_SHORT)
    for info in KINDS.values():
        names[info.kind.lower()] = info.kind
        names[info.plural] = info.kind
    return names


ALIASES = _aliases()


def resolve_kind(text: str) -> str:
    """The kind of what a user typed.

    A kind, plural or singular in any case, a short name, or ``placement.fleet.edgefleet.io``
    (as ``apply`` prints it).
    """
    key = text.strip().lower()
    key = key.removesuffix("." + GROUP)
    kind = ALIASES.get(key)
    if kind is None:
        known = ", ".join(f"{info.plural} ({info.kind})" for info in KINDS.values())
        msg = f"unknown kind {text!r}: one of {known}; short names mc, mcs, mcr"
        raise exits.ClientError(msg, exits.USAGE)
    return kind


def _kind_arg(value: str) -> str:
    """The argparse type of KIND (and KIND/NAME): the kind resolved, ``/NAME`` kept."""
    kind, slash, name = value.partition("/")
    try:
        resolved = resolve_kind(kind)
    except exits.ClientError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return f"{resolved}/{name}" if slash else resolved


def _get_kind_arg(value: str) -> str:
    """KIND of ``get``: a fleet kind, or a member cluster's (``elastic_commands``)."""
    kind, slash, name = value.partition("/")
    elastic = elastic_commands.resolve_elastic_kind(kind)
    if elastic is None:
        return _kind_arg(value)
    return f"{elastic}/{name}" if slash else elastic


def collection(kind: str) -> str:
    return "/api/v1/fleet/" + KINDS[kind].plural


def item_path(kind: str, name: str) -> str:
    return f"{collection(kind)}/{segment(name)}"


def display(kind: str, name: str) -> str:
    """``placement.fleet.edgefleet.io/web``, as kubectl names an object it applied."""
    return f"{kind.lower()}.{GROUP}/{name}"


# ---------------------------------------------------------------- columns


def _metadata(item: dict[str, Any]) -> dict[str, Any]:
    value = item.get("metadata")
    return value if isinstance(value, dict) else {}


def _section(item: dict[str, Any], name: str) -> dict[str, Any]:
    value = item.get(name)
    return value if isinstance(value, dict) else {}


def _dig(item: dict[str, Any], *keys: str) -> object:
    value: object = item
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def condition(item: dict[str, Any], kind: str) -> str | None:
    """The status (True, False, Unknown) of condition ``kind``, None when not reported."""
    conditions = _section(item, "status").get("conditions")
    for entry in conditions if isinstance(conditions, list) else []:
        if isinstance(entry, dict) and entry.get("type") == kind:
            return str(entry.get("status"))
    return None


def _name(item: dict[str, Any]) -> object:
    return _metadata(item).get("name")


def _labels(item: dict[str, Any]) -> str:
    labels = _metadata(item).get("labels")
    if not isinstance(labels, dict) or not labels:
        return "-"
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _flag(value: object) -> str:
    return "true" if value is True else "false" if value is False else "-"


def age(item: dict[str, Any], now: float | None = None) -> str:
    """``5m``, ``3h``, ``2d`` since ``creationTimestamp`` (RFC 3339 UTC), as kubectl."""
    created = _metadata(item).get("creationTimestamp")
    if not isinstance(created, str):
        return "-"
    try:
        then = timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return "-"
    seconds = max(0, int((time.time() if now is None else now) - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _taints(item: dict[str, Any]) -> str:
    taints = _section(item, "spec").get("taints")
    shown = (
        [f"{t.get('key')}:{t.get('effect')}" for t in taints or [] if isinstance(t, dict)]
        if isinstance(taints, list)
        else []
    )
    return ",".join(shown) or "-"


def _claim(name: str) -> Any:  # noqa: ANN401 - a column getter
    def get(item: dict[str, Any]) -> object:
        claims = _section(item, "status").get("clusterClaims")
        for claim in claims if isinstance(claims, list) else []:
            if isinstance(claim, dict) and claim.get("name") == name:
                return claim.get("value")
        return None

    return get


def _decisions(item: dict[str, Any]) -> str:
    decisions = _section(item, "status").get("decisions")
    names = (
        [str(d.get("clusterName")) for d in decisions or [] if isinstance(d, dict)]
        if isinstance(decisions, list)
        else []
    )
    return ",".join(names) or "-"


def _count(*keys: str) -> Any:  # noqa: ANN401 - a column getter
    def get(item: dict[str, Any]) -> object:
        value = _dig(item, *keys)
        return len(value) if isinstance(value, list) else None

    return get


def _summary(key: str) -> Any:  # noqa: ANN401 - a column getter
    return lambda item: _dig(item, "status", "summary", key)


def _cond(kind: str) -> Any:  # noqa: ANN401 - a column getter
    return lambda item: condition(item, kind)


def _placements(item: dict[str, Any]) -> str:
    refs = _section(item, "spec").get("placementRefs")
    names = (
        [str(r.get("name")) for r in refs or [] if isinstance(r, dict)]
        if isinstance(refs, list)
        else []
    )
    return ",".join(names) or "-"


def _ref(item: dict[str, Any]) -> object:
    ref = _dig(item, "spec", "ref")
    if not isinstance(ref, dict):
        return None
    return ref.get("branch") or ref.get("tag")


def _commit(item: dict[str, Any]) -> object:
    commit = _dig(item, "status", "commit")
    return commit[:12] if isinstance(commit, str) else None


def _set_selector(item: dict[str, Any]) -> object:
    return _dig(item, "spec", "clusterSelector", "selectorType") or "ExclusiveClusterSetLabel"


def _hostnames(item: dict[str, Any]) -> str:
    names = _section(item, "spec").get("hostnames")
    return ",".join(str(n) for n in names) if isinstance(names, list) and names else "*"


def _backends_up(item: dict[str, Any]) -> str:
    backends = _dig(item, "status", "backends")
    if not isinstance(backends, list):
        return "-"
    up = sum(1 for b in backends if isinstance(b, dict) and b.get("state") == "Healthy")
    return f"{up}/{len(backends)}"


def _unhealthy(item: dict[str, Any]) -> str:
    backends = _dig(item, "status", "backends")
    down = [
        f"{b.get('name')}: {b.get('health')}"
        for b in backends or []
        if isinstance(b, dict) and b.get("state") != "Healthy"
    ] if isinstance(backends, list) else []  # fmt: skip
    return "; ".join(down) or "-"


AGE = Column("AGE", age)
COLUMNS: dict[str, list[Column]] = {
    "ManagedCluster": [
        Column("NAME", _name),
        Column("ACCEPTED", lambda i: _flag(_dig(i, "spec", "hubAcceptsClient"))),
        Column("JOINED", _cond("ManagedClusterJoined"), wide=True),
        Column("AVAILABLE", _cond("Available")),
        Column("LABELS", _labels),
        Column("TAINTS", _taints, wide=True),
        Column("KUBERNETES", lambda i: _dig(i, "status", "version", "kubernetes"), wide=True),
        Column("NODES", _claim("nodes"), wide=True),
        AGE,
    ],
    "ManagedClusterSet": [Column("NAME", _name), Column("SELECTOR", _set_selector), AGE],
    "Placement": [
        Column("NAME", _name),
        Column("SELECTED", lambda i: _dig(i, "status", "numberOfSelectedClusters")),
        Column("SATISFIED", _cond("PlacementSatisfied")),
        Column("CLUSTERS", _decisions, wide=True),
        Column("GROUPS", _count("status", "decisionGroups"), wide=True),
        AGE,
    ],
    "Work": [
        Column("NAME", _name),
        Column("CLUSTER", lambda i: _dig(i, "spec", "clusterName")),
        Column("APPLIED", _cond("Applied")),
        Column("AVAILABLE", _cond("Available")),
        Column("DEGRADED", _cond("Degraded")),
        Column("RESOURCES", _count("spec", "workload", "manifests"), wide=True),
        Column(
            "WORKSET",
            lambda i: _dig(i, "metadata", "labels", "fleet.edgefleet.io/workset"),
            wide=True,
        ),
        AGE,
    ],
    "WorkSet": [
        Column("NAME", _name),
        Column("CLUSTERS", _summary("total")),
        Column("APPLIED", _summary("applied")),
        Column("AVAILABLE", _summary("available")),
        Column("DEGRADED", _summary("degraded"), wide=True),
        Column("PHASE", lambda i: _dig(i, "status", "rollout", "phase")),
        Column("PLACEMENTS", _placements, wide=True),
        AGE,
    ],
    "GitSource": [
        Column("NAME", _name),
        Column("REPOSITORY", lambda i: _dig(i, "spec", "repository")),
        Column("REF", _ref),
        Column("COMMIT", _commit),
        Column("SYNCED", _cond("Synced")),
        Column("OBJECTS", _count("status", "objects"), wide=True),
        AGE,
    ],
    "MultiClusterRoute": [
        Column("NAME", _name),
        Column("HOSTNAMES", _hostnames),
        Column("RULES", _count("spec", "rules")),
        Column("ACCEPTED", _cond("Accepted")),
        Column("RESOLVED", _cond("ResolvedRefs")),
        Column("HEALTHY", _backends_up),
        Column("UNHEALTHY", _unhealthy, wide=True),
        AGE,
    ],
}


# ---------------------------------------------------------------- get


def cmd_get(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    kind, names = _kind_and_names(args.kind, args.names)
    if kind in elastic_commands.KINDS:
        return elastic_commands.cmd_get_elastic(args, client, kind, names)
    if args.cluster or args.namespace:
        raise exits.ClientError(
            f"--cluster and --namespace go with nodepools and resourcepolicies; {kind} is "
            "a fleet object of the hub",
            exits.USAGE,
        )
    if names and args.selector:
        raise exits.ClientError("give NAME or -l SELECTOR, not both", exits.USAGE)
    if names:
        found = [client.get(item_path(kind, name)) for name in names]
        document: Any = found[0] if len(found) == 1 else {"items": found}
        show(document, fmt(args), COLUMNS[kind])
        return 0
    query = {"labelSelector": args.selector} if args.selector else None
    listed = client.list_all(collection(kind), query)
    if not listed["items"] and fmt(args) in ("table", "wide"):
        say(f"No {KINDS[kind].plural} found.")
        return 0
    show(listed, fmt(args), COLUMNS[kind])
    return 0


def _kind_and_names(given: str, names: Sequence[str]) -> tuple[str, list[str]]:
    kind, _, name = given.partition("/")
    if name:
        if names:
            raise exits.ClientError(f"give {given} or {kind} NAME..., not both", exits.USAGE)
        return kind, [name]
    return kind, list(names)


# ---------------------------------------------------------------- apply


def cmd_apply(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    reading = fleet_reader.read(args.filename, stdin=sys.stdin.buffer)
    if reading.problems:
        for problem in reading.problems:
            say(f"tunnel-server: error: {problem}")
        say(
            f"tunnel-server: error: nothing applied: {len(reading.problems)} problem(s) in the"
            " input; fix them and apply again"
        )
        return exits.FAILED
    if not reading.documents:
        raise exits.ClientError("no objects passed to apply", exits.FAILED)
    results: list[dict[str, Any]] = []
    codes: list[int] = []
    for index, loaded in enumerate(reading.documents):
        try:
            verb, stored = _apply_one(client, loaded)
        except exits.ClientError as exc:
            _report(loaded, exc)
            codes.append(exc.code)
            # A bad token or no server: none of the rest would get through either.
            if exc.code in (exits.UNAUTHENTICATED, exits.UNREACHABLE):
                return _stop(exc.code, len(reading.documents) - index - 1)
            continue
        results.append(stored)
        if fmt(args) in ("table", "wide"):
            sys.stdout.write(f"{display(loaded.kind, loaded.name)} {verb}\n")
    if fmt(args) in ("json", "yaml"):
        show({"items": results}, fmt(args), [])
    return _exit_code(codes)


def _exit_code(codes: list[int]) -> int:
    """0, the code all failures share (5, 6 …), else 1."""
    if not codes:
        return exits.OK
    return codes[0] if len(set(codes)) == 1 else exits.FAILED


def _stop(code: int, left: int) -> int:
    if left:
        say(f"tunnel-server: error: {left} document(s) not sent")
    return code


def _apply_one(client: ApiClient, loaded: fleet_reader.Loaded) -> tuple[str, dict[str, Any]]:
    """PUT one document: ``created``, ``configured`` or ``unchanged`` (no write at all)."""
    where = item_path(loaded.kind, loaded.name)
    try:
        existing = client.get(where)
    except exits.ApiFailure as exc:
        if exc.status != 404:
            raise
        existing = None
    if isinstance(existing, dict) and _same(existing, loaded.body):
        return "unchanged", existing
    answer = client.request("PUT", where, body=loaded.body)
    stored = answer.json()
    if answer.status == 201 or existing is None:
        return "created", stored
    before = _metadata(existing).get("generation")
    after = _metadata(stored).get("generation") if isinstance(stored, dict) else None
    return ("unchanged" if before is not None and before == after else "configured"), stored


def _same(existing: dict[str, Any], body: dict[str, Any]) -> bool:
    """Would a PUT of ``body`` change nothing the operator wrote?"""
    old, new = _metadata(existing), _metadata(body)
    ours = {
        key: value
        for key, value in (old.get("labels") or {}).items()
        if not key.startswith(HUB_LABEL_PREFIX) or key in (new.get("labels") or {})
    }
    return (
        ours == (new.get("labels") or {})
        and (old.get("annotations") or {}) == (new.get("annotations") or {})
        and (existing.get("spec") or {}) == (body.get("spec") or {})
    )


def _where(loaded: fleet_reader.Loaded) -> str:
    where = f"{loaded.source}: document {loaded.document_number}"
    if loaded.line is not None:
        where += f" (line {loaded.line})"
    return where + (f" {loaded.prefix}" if loaded.prefix else "")


def _report(loaded: fleet_reader.Loaded, exc: exits.ClientError) -> None:
    say(f"tunnel-server: error: {_where(loaded)}: {display(loaded.kind, loaded.name)}: {exc}")
    for pointer, message in exc.problems if isinstance(exc, exits.ApiFailure) else ():
        say(f"tunnel-server: error: {loaded.problem(pointer, message)}")


# ---------------------------------------------------------------- delete


def cmd_delete(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    targets = _delete_targets(args)
    codes: list[int] = []
    for kind, name in targets:
        try:
            client.delete(item_path(kind, name))
        except exits.ApiFailure as exc:
            if exc.status == 404 and args.ignore_not_found:
                continue
            say(f"tunnel-server: error: {display(kind, name)}: {exc}")
            codes.append(exc.code)
            if exc.code == exits.UNAUTHENTICATED:
                break
            continue
        sys.stdout.write(f'{kind.lower()}.{GROUP} "{name}" deleted\n')
    return _exit_code(codes)


def _delete_targets(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.filename:
        if args.kind is not None:
            raise exits.ClientError("give KIND NAME or -f FILE, not both", exits.USAGE)
        reading = fleet_reader.read(args.filename, stdin=sys.stdin.buffer, check="name")
        if reading.problems:
            for problem in reading.problems:
                say(f"tunnel-server: error: {problem}")
            raise exits.ClientError("nothing deleted: fix the input first", exits.FAILED)
        return [(d.kind, d.name) for d in reading.documents]
    if args.kind is None:
        raise exits.ClientError("give KIND NAME... or -f FILE", exits.USAGE)
    kind, names = _kind_and_names(args.kind, args.names)
    if not names:
        raise exits.ClientError(f"give the name of the {kind} to delete", exits.USAGE)
    return [(kind, name) for name in names]


# ---------------------------------------------------------------- clusters accept|deny


def _accept(client: ApiClient, name: str, *, accepted: bool) -> dict[str, Any] | None:
    """PATCH the ManagedCluster's ``spec.hubAcceptsClient``; None when there is none yet."""
    try:
        answer = client.request(
            "PATCH",
            item_path("ManagedCluster", name),
            body={"spec": {"hubAcceptsClient": accepted}},
            content_type="application/merge-patch+json",
        )
    except exits.ApiFailure as exc:
        if exc.status == 404:
            return None
        raise
    document = answer.json()
    return document if isinstance(document, dict) else {}


def _not_yet(name: str) -> str:
    return (
        f"no ManagedCluster {name} yet: it appears when the cluster's agent joins"
        f" (`tunnel-server clusters list` shows registrations; `tunnel-server get mc` the"
        " ManagedClusters)"
    )


def cmd_clusters_accept(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    document = _accept(client, args.name, accepted=True)
    if document is None:
        raise exits.ClientError(_not_yet(args.name), exits.NOT_FOUND)
    _said(args, document, f"{display('ManagedCluster', args.name)} accepted")
    return 0


def cmd_clusters_deny(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    """hubAcceptsClient=false; a registration still pending is refused as well.

    For a pending cluster hubAcceptsClient is false already (nothing for the hub to act on),
    so the registration's own deny is what refuses it, as ``clusters deny`` always did.
    """
    document = _accept(client, args.name, accepted=False)
    denied = _deny_pending(client, args.name)
    if document is None and denied is None:
        raise exits.ClientError(
            f"no ManagedCluster and no registered cluster {args.name}", exits.NOT_FOUND
        )
    if document is None:
        say(f"# {_not_yet(args.name)}; its registration is refused")
        _said(args, denied or {}, f"cluster {args.name} denied")
        return 0
    _said(args, document, f"{display('ManagedCluster', args.name)} denied")
    return 0


def _deny_pending(client: ApiClient, name: str) -> dict[str, Any] | None:
    try:
        registration = client.get(path("clusters", name))
    except exits.ApiFailure as exc:
        if exc.status == 404:
            return None
        raise
    if not isinstance(registration, dict) or registration.get("state") != "pending":
        return registration if isinstance(registration, dict) else None
    try:
        answer = client.post(path("clusters", name, "deny"))
    except exits.ApiFailure as exc:
        if exc.status != 409:  # the hub refused it first: no longer pending
            raise
        return registration
    return answer if isinstance(answer, dict) else registration


def _said(args: argparse.Namespace, document: dict[str, Any], line: str) -> None:
    if fmt(args) in ("json", "yaml"):
        show(document, fmt(args), [])
    else:
        sys.stdout.write(line + "\n")


def add_cluster_verbs(clusters: SubParsers) -> None:  # type: ignore[type-arg]
    """``clusters accept|deny NAME`` (the ``clusters`` group is fleet_commands')."""
    leaf(
        clusters,
        "accept",
        cmd_clusters_accept,
        "accept a cluster into the fleet (ManagedCluster spec.hubAcceptsClient=true)",
        description="PATCH /api/v1/fleet/managedclusters/NAME {spec: {hubAcceptsClient:"
        " true}}: the hub approves its registration and pushes it works. Exit 5 while the"
        " cluster has not joined (no ManagedCluster yet).",
    ).add_argument("name")
    leaf(
        clusters,
        "deny",
        cmd_clusters_deny,
        "cut a cluster off the fleet (hubAcceptsClient=false); refuse a pending one",
        description="PATCH /api/v1/fleet/managedclusters/NAME {spec: {hubAcceptsClient:"
        " false}}: the hub cuts the cluster off at once. A registration still pending is"
        " refused too (POST /api/v1/clusters/NAME/deny): it must join again with a new token.",
    ).add_argument("name")


# ---------------------------------------------------------------- the parsers


def add_fleet_object_commands(sub: SubParsers) -> None:  # type: ignore[type-arg]
    kinds = ", ".join(info.plural for info in KINDS.values())
    apply = leaf(
        sub,
        "apply",
        cmd_apply,
        "create or replace fleet objects from files (YAML or JSON), like kubectl apply",
        description="PUT every document of FILE (several per file, separated by ---), of every"
        " *.yaml, *.yml and *.json in a folder (name order, not recursive) or of stdin (-)"
        " to /api/v1/fleet/{plural}/{name}; prints `placement.fleet.edgefleet.io/web"
        " created|configured|unchanged`. Everything is read and checked first: one document"
        f" that is not valid stops it before any write. At most {fleet_reader.MAX_DOCUMENTS}"
        f" documents; a file at most {fleet_reader.MAX_FILE_BYTES // (1024 * 1024)} MiB.",
    )
    apply.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR|-",
        help="a file, a folder, or - for stdin (repeatable)",
    )
    get = leaf(
        sub,
        "get",
        cmd_get,
        f"list or show fleet objects: {kinds}; a member cluster's nodepools, resourcepolicies",
        description="KIND is a kind, plural or singular in any case, or a short name (mc:"
        " managedclusters, mcs: managedclustersets, mcr: multiclusterroutes); KIND/NAME"
        " works too. -o yaml|json prints the API's documents (yaml is what apply -f takes"
        " back). nodepools (np) and"
        " resourcepolicies (rp) live in a registered member cluster: give --cluster NAME"
        " (and -n NAMESPACE for policies of one namespace); they are read through the"
        " cluster's tunnel as you, so its RBAC decides what you see.",
    )
    get.add_argument("kind", type=_get_kind_arg, metavar="KIND")
    get.add_argument("names", nargs="*", metavar="NAME")
    get.add_argument(
        "-l",
        "--selector",
        metavar="SELECTOR",
        help="label selector, e.g. env=prod,tier!=db or 'region in (eu,us)'",
    )
    get.add_argument(
        "--cluster", metavar="NAME", help="the member cluster of nodepools, resourcepolicies"
    )
    get.add_argument(
        "-n", "--namespace", metavar="NS", help="resourcepolicies of this namespace only"
    )
    delete = leaf(
        sub,
        "delete",
        cmd_delete,
        "delete fleet objects by kind and name, or those of files (-f)",
        description="DELETE /api/v1/fleet/{plural}/{name} of each object named, or of each"
        " document of -f FILE|DIR|- (their kind and name).",
    )
    delete.add_argument("kind", type=_kind_arg, nargs="?", metavar="KIND")
    delete.add_argument("names", nargs="*", metavar="NAME")
    delete.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-")
    delete.add_argument(
        "--ignore-not-found", action="store_true", help="an object already gone is no error"
    )
