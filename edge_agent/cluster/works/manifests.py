"""The parts of a Work document the applier needs, checked (local, minimal parsing).

The hub validates Works in full (``fleet_model.work``); the agent checks again what it acts
on, because a document is input from outside: the name, the resourceVersion, each manifest's
``apiVersion``/``kind``/``metadata.name`` and size, and each manifestConfig's strategy. A bad
manifest is reported on its own (Applied False, InvalidManifest) while the others are applied;
only a document without a usable name or resourceVersion is refused whole (``WorkError``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_agent.cluster.works.kube import Resource, split_api_version, valid_kind
from edge_agent.cluster.works.settings import FIELD_MANAGER, WorkSettings

__all__ = [
    "Manifest",
    "ManifestConfig",
    "ParsedWork",
    "Strategy",
    "WorkError",
    "apply_order",
    "parse_work",
    "work_name",
]

StrategyType = Literal["ServerSideApply", "Update", "CreateOnly", "ReadOnly"]
STRATEGIES: tuple[StrategyType, ...] = ("ServerSideApply", "Update", "CreateOnly", "ReadOnly")
Propagation = Literal["Foreground", "Orphan"]

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_FIRST = {"Namespace": 0, "CustomResourceDefinition": 1}
"""Applied before the rest of a work: what other manifests may live in or be instances of."""


class WorkError(ValueError):
    """A Work document the applier cannot hold at all (the message says why)."""


def work_name(value: object) -> str:
    """``value`` as a work name (a DNS-1123 subdomain, also a safe file name); WorkError."""
    if not isinstance(value, str) or not 0 < len(value) <= 253 or not _NAME.match(value):
        raise WorkError(f"a work name is a DNS-1123 subdomain, got {str(value)[:80]!r}")
    return value


@dataclass(frozen=True)
class Strategy:
    type: StrategyType = "ServerSideApply"
    force: bool = False
    field_manager: str = FIELD_MANAGER


@dataclass(frozen=True)
class ManifestConfig:
    """One ``manifestConfigs`` entry: which resource, its feedback rules and strategy."""

    group: str
    resource: str
    namespace: str
    name: str
    feedback_rules: list[Any]
    strategy: Strategy

    def matches(self, resource: Resource, namespace: str, name: str) -> bool:
        return (
            self.group == resource.group
            and self.resource == resource.resource
            and self.namespace == (namespace if resource.namespaced else "")
            and self.name == name
        )


@dataclass(frozen=True)
class Manifest:
    """One manifest, by ordinal; ``problem`` set when it cannot be applied as written."""

    ordinal: int
    body: dict[str, Any]
    group: str = ""
    version: str = ""
    kind: str = ""
    name: str = ""
    namespace: str = ""
    problem: str | None = None


@dataclass(frozen=True)
class ParsedWork:
    name: str
    resource_version: int
    generation: int
    manifests: tuple[Manifest, ...]
    configs: tuple[ManifestConfig, ...]
    propagation: Propagation
    problems: tuple[str, ...] = field(default=())
    """Problems of the work as a whole (bad manifestConfigs, too many manifests)."""

    def config_for(self, resource: Resource, namespace: str, name: str) -> ManifestConfig | None:
        for config in self.configs:
            if config.matches(resource, namespace, name):
                return config
        return None


def _resource_version(metadata: Mapping[str, Any]) -> int:
    value = metadata.get("resourceVersion")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit() and len(value) <= 19:
        return int(value)
    raise WorkError("a work needs metadata.resourceVersion (a string of digits)")


def parse_work(document: object, *, settings: WorkSettings) -> ParsedWork:
    """What the applier acts on in ``document``; WorkError when it cannot be held."""
    if not isinstance(document, dict):
        raise WorkError("a work is a JSON object")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        raise WorkError("a work needs metadata")
    name = work_name(metadata.get("name"))
    resource_version = _resource_version(metadata)
    generation = metadata.get("generation")
    spec = document.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    problems: list[str] = []
    workload = spec.get("workload")
    listed = workload.get("manifests") if isinstance(workload, dict) else None
    if not isinstance(listed, list):
        problems.append("spec.workload.manifests is not a list")
        listed = []
    if len(listed) > settings.max_manifests:
        problems.append(
            f"{len(listed)} manifests; at most {settings.max_manifests} per work are applied"
        )
        listed = listed[: settings.max_manifests]
    manifests = tuple(_manifest(i, m, settings) for i, m in enumerate(listed))
    configs = tuple(_configs(spec.get("manifestConfigs"), problems))
    propagation: Propagation = "Foreground"
    option = spec.get("deleteOption")
    if isinstance(option, dict) and option.get("propagationPolicy") == "Orphan":
        propagation = "Orphan"
    return ParsedWork(
        name=name,
        resource_version=resource_version,
        generation=generation if isinstance(generation, int) and generation >= 0 else 0,
        manifests=manifests,
        configs=configs,
        propagation=propagation,
        problems=tuple(problems),
    )


def _manifest(ordinal: int, body: object, settings: WorkSettings) -> Manifest:
    if not isinstance(body, dict):
        return Manifest(ordinal, {}, problem="a manifest is a JSON object")
    size = len(json.dumps(body, separators=(",", ":")))
    if size > settings.max_manifest_bytes:
        return Manifest(
            ordinal,
            {},
            problem=f"{size} bytes; a manifest is at most {settings.max_manifest_bytes}",
        )
    api_version, kind = body.get("apiVersion"), body.get("kind")
    metadata = body.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name, namespace = metadata.get("name"), metadata.get("namespace", "")
    split = split_api_version(api_version) if isinstance(api_version, str) else None
    if split is None:
        problem = f"apiVersion {str(api_version)[:80]!r} is not group/version or version"
    elif not isinstance(kind, str) or not valid_kind(kind):
        problem = f"kind {str(kind)[:80]!r} is not a Kubernetes kind"
    elif not isinstance(name, str) or not 0 < len(name) <= 253 or "/" in name:
        problem = "metadata.name is missing or not a name"
    elif not isinstance(namespace, str) or len(namespace) > 63 or "/" in namespace:
        problem = "metadata.namespace is not a namespace name"
    else:
        return Manifest(ordinal, body, split[0], split[1], kind, name, namespace)
    return Manifest(ordinal, body, problem=problem)


def _strategy(raw: object) -> Strategy:
    if raw is None:
        return Strategy()
    if not isinstance(raw, dict) or raw.get("type", "ServerSideApply") not in STRATEGIES:
        raise WorkError(f"updateStrategy.type is one of {', '.join(STRATEGIES)}")
    kind: StrategyType = raw.get("type", "ServerSideApply")
    ssa = raw.get("serverSideApply")
    ssa = ssa if isinstance(ssa, dict) else {}
    force = ssa.get("force", False)
    manager = ssa.get("fieldManager") or FIELD_MANAGER
    if not isinstance(force, bool):
        raise WorkError("updateStrategy.serverSideApply.force is a boolean")
    # The hub's rule (fleet_model.work): 1 to 128 printable characters, the API server's own.
    if not isinstance(manager, str) or not 0 < len(manager) <= 128 or not manager.isprintable():
        raise WorkError("updateStrategy.serverSideApply.fieldManager is not a field manager name")
    return Strategy(type=kind, force=force, field_manager=manager)


def _configs(raw: object, problems: list[str]) -> list[ManifestConfig]:
    configs: list[ManifestConfig] = []
    for index, entry in enumerate(raw if isinstance(raw, list) else []):
        where = f"manifestConfigs[{index}]"
        ident = entry.get("resourceIdentifier") if isinstance(entry, dict) else None
        if not isinstance(ident, dict):
            problems.append(f"{where}: resourceIdentifier is missing")
            continue
        group, resource, namespace, name = (
            ident.get(key, "") for key in ("group", "resource", "namespace", "name")
        )
        values = (group, resource, namespace, name)
        if not all(isinstance(v, str) and len(v) <= 253 for v in values) or not (resource and name):
            problems.append(f"{where}: resourceIdentifier needs resource and name (strings)")
            continue
        try:
            strategy = _strategy(entry.get("updateStrategy"))
        except WorkError as error:
            problems.append(f"{where}: {error}")
            continue
        rules = entry.get("feedbackRules")
        configs.append(ManifestConfig(*values, rules if isinstance(rules, list) else [], strategy))
    return configs


def apply_order(manifests: tuple[Manifest, ...]) -> list[Manifest]:
    """Namespaces, then CRDs, then the rest, each in the work's order."""
    return sorted(manifests, key=lambda m: (_FIRST.get(m.kind, 2), m.ordinal))
