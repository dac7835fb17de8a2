"""The cloud's compact view of a member cluster's NodePools and ResourcePolicies (pure).

The objects are ``elastic.edgefleet.io/v1alpha1`` custom resources in the member cluster
(packaging/kubernetes/elastic/40-elastic-crds.yaml); their ``status`` is written by the cluster
agent (NodePool: ``fleet_model.elastic.autoscaler.pool_status_document``, ResourcePolicy:
``fleet_model.elastic.units.policy_status``). ``elastic_view`` reads them from the member
through the tunnel and answers with what these functions make of them.

Rules:

* Everything here comes from outside (a member cluster, whatever it holds): nothing is
  trusted. A field of the wrong type is ``None`` (or left out of a list), never an error
  for the whole answer; texts are cut to ``MAX_TEXT`` characters, names and words to
  ``MAX_WORD``; at most ``MAX_CONDITIONS`` conditions and ``MAX_UNITS`` units per object.
  Only the document itself not being a Kubernetes list is an error (``MemberAnswerError``).
* The API's convention (docs/api.md): camelCase names, times RFC 3339 UTC in fields named
  ``...At`` (a condition's ``lastTransitionTime`` is shown as ``lastTransitionAt``).
* Defaults are the CRD's: a NodePool without ``priority`` or ``min`` has 0; a unit without a
  name is ``unit-<index>`` (``fleet_model.elastic.policy``).
* What the member refused is said with its own message (``refusal``): 403 ``member_forbidden``
  (its RBAC decided, for the impersonated cloud role), 404 ``elastic_not_installed`` (the
  member does not serve the resource: the CRDs are not applied there), 410 ``expired`` (a
  page token the member no longer knows), anything else 502 ``member_error``.

No I/O, no aiohttp: pure functions over JSON values, tested as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "GROUP",
    "MAX_CONDITIONS",
    "MAX_MEMBER_CONTINUE",
    "MAX_TEXT",
    "MAX_UNITS",
    "MAX_WORD",
    "VERSION",
    "MemberAnswerError",
    "MemberList",
    "Refusal",
    "conditions",
    "member_list",
    "policy_item",
    "pool_item",
    "refusal",
    "timestamp",
]

GROUP = "elastic.edgefleet.io"
VERSION = "v1alpha1"
MAX_CONDITIONS = 16
"""Conditions shown per object: the NodePool CRD allows 16; a policy's agent writes four."""
MAX_UNITS = 16
"""Units shown per policy: the ResourcePolicy CRD allows 16."""
MAX_TEXT = 1024
"""Characters of a message (the agent cuts its own at 1,024: ``MAX_MESSAGE``)."""
MAX_WORD = 253
"""Characters of a name, namespace, condition type or reason (a DNS subdomain's length)."""
MAX_QUANTITY = 64
"""Characters of a capacity quantity (``1500m``, ``6Gi``): far more than a real one needs."""
MAX_COUNT = 10**9
"""Largest count believed; a bigger number (or a negative one) is shown as unknown."""
MAX_MEMBER_CONTINUE = 1024
"""Characters of a member's ``continue`` token we pass on (Kubernetes' are ~100-300); ours
wraps it, and must stay under the API's 2,048 (``api.paging.MAX_CONTINUE``)."""
PROVIDERS = ("kwok", "command")


class MemberAnswerError(ValueError):
    """The member's answer is not the list asked for (shown as 502 ``bad_upstream``)."""


@dataclass(frozen=True, kw_only=True)
class MemberList:
    """A Kubernetes list as the member answered it, its items not yet looked at."""

    items: list[Mapping[str, Any]]
    continue_token: str | None
    """The member's ``metadata.continue`` (None on the last page)."""
    remaining: int | None
    """The member's ``metadata.remainingItemCount``, when it said."""


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """A member's error answer, as the problem document the cloud answers with."""

    status: int
    reason: str
    detail: str


# ---------------------------------------------------------------- scalars


def _text(value: object, limit: int = MAX_WORD) -> str | None:
    if not isinstance(value, str):
        return None
    # One line for a table cell or a terminal: control characters become spaces.
    return "".join(ch if ch.isprintable() else " " for ch in value[:limit])


def _count(value: object, *, default: int | None = None, signed: bool = False) -> int | None:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if abs(value) > MAX_COUNT or (value < 0 and not signed):
        return None
    return value


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def timestamp(value: object) -> str | None:
    """A Kubernetes time (``2026-12-03T16:05:00Z``) as the API writes times, or None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # Kubernetes times are always UTC and say so; a bare one is not ours
    return parsed.astimezone(UTC).isoformat(timespec="seconds")


def _quantity(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    return _text(value, MAX_QUANTITY)


# ---------------------------------------------------------------- objects


def conditions(raw: object) -> list[dict[str, Any]]:
    """``status.conditions`` as ``[{type, status, reason, message, lastTransitionAt}]``."""
    out: list[dict[str, Any]] = []
    for entry in _list(raw):
        if not isinstance(entry, Mapping):
            continue
        kind = _text(entry.get("type"))
        if not kind:
            continue
        out.append(
            {
                "type": kind,
                "status": _text(entry.get("status"), 16) or "Unknown",
                "reason": _text(entry.get("reason")),
                "message": _text(entry.get("message"), MAX_TEXT),
                "lastTransitionAt": timestamp(entry.get("lastTransitionTime")),
            }
        )
        if len(out) == MAX_CONDITIONS:
            break
    return out


def _provider(spec: Mapping[str, Any]) -> str | None:
    provider = _dict(spec.get("provider"))
    named = [name for name in PROVIDERS if name in provider]
    return named[0] if len(named) == 1 else None


def pool_item(obj: Mapping[str, Any]) -> dict[str, Any]:
    """One NodePool: its spec's bounds and priority, the agent's counts and conditions."""
    metadata, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), obj.get("status")
    reported = _dict(status)
    capacity = _dict(_dict(spec.get("node")).get("capacity"))
    return {
        "name": _text(metadata.get("name")) or "",
        "createdAt": timestamp(metadata.get("creationTimestamp")),
        "priority": _count(spec.get("priority"), default=0, signed=True),
        "min": _count(spec.get("min"), default=0),
        "max": _count(spec.get("max")),
        "provider": _provider(spec),
        "nodeCapacity": {key: _quantity(capacity.get(key)) for key in ("cpu", "memory", "pods")},
        "reported": isinstance(status, Mapping) and bool(status),
        "nodes": _count(reported.get("nodes")),
        "creating": _count(reported.get("creating")),
        "removing": _count(reported.get("removing")),
        "conditions": conditions(reported.get("conditions")),
    }


def _unit_pods(status: Mapping[str, Any]) -> dict[str, int | None]:
    """Pods per unit name, from ``status.units`` (the first entry of a name counts)."""
    out: dict[str, int | None] = {}
    for entry in _list(status.get("units"))[:MAX_UNITS]:
        entry_map = _dict(entry)
        name = _text(entry_map.get("name"))
        if name is not None and name not in out:
            out[name] = _count(entry_map.get("pods"))
    return out


def _group_sum(groups: list[Any], key: str) -> int | None:
    total = 0
    for group in groups:
        value = _count(_dict(group).get(key), default=0)
        if value is None:
            return None
        total += value
    return total if total <= MAX_COUNT else None


def policy_item(obj: Mapping[str, Any]) -> dict[str, Any]:
    """One ResourcePolicy: its units in order with pods per unit and max, and conditions.

    Units come from the spec (the order pods prefer them now); the pods of each from the
    agent's ``status.units`` by name (null when the status does not name it yet).
    """
    metadata, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), obj.get("status")
    reported = _dict(status)
    pods = _unit_pods(reported)
    units = []
    for index, unit in enumerate(_list(spec.get("units"))[:MAX_UNITS]):
        unit_map = _dict(unit)
        name = _text(unit_map.get("name")) or f"unit-{index}"
        units.append({"name": name, "max": _count(unit_map.get("max")), "pods": pods.get(name)})
    groups = _list(reported.get("groups"))
    omitted = _count(reported.get("groupsOmitted"), default=0) or 0
    has_groups = "groups" in reported
    return {
        "namespace": _text(metadata.get("namespace")) or "",
        "name": _text(metadata.get("name")) or "",
        "createdAt": timestamp(metadata.get("creationTimestamp")),
        "generation": _count(metadata.get("generation")),
        "observedGeneration": _count(reported.get("observedGeneration")),
        "reported": isinstance(status, Mapping) and bool(status),
        "units": units,
        "groups": len(groups) + omitted if has_groups else None,
        "waiting": _group_sum(groups, "waiting") if has_groups else None,
        "outside": _group_sum(groups, "outside") if has_groups else None,
        "conditions": conditions(reported.get("conditions")),
    }


# ---------------------------------------------------------------- the member's answer


def member_list(document: object) -> MemberList:
    """The member's list answer; ``MemberAnswerError`` when it is not one.

    Items that are not objects with a ``metadata.name`` are left out (no real API server
    sends one; a broken one must not break the page).
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("items"), list):
        raise MemberAnswerError("the answer is not a Kubernetes list (no items)")
    metadata = _dict(document.get("metadata"))
    token = metadata.get("continue")
    if token is not None and not isinstance(token, str):
        raise MemberAnswerError("metadata.continue is not a string")
    if token is not None and len(token) > MAX_MEMBER_CONTINUE:
        raise MemberAnswerError(
            f"metadata.continue is {len(token)} characters (at most {MAX_MEMBER_CONTINUE})"
        )
    items = [
        item
        for item in document["items"]
        if isinstance(item, Mapping) and isinstance(_dict(item.get("metadata")).get("name"), str)
    ]
    return MemberList(
        items=items,
        continue_token=token or None,
        remaining=_count(metadata.get("remainingItemCount")),
    )


def _message(document: object) -> str:
    """The member's own words: a ``Status``'s message, or the first line of a text answer.

    An API server answers ``404 page not found`` as text for a group it does not serve.
    """
    if isinstance(document, str):
        said = _text(document.strip().partition("\n")[0], MAX_TEXT)
    else:
        said = _text(_dict(document).get("message"), MAX_TEXT)
    return said or "(no message)"


def refusal(status: int, document: object, *, cluster: str, plural: str) -> Refusal:
    """The problem to answer for a member's non-2xx answer to our list of ``plural``."""
    said = _message(document)
    if status == 403:
        return Refusal(
            status=403,
            reason="member_forbidden",
            detail=f"cluster {cluster} refused: {said} (its RBAC decides what your cloud "
            "role, impersonated as edgefleet:<role>, may read there: docs/clusters.md)",
        )
    if status == 404:
        return Refusal(
            status=404,
            reason="elastic_not_installed",
            detail=f"cluster {cluster} does not serve {plural}.{GROUP}: the elastic CRDs are "
            "not installed there (kubectl apply -f "
            f"packaging/kubernetes/elastic/40-elastic-crds.yaml in that cluster); it said: {said}",
        )
    if status == 410:
        return Refusal(
            status=410,
            reason="expired",
            detail=f"cluster {cluster} no longer knows this page's continue token ({said}): "
            "list again from the first page",
        )
    return Refusal(
        status=502,
        reason="member_error",
        detail=f"cluster {cluster} answered {status} to a list of {plural}: {said}",
    )
