"""ManagedCluster and ManagedClusterSet: spec parsing, typed views, set membership, health rules.

Pure: no I/O and no clock. The hub's controller reads stored documents, calls these functions
with ``now``, and writes back what they return; ``wake_at`` says when to call again.

Shapes follow Open Cluster Management (``cluster.open-cluster-management.io/v1``) with our
names (docs/fleet/placement.md):

* ``ManagedCluster.spec``: ``hubAcceptsClient`` (double opt-in), ``leaseDurationSeconds``
  (1..3600, default 10), ``taints`` (``key``, ``value``, ``effect`` NoSelect | NoSelectIfNew |
  PreferNoSelect, ``timeAdded`` RFC 3339).
* ``ManagedClusterSet.spec.clusterSelector``: ``selectorType`` ExclusiveClusterSetLabel (the
  label ``fleet.edgefleet.io/clusterset=<set>``, the default) or LabelSelector (a Kubernetes
  label selector). The sets ``default`` (clusters without the set label, or labelled
  ``default``) and ``global`` (every cluster) always exist, whatever object holds their name.

Health (``evaluate_health``), after OCM's lease controller:

* a lease not renewed for 5 x ``leaseDurationSeconds`` (or never renewed) makes ``Available``
  Unknown and adds the taint ``fleet.edgefleet.io/unreachable`` (NoSelect);
* a fresh lease whose agent says its API server is unhealthy makes ``Available`` False and adds
  ``fleet.edgefleet.io/unavailable`` (NoSelect);
* otherwise ``Available`` is True and neither built-in taint is present.

A built-in taint keeps its ``timeAdded`` while it stays (``tolerationSeconds`` count from it);
``lastTransitionTime`` of a condition changes only when its ``status`` changes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import Any

from fleet_model.labels import (
    LabelSelector,
)
from fleet_model.problems import SpecError
from fleet_model.selectors import (
    MAX_CLAIM_VALUE,
    label_problem,
    parse_label_selector_object,
)
from fleet_model.times import format_time, parse_time

__all__ = [
    "BUILTIN_SETS",
    "BUILTIN_TAINTS",
    "CLUSTERSET_LABEL",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_SET",
    "GLOBAL_SET",
    "LEASE_GRACE_FACTOR",
    "TAINT_UNAVAILABLE",
    "TAINT_UNREACHABLE",
    "ClusterSetSpec",
    "ClusterSetView",
    "ClusterView",
    "HealthResult",
    "ManagedClusterSpec",
    "SelectorType",
    "Taint",
    "TaintEffect",
    "cluster_set_view",
    "cluster_view",
    "clusters_in_set",
    "evaluate_health",
    "format_time",
    "label_problem",
    "next_condition",
    "parse_label_selector_object",
    "parse_quantity",
    "parse_set_spec",
    "parse_spec",
    "parse_time",
    "put_condition",
    "stamp_taints",
    "taint_json",
    "taints_on_write",
    "with_builtin_sets",
]

CLUSTERSET_LABEL = "fleet.edgefleet.io/clusterset"
TAINT_UNREACHABLE = "fleet.edgefleet.io/unreachable"
TAINT_UNAVAILABLE = "fleet.edgefleet.io/unavailable"
DEFAULT_SET = "default"
GLOBAL_SET = "global"

DEFAULT_LEASE_SECONDS = 10
"""How often an agent renews its lease unless the admin says otherwise (OCM: 60 s; ours is
shorter because failover waits 5 x N before it even starts counting tolerationSeconds)."""
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 1, 3600
LEASE_GRACE_FACTOR = 5
"""A lease not renewed for this many periods means the cluster is unreachable (OCM's rule)."""

MAX_TAINTS = 32
"""Taints on one cluster: a handful in practice; the bound keeps scheduling cost linear."""
MAX_CLAIMS = 256
"""Claims kept from one cluster's status (the agent reports about ten)."""
MAX_QUANTITY_CHARS = 64
"""A Kubernetes quantity longer than this is garbage, not a size."""


# ---------------------------------------------------------------- time and conditions


def next_condition(
    conditions: Iterable[Mapping[str, Any]],
    *,
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: float,
    observed_generation: int | None = None,
) -> dict[str, Any]:
    """The condition ``type_`` as it should now read.

    ``lastTransitionTime`` is taken from the current condition of that type when its status is
    unchanged (Kubernetes' rule), else it is ``now``.
    """
    since = format_time(now)
    for current in conditions:
        if current.get("type") == type_:
            kept = current.get("lastTransitionTime")
            if current.get("status") == status and isinstance(kept, str):
                since = kept
            break
    out: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if observed_generation is not None:
        out["observedGeneration"] = observed_generation
    return out


def put_condition(
    conditions: Iterable[Mapping[str, Any]], condition: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """``conditions`` with ``condition`` in the place of its type (appended if it is new)."""
    out: list[dict[str, Any]] = []
    placed = False
    for current in conditions:
        if current.get("type") == condition["type"]:
            out.append(dict(condition))
            placed = True
        else:
            out.append(dict(current))
    if not placed:
        out.append(dict(condition))
    return out


# ---------------------------------------------------------------- quantities


_QUANTITY = re.compile(
    r"^(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]{1,2})?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_MAX_INT64 = 2**63 - 1


def parse_quantity(text: object) -> Fraction:
    """A Kubernetes quantity ("3500m", "8Gi", "32G", "1.5", "2e3") as an exact number.

    Raises ValueError for anything else. The text is at most 64 characters and an exponent at
    most two digits, so the number stays small however it is written.
    """
    if not isinstance(text, str) or not 0 < len(text) <= MAX_QUANTITY_CHARS:
        shown = repr(text)  # bounded: the message may end up in a status or a log line
        raise ValueError(f"not a quantity: {shown[:80]}{'...' if len(shown) > 80 else ''}")
    found = _QUANTITY.match(text)
    if found is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    value = Fraction(found["number"])
    suffix = found["suffix"] or ""
    if suffix in _BINARY:
        value *= _BINARY[suffix]
    elif suffix in _DECIMAL:
        value *= _DECIMAL[suffix]
    elif suffix:
        value *= Fraction(10) ** int(suffix[1:])
    return -value if found["sign"] == "-" else value


def _whole(quantity: Fraction, scale: int) -> int | None:
    """``quantity x scale`` rounded up (Kubernetes' MilliValue/Value), None if out of range."""
    amount = math.ceil(quantity * scale)
    return amount if 0 <= amount <= _MAX_INT64 else None


def _quantity_or_none(text: object, scale: int) -> int | None:
    try:
        return _whole(parse_quantity(text), scale)
    except ValueError:
        return None


# ---------------------------------------------------------------- ManagedCluster spec


class TaintEffect(StrEnum):
    NO_SELECT = "NoSelect"
    """Not selected by a placement that does not tolerate it; chosen clusters are dropped."""
    NO_SELECT_IF_NEW = "NoSelectIfNew"
    """Not newly selected; a cluster already in the placement's decisions stays."""
    PREFER_NO_SELECT = "PreferNoSelect"
    """Accepted and ignored, as in OCM (which never implemented it)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Taint:
    key: str
    effect: TaintEffect
    value: str = ""
    time_added: float | None = None
    """Seconds since the epoch; None if the document gave none (the hub stamps it, see
    ``stamp_taints``). Placement counts a missing time as the epoch, as OCM counts a zero one."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ManagedClusterSpec:
    hub_accepts_client: bool = False
    lease_duration_seconds: int = DEFAULT_LEASE_SECONDS
    taints: tuple[Taint, ...] = ()


def taint_json(taint: Taint) -> dict[str, Any]:
    """``taint`` as written in ``spec.taints``."""
    out: dict[str, Any] = {"key": taint.key, "effect": str(taint.effect)}
    if taint.value:
        out["value"] = taint.value
    if taint.time_added is not None:
        out["timeAdded"] = format_time(taint.time_added)
    return out


def _taint(item: object, where: str, problems: list[tuple[str, str]]) -> Taint | None:
    if not isinstance(item, dict):
        problems.append((where, "must be an object {key, value, effect, timeAdded}"))
        return None
    count = len(problems)
    unknown = set(item) - {"key", "value", "effect", "timeAdded"}
    if unknown:
        problems.append((where, f"unknown fields: {', '.join(sorted(map(str, unknown)))}"))
    key, value, effect = item.get("key"), item.get("value", ""), item.get("effect")
    for name, problem in (
        ("key", label_problem(key, key=True)),
        ("value", label_problem(value, key=False)),
    ):
        if problem is not None:
            problems.append((f"{where}/{name}", problem))
    if not isinstance(effect, str) or effect not in set(TaintEffect):
        problems.append((f"{where}/effect", "must be NoSelect, NoSelectIfNew or PreferNoSelect"))
    added = item.get("timeAdded")
    time_added = parse_time(added) if added is not None else None
    if added is not None and time_added is None:
        problems.append((f"{where}/timeAdded", "must be an RFC 3339 time with a zone"))
    if len(problems) > count:
        return None
    assert isinstance(key, str)  # noqa: S101 - checked above
    assert isinstance(value, str)  # noqa: S101
    assert isinstance(effect, str)  # noqa: S101
    return Taint(key=key, value=value, effect=TaintEffect(effect), time_added=time_added)


def _taints(value: object, problems: list[tuple[str, str]]) -> tuple[Taint, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(("/spec/taints", "must be a list"))
        return ()
    if len(value) > MAX_TAINTS:
        problems.append(("/spec/taints", f"at most {MAX_TAINTS} taints"))
        return ()
    out: list[Taint] = []
    seen: set[tuple[str, TaintEffect]] = set()
    for index, item in enumerate(value):
        taint = _taint(item, f"/spec/taints/{index}", problems)
        if taint is None:
            continue
        if (taint.key, taint.effect) in seen:
            problems.append((f"/spec/taints/{index}", "a taint with this key and effect is above"))
            continue
        seen.add((taint.key, taint.effect))
        out.append(taint)
    return tuple(out)


def parse_spec(spec: object) -> ManagedClusterSpec:
    """``ManagedCluster.spec``, or ``SpecError`` with every problem (paths under ``/spec``)."""
    if not isinstance(spec, dict):
        raise SpecError([("/spec", "must be an object")])
    problems: list[tuple[str, str]] = []
    unknown = set(spec) - {"hubAcceptsClient", "leaseDurationSeconds", "taints"}
    if unknown:
        problems.append(("/spec", f"unknown fields: {', '.join(sorted(map(str, unknown)))}"))
    accepts = spec.get("hubAcceptsClient", False)
    if not isinstance(accepts, bool):
        problems.append(("/spec/hubAcceptsClient", "must be true or false"))
    lease = spec.get("leaseDurationSeconds", DEFAULT_LEASE_SECONDS)
    if (
        isinstance(lease, bool)
        or not isinstance(lease, int)
        or not MIN_LEASE_SECONDS <= lease <= MAX_LEASE_SECONDS
    ):
        problems.append(
            (
                "/spec/leaseDurationSeconds",
                f"must be an integer from {MIN_LEASE_SECONDS} to {MAX_LEASE_SECONDS}",
            )
        )
    taints = _taints(spec.get("taints"), problems)
    if problems:
        raise SpecError(problems)
    return ManagedClusterSpec(
        hub_accepts_client=bool(accepts), lease_duration_seconds=int(lease), taints=taints
    )


def stamp_taints(
    taints: Sequence[Taint], *, previous: Sequence[Taint], now: float
) -> tuple[Taint, ...]:
    """``taints`` with every missing ``timeAdded`` filled.

    Kept from ``previous`` for the same key and effect, else ``now`` (to the second): what
    OCM's admission webhook does on write.
    """
    before = {(t.key, t.effect): t.time_added for t in previous}
    out: list[Taint] = []
    for taint in taints:
        if taint.time_added is None:
            added = before.get((taint.key, taint.effect))
            stamped = Taint(
                key=taint.key,
                value=taint.value,
                effect=taint.effect,
                time_added=added if added is not None else float(math.floor(now)),
            )
            out.append(stamped)
        else:
            out.append(taint)
    return tuple(out)


BUILTIN_TAINTS = frozenset({TAINT_UNREACHABLE, TAINT_UNAVAILABLE})
"""Taint keys only the hub's health rules set and remove."""


def taints_on_write(
    written: Sequence[Taint], *, stored: Sequence[Taint], now: float
) -> tuple[Taint, ...]:
    """The taints to store when an admin writes a ManagedCluster's spec.

    The admin's taints, each with its ``timeAdded`` (kept from ``stored``, else now), and the
    built-in ones exactly as stored, whatever the written spec says of them: an ``apply -f``
    of an old file must neither drop an unreachable taint nor restart the tolerationSeconds
    that count from it (the health rules alone add and remove those).
    """
    admin = [t for t in written if t.key not in BUILTIN_TAINTS]
    builtin = [t for t in stored if t.key in BUILTIN_TAINTS]
    return (*stamp_taints(admin, previous=stored, now=now), *builtin)


# ---------------------------------------------------------------- ManagedClusterSet spec


class SelectorType(StrEnum):
    EXCLUSIVE_LABEL = "ExclusiveClusterSetLabel"
    LABEL_SELECTOR = "LabelSelector"


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSetSpec:
    selector_type: SelectorType = SelectorType.EXCLUSIVE_LABEL
    label_selector: LabelSelector = field(default_factory=LabelSelector)
    """Only for ``LabelSelector`` sets; the empty selector holds every cluster."""


def parse_set_spec(spec: object) -> ClusterSetSpec:
    """``ManagedClusterSet.spec``, or ``SpecError`` with every problem."""
    if not isinstance(spec, dict):
        raise SpecError([("/spec", "must be an object")])
    problems: list[tuple[str, str]] = []
    unknown = set(spec) - {"clusterSelector"}
    if unknown:
        problems.append(("/spec", f"unknown fields: {', '.join(sorted(map(str, unknown)))}"))
    selector = spec.get("clusterSelector")
    if selector is None:
        selector = {}
    if not isinstance(selector, dict):
        raise SpecError([*problems, ("/spec/clusterSelector", "must be an object")])
    unknown = set(selector) - {"selectorType", "labelSelector"}
    if unknown:
        problems.append(
            ("/spec/clusterSelector", f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
        )
    parsed = _set_selector(selector, problems)
    if problems:
        raise SpecError(problems)
    return parsed


def _set_selector(selector: Mapping[str, Any], problems: list[tuple[str, str]]) -> ClusterSetSpec:
    kind = selector.get("selectorType", str(SelectorType.EXCLUSIVE_LABEL))
    where = "/spec/clusterSelector/labelSelector"
    if not isinstance(kind, str) or kind not in set(SelectorType):
        problems.append(
            (
                "/spec/clusterSelector/selectorType",
                "must be ExclusiveClusterSetLabel or LabelSelector",
            )
        )
        return ClusterSetSpec()
    raw = selector.get("labelSelector")
    if kind == SelectorType.EXCLUSIVE_LABEL:
        if raw not in (None, {}):
            problems.append(
                (
                    where,
                    (
                        "must be empty for ExclusiveClusterSetLabel: members carry the label "
                        f"{CLUSTERSET_LABEL}=<set name>"
                    ),
                )
            )
        return ClusterSetSpec()
    if raw is None:
        problems.append((where, "is required for LabelSelector ({} selects every cluster)"))
    parsed = parse_label_selector_object(raw, where, problems)
    return ClusterSetSpec(selector_type=SelectorType.LABEL_SELECTOR, label_selector=parsed)


# ---------------------------------------------------------------- typed views


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterView:
    """What placement needs to know about one ManagedCluster."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    claims: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    allocatable_cpu: int | None = None
    """Millicores ("12" → 12000); None when the agent has not reported it."""
    allocatable_memory: int | None = None
    """Bytes ("32Gi" → 34359738368); None when the agent has not reported it."""
    accepted: bool = False
    """``spec.hubAcceptsClient``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSetView:
    name: str
    spec: ClusterSetSpec = field(default_factory=ClusterSetSpec)

    def contains(self, cluster: ClusterView) -> bool:
        if self.name == GLOBAL_SET:
            return True
        label = cluster.labels.get(CLUSTERSET_LABEL)
        if self.name == DEFAULT_SET:
            return label is None or label == DEFAULT_SET
        if self.spec.selector_type is SelectorType.EXCLUSIVE_LABEL:
            return label == self.name
        return self.spec.label_selector.matches(cluster.labels)


BUILTIN_SETS = (ClusterSetView(name=DEFAULT_SET), ClusterSetView(name=GLOBAL_SET))


def with_builtin_sets(sets: Iterable[ClusterSetView]) -> list[ClusterSetView]:
    """``sets`` by name, with ``default`` and ``global`` always present and always built in."""
    by_name = {s.name: s for s in sets}
    for builtin in BUILTIN_SETS:
        by_name[builtin.name] = builtin
    return [by_name[name] for name in sorted(by_name)]


def clusters_in_set(
    cluster_set: ClusterSetView, clusters: Iterable[ClusterView]
) -> list[ClusterView]:
    """The members of ``cluster_set`` among ``clusters``, by name."""
    return sorted((c for c in clusters if cluster_set.contains(c)), key=lambda c: c.name)


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _claims(status: Mapping[str, Any]) -> dict[str, str]:
    claims = status.get("clusterClaims")
    out: dict[str, str] = {}
    if not isinstance(claims, list):
        return out
    for claim in claims[:MAX_CLAIMS]:
        if not isinstance(claim, dict):
            continue
        name, value = claim.get("name"), claim.get("value")
        if isinstance(name, str) and isinstance(value, str) and len(value) <= MAX_CLAIM_VALUE:
            out[name] = value
    return out


def cluster_view(document: Mapping[str, Any]) -> ClusterView:
    """The view of a stored ManagedCluster document (metadata, spec, status).

    Never raises: the spec was checked on write, and what agents put in ``status`` is read
    leniently (a claim or quantity that makes no sense is left out). A spec that no longer
    parses makes the cluster not accepted, so no placement picks it.
    """
    metadata = document.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name")
    status = document.get("status")
    status = status if isinstance(status, dict) else {}
    try:
        spec = parse_spec(document.get("spec") or {})
    except SpecError:
        spec = ManagedClusterSpec()
    allocatable = status.get("allocatable")
    allocatable = allocatable if isinstance(allocatable, dict) else {}
    return ClusterView(
        name=name if isinstance(name, str) else "",
        labels=_string_map(metadata.get("labels")),
        claims=_claims(status),
        taints=spec.taints,
        allocatable_cpu=_quantity_or_none(allocatable.get("cpu"), 1000),
        allocatable_memory=_quantity_or_none(allocatable.get("memory"), 1),
        accepted=spec.hub_accepts_client,
    )


def cluster_set_view(document: Mapping[str, Any]) -> ClusterSetView:
    """The view of a stored ManagedClusterSet document.

    A spec that no longer parses holds only the clusters labelled with the set's name.
    """
    metadata = document.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name")
    try:
        spec = parse_set_spec(document.get("spec") or {})
    except SpecError:
        spec = ClusterSetSpec()
    return ClusterSetView(name=name if isinstance(name, str) else "", spec=spec)


# ---------------------------------------------------------------- health


@dataclass(frozen=True, kw_only=True, slots=True)
class HealthResult:
    available: dict[str, Any]
    """The ``Available`` condition as it should now read (put it with ``put_condition``)."""
    taints: tuple[Taint, ...]
    """The cluster's whole ``spec.taints``: the admin's kept, the built-in ones as they must be."""
    wake_at: float | None
    """When the lease runs out if not renewed (evaluate again then); None if it already has."""
    taints_changed: bool
    """Whether ``taints`` differ from the ones given (the spec needs a write)."""


def _health(
    *,
    lease_renewed_at: float | None,
    lease_seconds: int,
    apiserver_healthy: bool | None,
    now: float,
) -> tuple[str, str, str, float | None]:
    """(status, reason, message, lease deadline or None) of ``Available``."""
    grace = LEASE_GRACE_FACTOR * lease_seconds
    if lease_renewed_at is None:
        return (
            "Unknown",
            "ManagedClusterLeaseNeverRenewed",
            "The cluster agent has not renewed its lease since the cluster joined.",
            None,
        )
    deadline = lease_renewed_at + grace
    if now >= deadline:
        return (
            "Unknown",
            "ManagedClusterLeaseUpdateStopped",
            (
                f"The cluster agent has not renewed its lease since "
                f"{format_time(lease_renewed_at)} ({grace} s = {LEASE_GRACE_FACTOR} x "
                "leaseDurationSeconds)."
            ),
            None,
        )
    if apiserver_healthy is False:
        return (
            "False",
            "ManagedClusterKubeAPIServerUnavailable",
            "The cluster agent reports its Kubernetes API server unhealthy.",
            deadline,
        )
    if apiserver_healthy is None:
        message = "The cluster agent renews its lease (it has not reported its API server)."
    else:
        message = "The cluster agent renews its lease and its API server is healthy."
    return "True", "ManagedClusterAvailable", message, deadline


def evaluate_health(
    *,
    lease_renewed_at: float | None,
    lease_seconds: int,
    apiserver_healthy: bool | None,
    now: float,
    conditions: Iterable[Mapping[str, Any]],
    taints: Sequence[Taint],
) -> HealthResult:
    """The ``Available`` condition and built-in taints of one cluster at ``now``.

    ``lease_renewed_at``: the last renewal (None: never since it joined); ``lease_seconds``:
    the cluster's ``leaseDurationSeconds``; ``apiserver_healthy``: what the agent said with its
    last renewal (None: it did not say); ``conditions`` and ``taints``: the cluster's current
    status conditions and spec taints.
    """
    if not MIN_LEASE_SECONDS <= lease_seconds <= MAX_LEASE_SECONDS:
        raise ValueError(f"lease_seconds must be {MIN_LEASE_SECONDS}..{MAX_LEASE_SECONDS}")
    status, reason, message, deadline = _health(
        lease_renewed_at=lease_renewed_at,
        lease_seconds=lease_seconds,
        apiserver_healthy=apiserver_healthy,
        now=now,
    )
    available = next_condition(
        conditions, type_="Available", status=status, reason=reason, message=message, now=now
    )
    wanted = {TAINT_UNREACHABLE: status == "Unknown", TAINT_UNAVAILABLE: status == "False"}
    out: list[Taint] = []
    present: set[str] = set()
    for taint in taints:
        if taint.key not in wanted:
            out.append(taint)
        elif wanted[taint.key] and taint.key not in present:
            present.add(taint.key)
            out.append(_builtin(taint.key, taint.time_added, now))
    for key, want in wanted.items():
        if want and key not in present:
            out.append(_builtin(key, None, now))
    result = tuple(out)
    return HealthResult(
        available=available,
        taints=result,
        wake_at=deadline,
        taints_changed=result != tuple(taints),
    )


def _builtin(key: str, time_added: float | None, now: float) -> Taint:
    """A built-in taint: effect NoSelect, no value, ``timeAdded`` kept or stamped now."""
    return Taint(
        key=key,
        effect=TaintEffect.NO_SELECT,
        time_added=time_added if time_added is not None else float(math.floor(now)),
    )
