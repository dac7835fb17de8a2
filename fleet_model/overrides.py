"""Per-cluster overrides of a WorkSet's manifests (Karmada's OverridePolicy, in a WorkSet).

An override selects clusters (``clusterSelector``: ``clusterNames`` and/or a ``labelSelector``;
both given means both must match, as Karmada's ClusterAffinity; none means every cluster) and
resources (``resourceSelector``: ``group``, ``kind``, ``namespace``, ``name``; an empty field
matches any), and changes each selected manifest with exactly one of:

* ``mergePatch``: a JSON merge patch (RFC 7386: objects merge, ``null`` deletes, the rest
  replaces), written here in a few lines;
* ``jsonPatch``: a JSON patch (RFC 6902 operations), applied by ``jsonpatch``.

Rules:

* Overrides apply in their order; each sees what the earlier ones made.
* Overrides are parsed and checked when the WorkSet is (``parse_overrides``): a malformed
  patch is refused with the WorkSet. What can only fail against a manifest (a JSON patch
  ``test``, a path that is not there) fails when the Work of a cluster is rendered:
  ``OverrideError`` names the override and the manifest, so the hub reports it on the WorkSet.
* A patched manifest must still be a Kubernetes object, and keep its identity (group, kind,
  namespace, name): an override changes how an object looks on a cluster, not which object
  it is (two manifests could otherwise collide).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import jsonpatch
import jsonpointer

from fleet_model import selectors
from fleet_model.labels import LabelSelector
from fleet_model.problems import SpecError, escape, is_name
from fleet_model.work import Manifest, parse_manifest

__all__ = [
    "MAX_OVERRIDES",
    "ClusterLike",
    "ClusterSelector",
    "Override",
    "OverrideError",
    "ResourceSelector",
    "apply_overrides",
    "merge_patch",
    "parse_label_selector_object",
    "parse_overrides",
]

MAX_OVERRIDES: Final = 100
MAX_OPERATIONS: Final = 100
"""Per JSON patch: more edits than this for one cluster is a different template."""
MAX_CLUSTER_NAMES: Final = 1000
MAX_EXPRESSIONS: Final = 32
MAX_DEPTH: Final = 64
"""Nesting of a merge patch or a JSON patch value: bounds the recursion of ``merge_patch``."""
JSON_PATCH_OPS: Final = ("add", "remove", "replace", "move", "copy", "test")

Problems = list[tuple[str, str]]


class OverrideError(SpecError):
    """An override could not be applied to a cluster's manifests (every problem, with where)."""


class ClusterLike(Protocol):
    """What an override needs to know of a cluster (a ManagedCluster view)."""

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSelector:
    names: frozenset[str] | None = None
    """None: any name."""
    labels: LabelSelector | None = None
    """None: any labels."""

    def matches(self, cluster: ClusterLike) -> bool:
        if self.names is not None and cluster.name not in self.names:
            return False
        return self.labels is None or self.labels.matches(cluster.labels)


@dataclass(frozen=True, kw_only=True, slots=True)
class ResourceSelector:
    group: str = ""
    kind: str = ""
    namespace: str = ""
    name: str = ""
    """Each: "" matches any."""

    def matches(self, manifest: Manifest) -> bool:
        return (
            (not self.group or self.group == manifest.group)
            and (not self.kind or self.kind == manifest.kind)
            and (not self.namespace or self.namespace == (manifest.namespace or ""))
            and (not self.name or self.name == manifest.name)
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Override:
    index: int
    """Its place in ``spec.overrides`` (named in errors)."""
    clusters: ClusterSelector
    resources: ResourceSelector
    merge_patch: Mapping[str, Any] | None = None
    json_patch: tuple[Mapping[str, Any], ...] | None = None


# ---------------------------------------------------------------- parsing


def _depth(value: object, limit: int = MAX_DEPTH) -> int:
    """How deep ``value`` nests, stopping once past ``limit`` (so junk costs little)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def parse_label_selector_object(
    value: object, path: str, problems: Problems
) -> LabelSelector | None:
    """A Kubernetes LabelSelector ``{matchLabels, matchExpressions}``; None if absent/invalid."""
    if value is None:
        return None
    before = len(problems)
    selector = selectors.parse_label_selector_object(value, path, problems)
    return None if len(problems) > before else selector


def _cluster_selector(value: object, path: str, problems: Problems) -> ClusterSelector:
    if value is None:
        return ClusterSelector()
    if not isinstance(value, dict):
        problems.append((path, "must be {clusterNames, labelSelector}"))
        return ClusterSelector()
    for key in value:
        if key not in {"clusterNames", "labelSelector"}:
            problems.append((f"{path}/{escape(str(key))}", "unknown field"))
    names: frozenset[str] | None = None
    raw = value.get("clusterNames")
    if raw is not None:
        if not isinstance(raw, list) or len(raw) > MAX_CLUSTER_NAMES:
            problems.append(
                (f"{path}/clusterNames", f"must be a list of at most {MAX_CLUSTER_NAMES} names")
            )
        else:
            bad = [i for i, name in enumerate(raw) if not is_name(name)]
            problems.extend((f"{path}/clusterNames/{i}", "must be a cluster name") for i in bad)
            names = frozenset(str(name) for name in raw)
    labels = parse_label_selector_object(
        value.get("labelSelector"), f"{path}/labelSelector", problems
    )
    return ClusterSelector(names=names, labels=labels)


def _resource_selector(value: object, path: str, problems: Problems) -> ResourceSelector:
    if value is None:
        return ResourceSelector()
    if not isinstance(value, dict):
        problems.append((path, "must be {group, kind, namespace, name}"))
        return ResourceSelector()
    fields: dict[str, str] = {}
    for key, item in value.items():
        if key not in {"group", "kind", "namespace", "name"}:
            problems.append((f"{path}/{escape(str(key))}", "unknown field"))
        elif item is not None and (not isinstance(item, str) or len(item) > 253):
            problems.append((f"{path}/{key}", "must be a string (empty matches any)"))
        elif item:
            fields[str(key)] = item
    return ResourceSelector(**fields)


def _json_patch(
    value: object, path: str, problems: Problems
) -> tuple[Mapping[str, Any], ...] | None:
    if not isinstance(value, list) or not value or len(value) > MAX_OPERATIONS:
        problems.append((path, f"must be a list of 1 to {MAX_OPERATIONS} RFC 6902 operations"))
        return None
    before = len(problems)
    for index, operation in enumerate(value):
        where = f"{path}/{index}"
        if not isinstance(operation, dict) or operation.get("op") not in JSON_PATCH_OPS:
            problems.append((where, f"must be an operation {{op: {'|'.join(JSON_PATCH_OPS)}}}"))
            continue
        if operation["op"] in {"add", "replace", "test"} and "value" not in operation:
            problems.append((where, f"{operation['op']} needs a value"))
        if operation["op"] in {"move", "copy"} and not isinstance(operation.get("from"), str):
            problems.append((where, f"{operation['op']} needs from (a JSON pointer)"))
        if _depth(operation.get("value")) > MAX_DEPTH:
            problems.append((f"{where}/value", f"nests deeper than {MAX_DEPTH}"))
        try:
            jsonpatch.JsonPatch([operation])
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
            problems.append((where, str(error)))
    if len(problems) > before:
        return None
    return tuple(value)


def _override(index: int, value: object, path: str, problems: Problems) -> Override | None:
    if not isinstance(value, dict):
        problems.append((path, "must be {clusterSelector, resourceSelector, mergePatch|jsonPatch}"))
        return None
    for key in value:
        if key not in {"clusterSelector", "resourceSelector", "mergePatch", "jsonPatch"}:
            problems.append((f"{path}/{escape(str(key))}", "unknown field"))
    before = len(problems)
    clusters = _cluster_selector(value.get("clusterSelector"), f"{path}/clusterSelector", problems)
    resources = _resource_selector(
        value.get("resourceSelector"), f"{path}/resourceSelector", problems
    )
    merge, operations = value.get("mergePatch"), value.get("jsonPatch")
    if (merge is None) == (operations is None):
        problems.append((path, "needs exactly one of mergePatch and jsonPatch"))
        return None
    json_ops = None
    if merge is not None:
        if not isinstance(merge, dict):
            problems.append((f"{path}/mergePatch", "must be an object (merged into the manifest)"))
        elif _depth(merge) > MAX_DEPTH:
            problems.append((f"{path}/mergePatch", f"nests deeper than {MAX_DEPTH}"))
    else:
        json_ops = _json_patch(operations, f"{path}/jsonPatch", problems)
    if len(problems) > before:
        return None
    return Override(
        index=index,
        clusters=clusters,
        resources=resources,
        merge_patch=merge,
        json_patch=json_ops,
    )


def parse_overrides(value: object, *, base: str = "/spec/overrides") -> tuple[Override, ...]:
    """A WorkSet's ``overrides``, or ``SpecError`` with every problem."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_OVERRIDES:
        raise SpecError([(base, f"must be a list of at most {MAX_OVERRIDES} overrides")])
    problems: Problems = []
    out = [_override(i, item, f"{base}/{i}", problems) for i, item in enumerate(value)]
    if problems:
        raise SpecError(problems)
    return tuple(item for item in out if item is not None)


# ---------------------------------------------------------------- applying


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch of ``target`` by ``patch``; neither is changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _patched(override: Override, body: Mapping[str, Any]) -> object:
    if override.merge_patch is not None:
        return merge_patch(body, override.merge_patch)
    patch = jsonpatch.JsonPatch(list(override.json_patch or ()))
    return patch.apply(body, in_place=False)


def _identity(manifest: Manifest) -> tuple[str, str, str | None, str]:
    return (manifest.group, manifest.kind, manifest.namespace, manifest.name)


def apply_overrides(
    manifests: Sequence[Manifest], overrides: Sequence[Override], cluster: ClusterLike
) -> tuple[Manifest, ...]:
    """``manifests`` as ``cluster`` gets them, or ``OverrideError`` naming each failure."""
    problems: Problems = []
    out: list[Manifest] = []
    chosen = [o for o in overrides if o.clusters.matches(cluster)]
    for manifest in manifests:
        current = manifest
        for override in chosen:
            if not override.resources.matches(current):
                continue
            where = f"/spec/overrides/{override.index}/" + (
                "mergePatch" if override.merge_patch is not None else "jsonPatch"
            )
            label = f"manifest {manifest.ordinal} ({manifest.describe()}) on {cluster.name}"
            try:
                body = _patched(override, current.body)
            except (
                jsonpatch.JsonPatchException,
                jsonpointer.JsonPointerException,
                KeyError,
                IndexError,
                TypeError,
                ValueError,
            ) as error:
                problems.append((where, f"{label}: {str(error) or type(error).__name__}"))
                break
            try:
                patched = parse_manifest(body, manifest.ordinal, "")
            except SpecError as error:
                found = "; ".join(f"{p or '/'}: {m}" for p, m in error.problems)
                problems.append((where, f"{label}: not a Kubernetes object after it: {found}"))
                break
            if _identity(patched) != _identity(manifest):
                problems.append((where, f"{label}: may not change group, kind, namespace or name"))
                break
            current = patched
        out.append(current)
    if problems:
        raise OverrideError(problems)
    return tuple(out)
