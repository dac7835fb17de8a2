"""Work: the manifests for one member cluster, and how its status is summed up.

A Work is OCM's ManifestWork in our envelope (docs/fleet/works.md). Its spec names the cluster
(``clusterName``), carries the Kubernetes objects to apply there (``workload.manifests``), per
resource options (``manifestConfigs``: status feedback rules and the update strategy) and what
happens to the applied resources when the Work goes (``deleteOption``). The hub only stores and
carries Works; the cluster agent applies them and reports per manifest conditions, which
``aggregate_conditions`` turns into the work-level ones.

Rules:

* Every problem of a spec is reported at once, each with its JSON pointer (``SpecError``).
* A manifest is a Kubernetes object: ``apiVersion``, ``kind``, ``metadata.name`` (never
  ``generateName``: a Work is declarative, the agent must find what it applied), namespace
  optional (cluster-scoped objects have none). At most ``MAX_MANIFESTS``; one object at most once.
* Defaults as OCM's, but server-side apply first: ``updateStrategy`` ServerSideApply with field
  manager ``edgefleet-work`` (OCM's default is Update with manager ``work-agent``),
  ``deleteOption`` Foreground.
* Unknown fields of the spec are refused (a typo such as ``manifestConfig`` would otherwise be
  silently ignored); the manifests themselves are the member API server's to judge.
* Conditions are Kubernetes-style; ``lastTransitionTime`` only moves when ``status`` changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fleet_model.problems import SpecError, escape, is_name
from fleet_model.times import format_time as rfc3339
from fleet_model.times import parse_time

__all__ = [
    "DEFAULT_FIELD_MANAGER",
    "DELETE_POLICIES",
    "MAX_MANIFESTS",
    "UPDATE_TYPES",
    "FeedbackRule",
    "JsonPathRule",
    "Manifest",
    "ManifestConfig",
    "ResourceIdentifier",
    "UpdateStrategy",
    "WorkSpec",
    "WorkTemplate",
    "aggregate_conditions",
    "find_condition",
    "parse_manifest",
    "parse_spec",
    "parse_template",
    "rfc3339",
    "set_condition",
]

MAX_MANIFESTS: Final = 500
"""More objects than this in one Work is a bundle that should be split (and the 512 KiB size
limit of a Work would bite first for real objects)."""
MAX_MANIFEST_CONFIGS: Final = 500
MAX_FEEDBACK_RULES: Final = 8
MAX_JSON_PATHS: Final = 32
"""Status feedback is for a few scalars a dashboard shows, not a copy of the status."""
MAX_JSON_PATH_LENGTH: Final = 512
MAX_FIELD_MANAGER: Final = 128
"""The API server's own limit on a field manager's name."""
MAX_MESSAGE: Final = 1024
"""Condition messages are cut here: the API server's messages can be long, a summary need not."""

DEFAULT_FIELD_MANAGER: Final = "edgefleet-work"
UPDATE_TYPES: Final = ("ServerSideApply", "Update", "CreateOnly", "ReadOnly")
DELETE_POLICIES: Final = ("Foreground", "Orphan")
FEEDBACK_TYPES: Final = ("WellKnownStatus", "JSONPaths")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,62}$")
_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_FEEDBACK_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

Problems = list[tuple[str, str]]


# ---------------------------------------------------------------- typed spec


@dataclass(frozen=True, kw_only=True, slots=True)
class Manifest:
    """One Kubernetes object of a Work, with its identity read out."""

    ordinal: int
    """Its index in ``workload.manifests`` (the agent reports status by it)."""
    group: str
    """API group; "" for the core group (``apiVersion: v1``)."""
    version: str
    kind: str
    namespace: str | None
    name: str
    body: Mapping[str, Any]
    """The object as given (the agent applies this)."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def describe(self) -> str:
        """Human form for messages: ``apps/Deployment default/web``."""
        kind = f"{self.group}/{self.kind}" if self.group else self.kind
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{kind} {where}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ResourceIdentifier:
    """Which applied resource a manifest config is for (OCM's, by resource not kind).

    ``namespace`` "" means cluster-scoped; ``"*"`` in namespace or name matches any (ours).
    """

    group: str
    resource: str
    namespace: str
    name: str

    def matches(self, *, group: str, resource: str, namespace: str | None, name: str) -> bool:
        return (
            self.group == group
            and self.resource == resource
            and self.namespace in {"*", namespace or ""}
            and self.name in {"*", name}
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class JsonPathRule:
    name: str
    path: str
    """A JSONPath into the object, as OCM writes it: ``.status.readyReplicas``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FeedbackRule:
    type: str
    """``WellKnownStatus`` or ``JSONPaths``."""
    json_paths: tuple[JsonPathRule, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class UpdateStrategy:
    type: str = "ServerSideApply"
    force: bool = False
    """Server-side apply only: take over fields another manager owns (else: Conflict)."""
    field_manager: str = DEFAULT_FIELD_MANAGER


DEFAULT_UPDATE_STRATEGY: Final = UpdateStrategy()


@dataclass(frozen=True, kw_only=True, slots=True)
class ManifestConfig:
    resource_identifier: ResourceIdentifier
    feedback_rules: tuple[FeedbackRule, ...] = ()
    update_strategy: UpdateStrategy | None = None
    """None: the default (server-side apply as ``edgefleet-work``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkTemplate:
    """A Work spec without its cluster: what a WorkSet stamps out per cluster."""

    manifests: tuple[Manifest, ...] = ()
    manifest_configs: tuple[ManifestConfig, ...] = ()
    delete_propagation: str = "Foreground"

    def config_for(
        self, *, group: str, resource: str, namespace: str | None, name: str
    ) -> ManifestConfig | None:
        """The first manifest config for this resource (the agent knows kind → resource)."""
        for config in self.manifest_configs:
            if config.resource_identifier.matches(
                group=group, resource=resource, namespace=namespace, name=name
            ):
                return config
        return None

    def update_strategy_for(
        self, *, group: str, resource: str, namespace: str | None, name: str
    ) -> UpdateStrategy:
        config = self.config_for(group=group, resource=resource, namespace=namespace, name=name)
        if config is None or config.update_strategy is None:
            return DEFAULT_UPDATE_STRATEGY
        return config.update_strategy


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkSpec(WorkTemplate):
    cluster_name: str = field(default="")


# ---------------------------------------------------------------- parsing


def _only(value: Mapping[str, Any], allowed: Sequence[str], path: str, problems: Problems) -> None:
    for key in value:
        if key not in allowed:
            problems.append(
                (f"{path}/{escape(str(key))}", f"unknown field; expected {', '.join(allowed)}")
            )


def _object(value: object, path: str, problems: Problems, *, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append((path, f"{what} must be an object"))
        return None
    return value


def _string(
    value: object, path: str, problems: Problems, *, required: bool, default: str = ""
) -> str:
    if value is None or value == "":
        if required:
            problems.append((path, "is required"))
        return default
    if not isinstance(value, str):
        problems.append((path, "must be a string"))
        return default
    return value


def _is_object_name(value: str) -> bool:
    """What the API server takes as a name in a path (apimachinery IsValidPathSegmentName)."""
    return (
        0 < len(value) <= 253
        and value not in {".", ".."}
        and not any(char in value for char in "/%")
        and value.isprintable()
        and value.strip() == value
    )


def _api_version(value: str, path: str, problems: Problems) -> tuple[str, str]:
    group, slash, version = value.rpartition("/")
    if slash and not is_name(group):
        problems.append((path, f"group {group!r} must be a DNS subdomain"))
    if not version or len(version) > 63 or not _DNS_LABEL.match(version):
        problems.append((path, "must be 'version' or 'group/version', e.g. 'v1', 'apps/v1'"))
    return group, version


def parse_manifest(value: object, ordinal: int, path: str) -> Manifest:
    """One Kubernetes object, or ``SpecError`` (overrides re-check what they patched)."""
    problems: Problems = []
    manifest = _manifest(value, ordinal, path, problems)
    if problems or manifest is None:
        raise SpecError(problems or [(path, "must be a Kubernetes object")])
    return manifest


def _manifest(value: object, ordinal: int, path: str, problems: Problems) -> Manifest | None:
    if not isinstance(value, dict):
        problems.append((path, "a manifest must be a Kubernetes object"))
        return None
    before = len(problems)
    api_version = _string(value.get("apiVersion"), f"{path}/apiVersion", problems, required=True)
    group, version = (
        _api_version(api_version, f"{path}/apiVersion", problems) if api_version else ("", "")
    )
    kind = _string(value.get("kind"), f"{path}/kind", problems, required=True)
    if kind and not _KIND.match(kind):
        problems.append((f"{path}/kind", "must be a Kubernetes kind (letters and digits)"))
    metadata = value.get("metadata")
    name, namespace = "", None
    if not isinstance(metadata, dict):
        problems.append((f"{path}/metadata", "must be an object with at least a name"))
    else:
        if "generateName" in metadata:
            problems.append(
                (f"{path}/metadata/generateName", "not allowed: a Work's objects need a name")
            )
        name = _string(metadata.get("name"), f"{path}/metadata/name", problems, required=True)
        if name and not _is_object_name(name):
            problems.append(
                (
                    f"{path}/metadata/name",
                    "must be at most 253 printable characters, without '/' or '%'",
                )
            )
        space = metadata.get("namespace")
        if space is not None and space != "":
            if not isinstance(space, str) or len(space) > 63 or not _DNS_LABEL.match(space):
                problems.append(
                    (f"{path}/metadata/namespace", "must be a DNS-1123 label (at most 63 chars)")
                )
            else:
                namespace = space
    if len(problems) > before:
        return None
    return Manifest(
        ordinal=ordinal,
        group=group,
        version=version,
        kind=kind,
        namespace=namespace,
        name=name,
        body=value,
    )


def _manifests(value: object, path: str, problems: Problems) -> tuple[Manifest, ...]:
    workload = _object(value, path, problems, what="workload")
    if workload is None:
        problems.append((path, "workload with at least one manifest is required"))
        return ()
    _only(workload, ("manifests",), path, problems)
    items = workload.get("manifests")
    where = f"{path}/manifests"
    if not isinstance(items, list) or not items:
        problems.append((where, "must be a non-empty list of Kubernetes objects"))
        return ()
    if len(items) > MAX_MANIFESTS:
        problems.append((where, f"at most {MAX_MANIFESTS} manifests per Work (split it)"))
        return ()
    out: list[Manifest] = []
    seen: dict[tuple[str, str, str | None, str], int] = {}
    for index, item in enumerate(items):
        manifest = _manifest(item, index, f"{where}/{index}", problems)
        if manifest is None:
            continue
        key = (manifest.group, manifest.kind, manifest.namespace, manifest.name)
        if key in seen:
            problems.append(
                (
                    f"{where}/{index}",
                    f"{manifest.describe()} is already manifest {seen[key]}: one object once",
                )
            )
            continue
        seen[key] = index
        out.append(manifest)
    return tuple(out)


def _identifier(value: object, path: str, problems: Problems) -> ResourceIdentifier | None:
    ident = _object(value, path, problems, what="resourceIdentifier")
    if ident is None:
        problems.append((path, "resourceIdentifier {group, resource, namespace, name} is required"))
        return None
    _only(ident, ("group", "resource", "namespace", "name"), path, problems)
    before = len(problems)
    group = _string(ident.get("group"), f"{path}/group", problems, required=False)
    if group and not is_name(group):
        problems.append((f"{path}/group", "must be an API group (a DNS subdomain) or empty"))
    resource = _string(ident.get("resource"), f"{path}/resource", problems, required=True)
    if resource and not _RESOURCE.match(resource):
        problems.append((f"{path}/resource", "must be a resource name, e.g. 'deployments'"))
    namespace = _string(ident.get("namespace"), f"{path}/namespace", problems, required=False)
    if namespace not in {"", "*"} and not _DNS_LABEL.match(namespace):
        problems.append((f"{path}/namespace", "must be a namespace, '*' or empty"))
    name = _string(ident.get("name"), f"{path}/name", problems, required=True)
    if name and name != "*" and not _is_object_name(name):
        problems.append((f"{path}/name", "must be an object name or '*'"))
    if len(problems) > before:
        return None
    return ResourceIdentifier(group=group, resource=resource, namespace=namespace, name=name)


def _feedback_rules(value: object, path: str, problems: Problems) -> tuple[FeedbackRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_FEEDBACK_RULES:
        problems.append((path, f"must be a list of at most {MAX_FEEDBACK_RULES} rules"))
        return ()
    out: list[FeedbackRule] = []
    names: set[str] = set()
    for index, item in enumerate(value):
        where = f"{path}/{index}"
        rule = _object(item, where, problems, what="a feedback rule")
        if rule is None:
            problems.append((where, "must be {type: WellKnownStatus|JSONPaths, jsonPaths}"))
            continue
        _only(rule, ("type", "jsonPaths"), where, problems)
        kind = rule.get("type")
        if kind not in FEEDBACK_TYPES:
            problems.append((f"{where}/type", f"must be one of {', '.join(FEEDBACK_TYPES)}"))
            continue
        if kind == "WellKnownStatus":
            if rule.get("jsonPaths"):
                problems.append((f"{where}/jsonPaths", "only for type JSONPaths"))
            out.append(FeedbackRule(type="WellKnownStatus"))
            continue
        paths = _json_paths(rule.get("jsonPaths"), f"{where}/jsonPaths", names, problems)
        out.append(FeedbackRule(type="JSONPaths", json_paths=paths))
    return tuple(out)


def _json_paths(
    value: object, path: str, names: set[str], problems: Problems
) -> tuple[JsonPathRule, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_JSON_PATHS:
        problems.append(
            (path, f"must be a list of 1 to {MAX_JSON_PATHS} {{name, path}} for type JSONPaths")
        )
        return ()
    out: list[JsonPathRule] = []
    for index, item in enumerate(value):
        where = f"{path}/{index}"
        if not isinstance(item, dict):
            problems.append((where, "must be {name, path}"))
            continue
        _only(item, ("name", "path"), where, problems)
        name, text = item.get("name"), item.get("path")
        if not isinstance(name, str) or not _FEEDBACK_NAME.match(name):
            problems.append((f"{where}/name", "must be a name of letters, digits, '-', '_', '.'"))
        elif name in names:
            problems.append((f"{where}/name", f"{name!r} is already used by another rule"))
        elif (
            not isinstance(text, str)
            or not text.startswith(".")
            or len(text) > MAX_JSON_PATH_LENGTH
            or not text.isprintable()
        ):
            problems.append(
                (
                    f"{where}/path",
                    (
                        "must be a JSONPath such as '.status.readyReplicas' "
                        f"(at most {MAX_JSON_PATH_LENGTH} chars)"
                    ),
                )
            )
        else:
            names.add(name)
            out.append(JsonPathRule(name=name, path=text))
    return tuple(out)


def _update_strategy(value: object, path: str, problems: Problems) -> UpdateStrategy | None:
    strategy = _object(value, path, problems, what="updateStrategy")
    if strategy is None:
        return None
    _only(strategy, ("type", "serverSideApply"), path, problems)
    kind = strategy.get("type", "ServerSideApply")
    if kind not in UPDATE_TYPES:
        problems.append((f"{path}/type", f"must be one of {', '.join(UPDATE_TYPES)}"))
        return None
    ssa = _object(
        strategy.get("serverSideApply"), f"{path}/serverSideApply", problems, what="serverSideApply"
    )
    if ssa is None:
        return UpdateStrategy(type=kind)
    where = f"{path}/serverSideApply"
    if kind != "ServerSideApply":
        problems.append((where, "only for type ServerSideApply"))
        return None
    _only(ssa, ("force", "fieldManager"), where, problems)
    force = ssa.get("force", False)
    if not isinstance(force, bool):
        problems.append((f"{where}/force", "must be true or false"))
        force = False
    manager = ssa.get("fieldManager", DEFAULT_FIELD_MANAGER)
    if (
        not isinstance(manager, str)
        or not manager
        or len(manager) > MAX_FIELD_MANAGER
        or not manager.isprintable()
    ):
        problems.append(
            (f"{where}/fieldManager", f"must be 1 to {MAX_FIELD_MANAGER} printable characters")
        )
        manager = DEFAULT_FIELD_MANAGER
    return UpdateStrategy(type=kind, force=force, field_manager=manager)


def _manifest_configs(value: object, path: str, problems: Problems) -> tuple[ManifestConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_MANIFEST_CONFIGS:
        problems.append((path, f"must be a list of at most {MAX_MANIFEST_CONFIGS} configs"))
        return ()
    out: list[ManifestConfig] = []
    seen: set[ResourceIdentifier] = set()
    for index, item in enumerate(value):
        where = f"{path}/{index}"
        config = _object(item, where, problems, what="a manifest config")
        if config is None:
            problems.append((where, "must be {resourceIdentifier, feedbackRules, updateStrategy}"))
            continue
        _only(config, ("resourceIdentifier", "feedbackRules", "updateStrategy"), where, problems)
        ident = _identifier(
            config.get("resourceIdentifier"), f"{where}/resourceIdentifier", problems
        )
        rules = _feedback_rules(config.get("feedbackRules"), f"{where}/feedbackRules", problems)
        strategy = _update_strategy(
            config.get("updateStrategy"), f"{where}/updateStrategy", problems
        )
        if ident is None:
            continue
        if ident in seen:
            problems.append((f"{where}/resourceIdentifier", "another config has the same one"))
            continue
        seen.add(ident)
        out.append(
            ManifestConfig(
                resource_identifier=ident, feedback_rules=rules, update_strategy=strategy
            )
        )
    return tuple(out)


def _delete_option(value: object, path: str, problems: Problems) -> str:
    option = _object(value, path, problems, what="deleteOption")
    if option is None:
        return "Foreground"
    _only(option, ("propagationPolicy",), path, problems)
    policy = option.get("propagationPolicy", "Foreground")
    if policy not in DELETE_POLICIES:
        problems.append(
            (
                f"{path}/propagationPolicy",
                f"must be one of {', '.join(DELETE_POLICIES)} (SelectivelyOrphan is not supported)",
            )
        )
        return "Foreground"
    return str(policy)


_TEMPLATE_FIELDS = ("workload", "manifestConfigs", "deleteOption")


def _template(
    spec: Mapping[str, Any], base: str, problems: Problems
) -> tuple[tuple[Manifest, ...], tuple[ManifestConfig, ...], str]:
    manifests = _manifests(spec.get("workload"), f"{base}/workload", problems)
    configs = _manifest_configs(spec.get("manifestConfigs"), f"{base}/manifestConfigs", problems)
    policy = _delete_option(spec.get("deleteOption"), f"{base}/deleteOption", problems)
    return manifests, configs, policy


def parse_spec(spec: object) -> WorkSpec:
    """A Work's spec, or ``SpecError`` with every problem (paths from the document root)."""
    problems: Problems = []
    if not isinstance(spec, dict):
        raise SpecError([("/spec", "must be an object")])
    _only(spec, ("clusterName", *_TEMPLATE_FIELDS), "/spec", problems)
    cluster = spec.get("clusterName")
    if not is_name(cluster):
        problems.append(("/spec/clusterName", "must be the name of a ManagedCluster"))
    manifests, configs, policy = _template(spec, "/spec", problems)
    if problems:
        raise SpecError(problems)
    assert isinstance(cluster, str)  # noqa: S101 - is_name checked it
    return WorkSpec(
        cluster_name=cluster,
        manifests=manifests,
        manifest_configs=configs,
        delete_propagation=policy,
    )


def parse_template(spec: object, *, base: str = "/spec/manifestWorkTemplate") -> WorkTemplate:
    """A WorkSet's ``manifestWorkTemplate`` (a Work spec without ``clusterName``)."""
    problems: Problems = []
    if not isinstance(spec, dict):
        raise SpecError([(base, "must be an object (a Work spec without clusterName)")])
    _only(spec, _TEMPLATE_FIELDS, base, problems)
    manifests, configs, policy = _template(spec, base, problems)
    if problems:
        raise SpecError(problems)
    return WorkTemplate(manifests=manifests, manifest_configs=configs, delete_propagation=policy)


# ---------------------------------------------------------------- conditions


def find_condition(conditions: object, kind: str) -> Mapping[str, Any] | None:
    """The condition of type ``kind`` in a status's list, if any (tolerates junk)."""
    if not isinstance(conditions, list):
        return None
    for condition in conditions:
        if isinstance(condition, dict) and condition.get("type") == kind:
            return condition
    return None


def set_condition(
    previous: Sequence[Mapping[str, Any]],
    *,
    kind: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: float,
) -> dict[str, Any]:
    """The condition as it should be now; its transition time kept if its status is unchanged."""
    old = find_condition(list(previous), kind)
    since = rfc3339(now)
    if old is not None and old.get("status") == status:
        kept = old.get("lastTransitionTime")
        if parse_time(kept) is not None:
            since = str(kept)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def _status_of(conditions: Sequence[Mapping[str, Any]], kind: str) -> str:
    found = find_condition(list(conditions), kind)
    status = found.get("status") if found is not None else None
    return status if status in {"True", "False"} else "Unknown"


def _first(
    manifest_conditions: Sequence[Sequence[Mapping[str, Any]]], kind: str, status: str
) -> tuple[int, Mapping[str, Any]] | None:
    for ordinal, conditions in enumerate(manifest_conditions):
        found = find_condition(list(conditions), kind)
        if found is not None and found.get("status") == status:
            return ordinal, found
    return None


def _detail(hit: tuple[int, Mapping[str, Any]], count: int, fallback: str) -> tuple[str, str]:
    ordinal, condition = hit
    reason = condition.get("reason")
    if not isinstance(reason, str) or not reason:
        reason = fallback
    text = condition.get("message")
    message = (
        f"manifest {ordinal}: {text}"
        if isinstance(text, str) and text
        else (f"manifest {ordinal}: {reason}")
    )
    if count > 1:
        message += f" (and {count - 1} more)"
    return reason, message


def aggregate_conditions(
    manifest_conditions: Sequence[Sequence[Mapping[str, Any]]],
    generation: int,
    now: float,
    previous: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The work-level Applied, Available, Degraded and Progressing from the per-manifest ones.

    ``manifest_conditions[i]`` are manifest ``i``'s conditions (as the agent set them for the
    Work's ``generation``); ``previous`` the Work's last conditions, whose transition times are
    kept where the status did not change. A missing manifest condition counts as Unknown.

    * Applied: True when every manifest is applied; False when one is not (reason and message
      of the first such manifest, e.g. ``Conflict`` with the API server's message); else Unknown.
    * Available: True when every resource exists; False when one does not; else Unknown.
    * Degraded: True when a manifest is degraded (reason and message of the first); else False.
    * Progressing: False once Applied and Available are True and no manifest says it is still
      progressing; True otherwise (also while degraded: the rollout decides what that means).
    """
    total = len(manifest_conditions)

    def count(kind: str, status: str) -> int:
        return sum(_status_of(c, kind) == status for c in manifest_conditions)

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return set_condition(
            previous,
            kind=kind,
            status=status,
            reason=reason,
            message=message,
            generation=generation,
            now=now,
        )

    out: list[dict[str, Any]] = []
    failed = count("Applied", "False")
    hit = _first(manifest_conditions, "Applied", "False")
    if hit is not None:
        reason, message = _detail(hit, failed, "AppliedManifestWorkFailed")
        out.append(condition("Applied", "False", reason, message))
    elif count("Applied", "True") == total:
        out.append(
            condition(
                "Applied", "True", "AppliedManifestWorkComplete", f"{total} of {total} applied"
            )
        )
    else:
        waiting = total - count("Applied", "True")
        out.append(
            condition("Applied", "Unknown", "Applying", f"{waiting} of {total} not applied yet")
        )

    missing = count("Available", "False")
    if missing:
        out.append(
            condition(
                "Available",
                "False",
                "ResourcesNotAvailable",
                f"{missing} of {total} resources are not available",
            )
        )
    elif count("Available", "True") == total:
        out.append(
            condition(
                "Available", "True", "ResourcesAvailable", f"{total} of {total} resources exist"
            )
        )
    else:
        unknown = total - count("Available", "True")
        out.append(
            condition(
                "Available",
                "Unknown",
                "ResourcesStatusUnknown",
                f"{unknown} of {total} resources have unknown status",
            )
        )

    degraded = count("Degraded", "True")
    hit = _first(manifest_conditions, "Degraded", "True")
    if hit is not None:
        reason, message = _detail(hit, degraded, "ResourceDegraded")
        out.append(condition("Degraded", "True", reason, message))
    else:
        out.append(condition("Degraded", "False", "AsExpected", "no resource is degraded"))

    busy = count("Progressing", "True")
    done = out[0]["status"] == "True" and out[1]["status"] == "True" and not degraded and not busy
    if done:
        out.append(condition("Progressing", "False", "Completed", "applied and available"))
    elif busy:
        out.append(
            condition(
                "Progressing",
                "True",
                "ResourcesProgressing",
                f"{busy} of {total} resources are still progressing",
            )
        )
    else:
        out.append(
            condition("Progressing", "True", "Applying", "waiting for Applied and Available")
        )
    return out
