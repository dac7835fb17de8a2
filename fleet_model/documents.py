"""Fleet documents: the envelope every fleet object shares, checked before its spec.

A fleet object is a document ``{apiVersion: fleet.edgefleet.io/v1alpha1, kind, metadata, spec,
status}`` in the shapes Open Cluster Management's users know (docs/fleet.md). This module checks
the envelope (version, kind, name, labels, annotations) and hands the spec to the parser of its
kind, which lives beside that kind's rules (``cluster``, ``placement``, ``work``, ``workset``,
``gitsource``, ``gateway.route`` for MultiClusterRoute). Every problem found is reported at
once, each with the JSON pointer of the offending field, so an operator fixes a document in one
round.

Rules:

* ``status`` is never read here: only the hub and the agents write it, through their own paths.
* ``metadata.resourceVersion`` is kept as a precondition (an int), every other server-set field
  (uid, generation, creationTimestamp) is ignored on input.
* Names are DNS-1123 subdomains (what Kubernetes allows for most objects), at most 253 chars.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet_model import cluster, gitsource, placement, work, workset
from fleet_model.gateway import route as gateway_route
from fleet_model.labels import SelectorError, validate_label_key, validate_label_value
from fleet_model.problems import MAX_NAME, SpecError, escape, is_name

__all__ = [
    "API_VERSION",
    "KINDS",
    "MAX_ANNOTATIONS_BYTES",
    "PLURALS",
    "FleetDocument",
    "KindInfo",
    "SpecError",
    "is_name",
    "validate_document",
]

API_VERSION = "fleet.edgefleet.io/v1alpha1"
MAX_ANNOTATIONS_BYTES = 64 * 1024
"""Kubernetes' own bound on all annotations of one object."""
MAX_LABELS = 64
"""More labels than this on one fleet object is a mistake, not a need."""


@dataclass(frozen=True, kw_only=True)
class KindInfo:
    kind: str
    plural: str
    parse_spec: Callable[[object], object]
    """Raises ``SpecError`` (paths relative to the document, e.g. ``/spec/predicates/0``)."""


@dataclass(frozen=True, kw_only=True)
class FleetDocument:
    kind: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)
    resource_version: int | None = None
    """The caller's precondition: write only if the stored object is still at this version."""
    parsed: object = None
    """What the kind's ``parse_spec`` made of ``spec``."""


def _kinds() -> dict[str, KindInfo]:
    infos = [
        KindInfo(kind="ManagedCluster", plural="managedclusters", parse_spec=cluster.parse_spec),
        KindInfo(
            kind="ManagedClusterSet",
            plural="managedclustersets",
            parse_spec=cluster.parse_set_spec,
        ),
        KindInfo(kind="Placement", plural="placements", parse_spec=placement.parse_spec),
        KindInfo(kind="Work", plural="works", parse_spec=work.parse_spec),
        KindInfo(kind="WorkSet", plural="worksets", parse_spec=workset.parse_spec),
        KindInfo(kind="GitSource", plural="gitsources", parse_spec=gitsource.parse_spec),
        KindInfo(
            kind=gateway_route.KIND,
            plural="multiclusterroutes",
            parse_spec=gateway_route.parse_spec,
        ),
    ]
    return {info.kind: info for info in infos}


KINDS: dict[str, KindInfo] = _kinds()
PLURALS: dict[str, str] = {info.plural: info.kind for info in KINDS.values()}


def _string_map(
    value: object, path: str, problems: list[tuple[str, str]], *, labels: bool
) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append((path, "must be an object of strings"))
        return {}
    out: dict[str, str] = {}
    for key, item in value.items():
        where = f"{path}/{escape(str(key))}"
        if not isinstance(item, str):
            problems.append((where, "must be a string"))
            continue
        try:
            validate_label_key(key)
            if labels:
                validate_label_value(item)
        except SelectorError as error:
            problems.append((where, str(error)))
            continue
        out[key] = item
    if labels and len(out) > MAX_LABELS:
        problems.append((path, f"at most {MAX_LABELS} labels"))
    if not labels and len(json.dumps(out)) > MAX_ANNOTATIONS_BYTES:
        problems.append((path, f"annotations exceed {MAX_ANNOTATIONS_BYTES} bytes"))
    return out


_NAME_RULE = (
    "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', "
    f"at most {MAX_NAME} characters, starting and ending with a letter or digit"
)


def _kind_of(
    doc: dict[str, Any], kind: str | None, problems: list[tuple[str, str]]
) -> KindInfo | None:
    if doc.get("apiVersion") != API_VERSION:
        problems.append(("/apiVersion", f"must be {API_VERSION!r}"))
    found = doc.get("kind")
    info = KINDS.get(found) if isinstance(found, str) else None
    if info is None:
        problems.append(("/kind", f"must be one of {', '.join(sorted(KINDS))}"))
    elif kind is not None and found != kind:
        problems.append(("/kind", f"must be {kind!r} here, not {found!r}"))
    return info


def _resource_version(value: object, problems: list[tuple[str, str]]) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isdigit() and len(value) <= 18:
        return int(value)
    problems.append(("/metadata/resourceVersion", "must be the string of a non-negative integer"))
    return None


def validate_document(doc: object, *, kind: str | None = None) -> FleetDocument:
    """The envelope and spec of ``doc``, or ``SpecError`` with every problem found.

    ``kind``: the kind the caller expects (the URL's), so a document of another kind is refused.
    """
    problems: list[tuple[str, str]] = []
    if not isinstance(doc, dict):
        raise SpecError([("", "a fleet document must be a JSON/YAML object")])
    info = _kind_of(doc, kind, problems)
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        problems.append(("/metadata", "must be an object with at least a name"))
        metadata = {}
    name = metadata.get("name")
    if not is_name(name):
        problems.append(("/metadata/name", _NAME_RULE))
    labels = _string_map(metadata.get("labels"), "/metadata/labels", problems, labels=True)
    annotations = _string_map(
        metadata.get("annotations"), "/metadata/annotations", problems, labels=False
    )
    version = _resource_version(metadata.get("resourceVersion"), problems)
    spec = doc.get("spec", {})
    if spec is None:
        spec = {}
    parsed: object = None
    if not isinstance(spec, dict):
        problems.append(("/spec", "must be an object"))
    elif info is not None:
        try:
            parsed = info.parse_spec(spec)
        except SpecError as error:
            problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    assert info is not None  # noqa: S101 - problems were raised otherwise
    assert isinstance(name, str)  # noqa: S101
    assert isinstance(spec, dict)  # noqa: S101
    return FleetDocument(
        kind=info.kind,
        name=name,
        labels=labels,
        annotations=annotations,
        spec=spec,
        resource_version=version,
        parsed=parsed,
    )
