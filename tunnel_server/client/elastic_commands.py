"""``get nodepools|resourcepolicies --cluster C [-n NS]``: a member cluster's elastic objects.

``get`` is the fleet objects' command (``fleet_objects``); these two kinds live in a
registered member cluster, not in the hub, so they are read from
``GET /api/v1/clusters/{C}/nodepools`` and ``.../resourcepolicies[?namespace=NS]``, which ask
the member through its tunnel as the caller (docs/api.md, "Node pools and resource policies").
``--cluster`` is required for them and means nothing for the fleet's kinds.

Exit codes as every command's (``exits``): 4 when the member's RBAC refuses
(``member_forbidden``), 5 when the cluster does not exist or the elastic CRDs are not
installed in it (``elastic_not_installed``), 1 when it is offline.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any

from tunnel_server.client import exits
from tunnel_server.client.commands import fmt, path
from tunnel_server.client.http import ApiClient
from tunnel_server.client.output import Column, say, show

__all__ = ["COLUMNS", "KINDS", "cmd_get_elastic", "resolve_elastic_kind"]

GROUP = "elastic.edgefleet.io"
KINDS = {"NodePool": "nodepools", "ResourcePolicy": "resourcepolicies"}
"""Kind -> the plural of its cluster route."""
_SHORT = {"np": "NodePool", "rp": "ResourcePolicy"}


def resolve_elastic_kind(text: str) -> str | None:
    """``NodePool`` or ``ResourcePolicy`` for what a user typed, None for any other word.

    Any case, singular or plural, the short names ``np`` and ``rp``, or with the group
    (``nodepools.elastic.edgefleet.io``).
    """
    key = text.strip().lower().removesuffix("." + GROUP)
    if key in _SHORT:
        return _SHORT[key]
    for kind, plural in KINDS.items():
        if key in (kind.lower(), plural):
            return kind
    return None


def _age(item: dict[str, Any], now: float | None = None) -> str:
    """``5m``, ``3h``, ``2d`` since ``createdAt``, as kubectl shows an age."""
    created = item.get("createdAt")
    if not isinstance(created, str):
        return "-"
    try:
        then = datetime.fromisoformat(created).timestamp()
    except ValueError:
        return "-"
    seconds = max(0, int((time.time() if now is None else now) - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _condition(kind: str) -> Any:  # noqa: ANN401 - a column getter
    def get(item: dict[str, Any]) -> object:
        for entry in item.get("conditions") or []:
            if isinstance(entry, dict) and entry.get("type") == kind:
                return entry.get("status")
        return None

    return get


def _units(item: dict[str, Any]) -> str:
    """``local=4/4,cloud=2/4,virtual=0``: pods per unit, over its max when it has one."""
    shown = []
    for unit in item.get("units") or []:
        if not isinstance(unit, dict):
            continue
        pods = "?" if unit.get("pods") is None else str(unit["pods"])
        limit = "" if unit.get("max") is None else f"/{unit['max']}"
        shown.append(f"{unit.get('name')}={pods}{limit}")
    return ",".join(shown) or "-"


def _capacity(key: str) -> Any:  # noqa: ANN401 - a column getter
    def get(item: dict[str, Any]) -> object:
        capacity = item.get("nodeCapacity")
        return capacity.get(key) if isinstance(capacity, dict) else None

    return get


COLUMNS: dict[str, list[Column]] = {
    "NodePool": [
        Column("NAME", "name"),
        Column("PRIORITY", "priority"),
        Column("MIN", "min"),
        Column("MAX", "max"),
        Column("NODES", "nodes"),
        Column("CREATING", "creating"),
        Column("REMOVING", "removing", wide=True),
        Column("PROVIDER", "provider"),
        Column("PROVIDER-READY", _condition("ProviderReady")),
        Column("AT-MAX", _condition("AtMax"), wide=True),
        Column("CPU", _capacity("cpu"), wide=True),
        Column("MEMORY", _capacity("memory"), wide=True),
        Column("PODS", _capacity("pods"), wide=True),
        Column("AGE", _age),
    ],
    "ResourcePolicy": [
        Column("NAMESPACE", "namespace"),
        Column("NAME", "name"),
        Column("UNITS", _units),
        Column("WAITING", "waiting"),
        Column("OUTSIDE", "outside", wide=True),
        Column("GROUPS", "groups", wide=True),
        Column("ACCEPTED", _condition("Accepted")),
        Column("OVERLAPPING", _condition("Overlapping"), wide=True),
        Column("UNITS-FULL", _condition("UnitsFull"), wide=True),
        Column("AGE", _age),
    ],
}


def cmd_get_elastic(
    args: argparse.Namespace, client: ApiClient, kind: str, names: list[str]
) -> int:
    """``get`` of ``kind`` (a key of ``KINDS``) in ``args.cluster``; ``names`` filter the list."""
    cluster = getattr(args, "cluster", None)
    if not cluster:
        raise exits.ClientError(
            f"{KINDS[kind]} live in a member cluster: give --cluster NAME "
            "(`tunnel-server clusters list` names them)",
            exits.USAGE,
        )
    if getattr(args, "selector", None):
        raise exits.ClientError(f"-l/--selector is not taken for {KINDS[kind]}", exits.USAGE)
    namespace = getattr(args, "namespace", None)
    if namespace and kind != "ResourcePolicy":
        raise exits.ClientError(
            "NodePools are cluster-wide: -n/--namespace does not apply", exits.USAGE
        )
    query = {"namespace": namespace} if namespace else None
    listed = client.list_all(path("clusters", cluster, KINDS[kind]), query)
    if names:
        found = {str(item.get("name")): item for item in listed["items"] if isinstance(item, dict)}
        missing = [name for name in names if name not in found]
        if missing:
            where = f" in namespace {namespace}" if namespace else ""
            raise exits.ClientError(
                f"{KINDS[kind]} {', '.join(missing)} not found in cluster {cluster}{where}",
                exits.NOT_FOUND,
            )
        chosen = [found[name] for name in names]
        listed = {**listed, "items": chosen}
    if not listed["items"] and fmt(args) in ("table", "wide"):
        where = f" in namespace {namespace}" if namespace else ""
        say(f"No {KINDS[kind]} found in cluster {cluster}{where}.")
        return 0
    show(listed, fmt(args), COLUMNS[kind])
    return 0
