"""ResourcePolicy (``elastic.edgefleet.io/v1alpha1``): parsing, and which policy governs a pod.

Pure: no I/O, no clock. The cluster agent reads the objects from its member cluster (plain dicts
as the API server returns them) and calls these functions; ``fleet_model.elastic.units`` holds
what is done with a parsed policy (the webhook's patch, pod-deletion-cost, status).

The object, after Alibaba Cloud ACK's ResourcePolicy (docs/elastic.md)::

    apiVersion: elastic.edgefleet.io/v1alpha1
    kind: ResourcePolicy
    metadata: {name: web, namespace: shop}
    spec:
      selector: {matchLabels: {app: web}}        # pods of this namespace; empty = all of them
      units:                                     # in order of preference, 1..16
      - {name: local, nodeSelector: {edgefleet.io/site: dc1}}
      - {name: cloud, nodeSelector: {matchLabels: {pool: cloud}}, max: 4}
      - name: virtual
        nodeSelector: {matchExpressions: [{key: type, operator: In, values: [virtual-kubelet]}]}
      whenTryNextUnits: {policy: LackResourceOrExceedMax, timeoutSeconds: 60}
      matchLabelKeys: [pod-template-hash]        # each distinct value set counts on its own

Rules:

* Every problem of a document is reported at once (``SpecError``, JSON pointers). Everything is
  bounded before it is looked at: at most ``MAX_UNITS`` units, ``MAX_MATCH_LABEL_KEYS`` keys,
  selectors of at most 32 terms with short strings; messages quote at most ``_CLIP`` characters
  of what they complain about, and at most ``MAX_PROBLEMS`` problems are listed.
* A unit's ``nodeSelector`` is either a plain map of labels (as a pod's ``nodeSelector``) or a
  label selector object; it is the latter exactly when it has a ``matchLabels`` or
  ``matchExpressions`` key. Unit names are DNS labels, unique, default ``unit-<index>``.
* A node belongs to the FIRST unit whose selector matches its labels. A unit after one whose
  selector is empty (every node) could never be used and is refused. Units whose selectors
  overlap are allowed, but the webhook must exclude full earlier units with negated terms; when
  that would take more than ``MAX_EXCLUSION_TERMS`` node selector terms the policy is refused.
* ``whenTryNextUnits.policy`` decides when a pod may use a later unit (the webhook acts at pod
  creation only, since a pod's node affinity cannot change afterwards):

  - ``LackResourceOrExceedMax`` (the default, as in ACK): every unit not at its ``max`` is
    allowed, preferred in unit order; the scheduler spills to the next unit when the earlier
    ones lack resources.
  - ``ExceedMax``: only the first unit not at its ``max``. A unit without ``max`` is never
    full, so units after it are never used.
  - ``TimeoutOrExceedMax``: the first unit not at its ``max``; a later unit opens for a pod
    group once one of its pods has been unschedulable for ``timeoutSeconds`` (default 60,
    1..86400). The controller then deletes that stuck pod so its owner recreates it under the
    opened unit (``units.try_next``).

* Which policy governs a pod: among the policies of the pod's namespace whose selector matches
  the pod's labels, the oldest (``metadata.creationTimestamp``), then the smallest name. The
  others report the overlap in their status (``units.policy_status``); nothing is silently
  ignored.
* ``matchLabelKeys``: pods are counted per group, a group being the pods with the same values of
  these labels (a missing label is its own value), so each rollout of a Deployment
  (``pod-template-hash``) fills the units on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fleet_model.labels import LabelRequirement, LabelSelector, Op
from fleet_model.problems import SpecError, is_name
from fleet_model.selectors import label_problem, parse_label_selector_object
from fleet_model.times import parse_time

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "DEFAULT_TIMEOUT_SECONDS",
    "KIND",
    "MAX_EXCLUSION_TERMS",
    "MAX_MATCH_LABEL_KEYS",
    "MAX_UNITS",
    "GroupKey",
    "ResourcePolicy",
    "TryNextPolicy",
    "Unit",
    "WhenTryNextUnits",
    "disjoint",
    "exclusion_terms_worst_case",
    "governing_policy",
    "group_key",
    "matching_policies",
    "negate",
    "parse_resource_policy",
]

API_GROUP = "elastic.edgefleet.io"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "ResourcePolicy"

MAX_UNITS = 16
"""Units of one policy: local, a few pools, virtual capacity (the webhook's affinity grows
with it)."""
MAX_MATCH_LABEL_KEYS = 8
"""Label keys that split pods into groups (pod-template-hash is the usual one)."""
MAX_EXCLUSION_TERMS = 64
"""Node selector terms the webhook may need to exclude full units (see the rules above): the
scheduler evaluates each term for every node, so the bound keeps admission and scheduling cheap."""
DEFAULT_TIMEOUT_SECONDS = 60
"""How long a pod waits on its unit under TimeoutOrExceedMax (ACK's examples use 1 minute)."""
MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS = 1, 86_400
MAX_PROBLEMS = 64
"""Problems listed in one SpecError; a garbage document must not make a garbage-sized error."""
MAX_SELECTOR_TERMS = 32
MAX_SELECTOR_VALUES = 64
MAX_LABEL_KEY_CHARS = 317
"""A qualified name: a 253-character prefix, '/', a 63-character name."""
MAX_LABEL_VALUE_CHARS = 63
MAX_OPERATOR_CHARS = 16
_CLIP = 64
_DNS_LABEL_MAX = 63


class TryNextPolicy(StrEnum):
    LACK_RESOURCE_OR_EXCEED_MAX = "LackResourceOrExceedMax"
    EXCEED_MAX = "ExceedMax"
    TIMEOUT_OR_EXCEED_MAX = "TimeoutOrExceedMax"


@dataclass(frozen=True, kw_only=True, slots=True)
class WhenTryNextUnits:
    policy: TryNextPolicy = TryNextPolicy.LACK_RESOURCE_OR_EXCEED_MAX
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    """Seconds a pod stays unschedulable on its unit before the next one opens (Timeout only)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Unit:
    name: str
    node_selector: LabelSelector
    """Requirements in the written order; only In, NotIn, Exists and DoesNotExist (matchLabels
    entries are In with one value), which all translate to node affinity."""
    max: int | None = None
    """Pods of one group this unit takes at most; None: no limit."""


GroupKey = tuple[str | None, ...]
"""A pod's values of the policy's ``matchLabelKeys``, in their order (None: label absent)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResourcePolicy:
    namespace: str
    name: str
    created: float
    """``metadata.creationTimestamp`` in seconds (0 if absent: a policy not yet stored)."""
    generation: int | None
    selector: LabelSelector
    units: tuple[Unit, ...]
    when_try_next: WhenTryNextUnits
    match_label_keys: tuple[str, ...] = ()

    def selects(self, pod: Mapping[str, Any], *, namespace: str | None = None) -> bool:
        """The pod is in this policy's namespace and its labels match the selector.

        ``namespace``: the pod's namespace when its object does not say (admission requests
        carry it beside the object).
        """
        metadata = _metadata(pod)
        pod_namespace = metadata.get("namespace") or namespace
        return pod_namespace == self.namespace and self.selector.matches(_labels(metadata))

    def unit_index(self, name: object) -> int | None:
        for index, unit in enumerate(self.units):
            if unit.name == name:
                return index
        return None


# ---------------------------------------------------------------- parsing


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _CLIP else f"{text[:_CLIP]}..."


def _unknown(value: Mapping[Any, Any], allowed: set[str], path: str) -> list[tuple[str, str]]:
    unknown = [key for key in value if key not in allowed]
    if not unknown:
        return []
    shown = ", ".join(_clip(key) for key in sorted(unknown[:5], key=str))
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return [(path, f"unknown fields: {shown}{more}")]


def _short_strings(value: object, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit


def _screen_selector(value: object, path: str, problems: list[tuple[str, str]]) -> bool:
    """Bounds checked before the shared parser sees the selector (it quotes what it rejects)."""
    count = len(problems)
    if not isinstance(value, dict):
        problems.append((path, "must be an object"))
        return False
    problems.extend(_unknown(value, {"matchLabels", "matchExpressions"}, path))
    labels = value.get("matchLabels")
    if isinstance(labels, dict):
        if len(labels) > MAX_SELECTOR_TERMS:
            problems.append((f"{path}/matchLabels", f"at most {MAX_SELECTOR_TERMS} labels"))
        elif not all(
            _short_strings(k, MAX_LABEL_KEY_CHARS) and _short_strings(v, MAX_LABEL_VALUE_CHARS)
            for k, v in labels.items()
        ):
            problems.append((f"{path}/matchLabels", "keys and values must be label keys/values"))
    expressions = value.get("matchExpressions")
    if isinstance(expressions, list):
        if len(expressions) > MAX_SELECTOR_TERMS:
            problems.append((f"{path}/matchExpressions", f"at most {MAX_SELECTOR_TERMS} terms"))
        else:
            for index, item in enumerate(expressions):
                _screen_expression(item, f"{path}/matchExpressions/{index}", problems)
    return len(problems) == count


def _screen_expression(item: object, where: str, problems: list[tuple[str, str]]) -> None:
    if not isinstance(item, dict):
        return  # the shared parser says what it must be
    problems.extend(_unknown(item, {"key", "operator", "values"}, where))
    if not _short_strings(item.get("key"), MAX_LABEL_KEY_CHARS):
        problems.append((f"{where}/key", "must be a label key"))
    if not _short_strings(item.get("operator"), MAX_OPERATOR_CHARS):
        problems.append((f"{where}/operator", "must be In, NotIn, Exists or DoesNotExist"))
    values = item.get("values")
    if isinstance(values, list) and (
        len(values) > MAX_SELECTOR_VALUES
        or not all(_short_strings(v, MAX_LABEL_VALUE_CHARS) for v in values)
    ):
        problems.append(
            (f"{where}/values", f"at most {MAX_SELECTOR_VALUES} values, each a label value")
        )


def _selector(value: object, path: str, problems: list[tuple[str, str]]) -> LabelSelector:
    if value is None:
        return LabelSelector()
    if not _screen_selector(value, path, problems):
        return LabelSelector()
    return parse_label_selector_object(value, path, problems)


def _node_selector(value: object, path: str, problems: list[tuple[str, str]]) -> LabelSelector:
    if value is None:
        return LabelSelector()
    if isinstance(value, dict) and not ({"matchLabels", "matchExpressions"} & value.keys()):
        value = {"matchLabels": value}  # a plain map, as a pod's nodeSelector
        if not _screen_selector(value, path, problems):
            return LabelSelector()
        # The shared parser names the map's entries under .../matchLabels: point at the map.
        found: list[tuple[str, str]] = []
        selector = parse_label_selector_object(value, path, found)
        prefix = f"{path}/matchLabels"
        problems.extend((where.replace(prefix, path, 1), message) for where, message in found)
        return selector
    return _selector(value, path, problems)


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unit(
    item: object, index: int, names: set[str], problems: list[tuple[str, str]]
) -> Unit | None:
    where = f"/spec/units/{index}"
    if not isinstance(item, dict):
        problems.append((where, "must be an object {name, nodeSelector, max}"))
        return None
    count = len(problems)
    problems.extend(_unknown(item, {"name", "nodeSelector", "max"}, where))
    name = item.get("name", f"unit-{index}")
    if not (is_name(name) and isinstance(name, str) and len(name) <= _DNS_LABEL_MAX):
        problems.append((f"{where}/name", "must be a DNS label (a-z, 0-9, '-'; 1..63)"))
    elif "." in name:
        problems.append((f"{where}/name", "must be a DNS label (no dots)"))
    elif name in names:
        problems.append((f"{where}/name", f"{name!r} names an earlier unit too"))
    else:
        names.add(name)
    if "nodeSelector" not in item:
        problems.append((f"{where}/nodeSelector", "is required (the nodes of this unit)"))
    selector = _node_selector(item.get("nodeSelector"), f"{where}/nodeSelector", problems)
    limit = item.get("max")
    if limit is not None and (not _int(limit) or not 0 <= limit <= 2**31 - 1):
        problems.append((f"{where}/max", "must be an integer >= 0 (pods)"))
    if len(problems) > count:
        return None
    assert isinstance(name, str)  # noqa: S101 - checked above
    return Unit(name=name, node_selector=selector, max=limit)


def _units(value: object, problems: list[tuple[str, str]]) -> tuple[Unit, ...]:
    if not isinstance(value, list) or not value:
        problems.append(("/spec/units", "must be a non-empty list of units"))
        return ()
    if len(value) > MAX_UNITS:
        problems.append(("/spec/units", f"at most {MAX_UNITS} units (found {len(value)})"))
        return ()
    names: set[str] = set()
    found = [_unit(item, index, names, problems) for index, item in enumerate(value)]
    units = tuple(unit for unit in found if unit is not None)
    if len(units) < len(found):
        return ()
    for index, unit in enumerate(units[:-1]):
        if not unit.node_selector.requirements:
            problems.append(
                (
                    f"/spec/units/{index + 1}",
                    f"can never be used: unit {unit.name!r} before it selects every node",
                )
            )
            break
    terms = sum(exclusion_terms_worst_case(units, index) for index in range(len(units)))
    if terms > MAX_EXCLUSION_TERMS:
        problems.append(
            (
                "/spec/units",
                (
                    "the units' node selectors overlap so much that excluding full units would "
                    f"take {terms} node selector terms (at most {MAX_EXCLUSION_TERMS}): make "
                    "them disjoint (e.g. one label key with a different value per unit)"
                ),
            )
        )
    return units


def _when_try_next(value: object, problems: list[tuple[str, str]]) -> WhenTryNextUnits:
    where = "/spec/whenTryNextUnits"
    if value is None:
        return WhenTryNextUnits()
    if not isinstance(value, dict):
        problems.append((where, "must be an object {policy, timeoutSeconds}"))
        return WhenTryNextUnits()
    problems.extend(_unknown(value, {"policy", "timeoutSeconds"}, where))
    policy = value.get("policy", TryNextPolicy.LACK_RESOURCE_OR_EXCEED_MAX.value)
    if not isinstance(policy, str) or policy not in set(TryNextPolicy):
        problems.append(
            (f"{where}/policy", f"must be one of {', '.join(p.value for p in TryNextPolicy)}")
        )
        policy = TryNextPolicy.LACK_RESOURCE_OR_EXCEED_MAX
    timeout = value.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
    if not _int(timeout) or not MIN_TIMEOUT_SECONDS <= timeout <= MAX_TIMEOUT_SECONDS:
        problems.append(
            (
                f"{where}/timeoutSeconds",
                f"must be an integer {MIN_TIMEOUT_SECONDS}..{MAX_TIMEOUT_SECONDS} (seconds)",
            )
        )
        timeout = DEFAULT_TIMEOUT_SECONDS
    return WhenTryNextUnits(policy=TryNextPolicy(policy), timeout_seconds=timeout)


def _match_label_keys(value: object, problems: list[tuple[str, str]]) -> tuple[str, ...]:
    where = "/spec/matchLabelKeys"
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_MATCH_LABEL_KEYS:
        problems.append((where, f"must be a list of at most {MAX_MATCH_LABEL_KEYS} label keys"))
        return ()
    keys: list[str] = []
    for index, key in enumerate(value):
        problem = (
            label_problem(key, key=True)
            if _short_strings(key, MAX_LABEL_KEY_CHARS)
            else "must be a label key"
        )
        if problem is not None:
            problems.append((f"{where}/{index}", problem))
        elif key in keys:
            problems.append((f"{where}/{index}", f"{key!r} is listed twice"))
        else:
            keys.append(key)
    return tuple(keys)


def _envelope(
    doc: Mapping[str, Any], problems: list[tuple[str, str]]
) -> tuple[str, str, float, int | None]:
    for field, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        if field in doc and doc[field] != expected:
            problems.append((f"/{field}", f"must be {expected}"))
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        problems.append(("/metadata", "must be an object with name and namespace"))
        return "", "", 0.0, None
    names: list[str] = []
    for field in ("namespace", "name"):
        value = metadata.get(field)
        if not is_name(value) or not isinstance(value, str):
            problems.append((f"/metadata/{field}", "must be a DNS-1123 name"))
            value = ""
        names.append(value)
    created = 0.0
    if metadata.get("creationTimestamp") is not None:
        parsed = parse_time(metadata.get("creationTimestamp"))
        if parsed is None:
            problems.append(("/metadata/creationTimestamp", "must be an RFC 3339 time"))
        else:
            created = parsed
    generation = metadata.get("generation")
    return names[0], names[1], created, generation if _int(generation) else None


def parse_resource_policy(doc: object) -> ResourcePolicy:
    """The ResourcePolicy object ``doc`` (as the API server returns it), or SpecError.

    ``apiVersion`` and ``kind`` may be absent (a watch event's object always has them); when
    present they must be ours. ``status`` is never read here.
    """
    problems: list[tuple[str, str]] = []
    if not isinstance(doc, dict):
        raise SpecError([("", "must be an object {apiVersion, kind, metadata, spec}")])
    namespace, name, created, generation = _envelope(doc, problems)
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        problems.append(("/spec", "must be an object {selector, units, ...}"))
        spec = {}
    problems.extend(
        _unknown(
            spec, {"selector", "units", "whenTryNextUnits", "matchLabelKeys", "strategy"}, "/spec"
        )
    )
    if spec.get("strategy", "prefer") != "prefer":
        problems.append(("/spec/strategy", "must be prefer (the only strategy)"))
    selector = _selector(spec.get("selector"), "/spec/selector", problems)
    units = _units(spec.get("units"), problems)
    when = _when_try_next(spec.get("whenTryNextUnits"), problems)
    keys = _match_label_keys(spec.get("matchLabelKeys"), problems)
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(("", f"and {len(problems) - MAX_PROBLEMS} more problems"))
        raise SpecError(shown)
    return ResourcePolicy(
        namespace=namespace,
        name=name,
        created=created,
        generation=generation,
        selector=selector,
        units=units,
        when_try_next=when,
        match_label_keys=keys,
    )


# ---------------------------------------------------------------- selector algebra


def negate(requirement: LabelRequirement) -> LabelRequirement:
    """The requirement a node meets exactly when it does not meet ``requirement``."""
    flipped = {
        Op.EQUALS: Op.NOT_IN,
        Op.IN: Op.NOT_IN,
        Op.NOT_EQUALS: Op.IN,
        Op.NOT_IN: Op.IN,
        Op.EXISTS: Op.NOT_EXISTS,
        Op.NOT_EXISTS: Op.EXISTS,
    }.get(requirement.op)
    if flipped is None:
        raise ValueError(f"cannot negate {requirement} as one node selector requirement")
    return LabelRequirement(requirement.key, flipped, requirement.values)


def _values_if_present(requirement: LabelRequirement) -> frozenset[str] | None:
    """The values a label must have to meet ``requirement`` (None: any value, or absence)."""
    if requirement.op in {Op.EQUALS, Op.IN}:
        return frozenset(requirement.values)
    return None


def _contradict(a: LabelRequirement, b: LabelRequirement) -> bool:
    """No label set meets both (checked only for the shapes units use; False when unsure)."""
    if a.key != b.key:
        return False
    present = {Op.EQUALS, Op.IN, Op.EXISTS}
    if (a.op in present and b.op is Op.NOT_EXISTS) or (b.op in present and a.op is Op.NOT_EXISTS):
        return True
    values_a, values_b = _values_if_present(a), _values_if_present(b)
    if values_a is not None and values_b is not None:
        return not values_a & values_b
    if values_a is not None and b.op in {Op.NOT_IN, Op.NOT_EQUALS}:
        return values_a <= set(b.values)
    if values_b is not None and a.op in {Op.NOT_IN, Op.NOT_EQUALS}:
        return values_b <= set(a.values)
    return False


def disjoint(a: Iterable[LabelRequirement], b: Iterable[LabelRequirement]) -> bool:
    """True when no node can meet all of ``a`` and all of ``b`` (a sound, partial test)."""
    second = tuple(b)
    return any(_contradict(x, y) for x in a for y in second)


def exclusion_terms_worst_case(units: Sequence[Unit], index: int) -> int:
    """Node selector terms unit ``index`` needs when every unit before it is full."""
    own = units[index].node_selector.requirements
    product = 1
    for earlier in units[:index]:
        requirements = earlier.node_selector.requirements
        if not requirements:
            return 0  # an earlier unit takes every node: this one is unreachable
        if not disjoint(own, requirements):
            product *= len(requirements)
            if product > MAX_EXCLUSION_TERMS:
                return MAX_EXCLUSION_TERMS + 1
    return product


# ---------------------------------------------------------------- pods and policies


def _metadata(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = pod.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _labels(metadata: Mapping[str, Any]) -> Mapping[str, str]:
    labels = metadata.get("labels")
    if not isinstance(labels, dict):
        return {}
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}


def group_key(policy: ResourcePolicy, pod: Mapping[str, Any]) -> GroupKey:
    """The pod's group under ``policy``: its values of ``matchLabelKeys`` (None when absent)."""
    labels = _labels(_metadata(pod))
    return tuple(labels.get(key) for key in policy.match_label_keys)


def _seniority(policy: ResourcePolicy) -> tuple[float, str]:
    # A policy without a creation time (not stored yet) is the newest: stored ones keep their pods.
    created = policy.created if policy.created > 0 else math.inf
    return (created, policy.name)


def matching_policies(
    pod: Mapping[str, Any], policies: Iterable[ResourcePolicy], *, namespace: str | None = None
) -> list[ResourcePolicy]:
    """The policies that select ``pod``, the governing one first (oldest, then by name)."""
    found = [policy for policy in policies if policy.selects(pod, namespace=namespace)]
    return sorted(found, key=_seniority)


def governing_policy(
    pod: Mapping[str, Any], policies: Iterable[ResourcePolicy], *, namespace: str | None = None
) -> ResourcePolicy | None:
    """The policy that governs ``pod``: of those selecting it, the oldest, then by name."""
    found = matching_policies(pod, policies, namespace=namespace)
    return found[0] if found else None
