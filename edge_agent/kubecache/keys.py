# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Pure: what a Kubernetes API request asks for, and the cache keys that name its answer.

The request parsing follows the API server's ``RequestInfoFactory`` (k8s.io/apiserver
``pkg/endpoints/request/requestinfo.go``): ``/api/v1`` or ``/apis/<group>/<version>``, an
optional ``namespaces/<ns>``, then resource, name and subresource. Keys are plain strings
(never pickled) laid out like YurtHub's, ``<component>/<resource>.<version>.<group>/<ns>/<name>``,
with ``core`` for the empty group and ``_`` for "no namespace", which no namespace can be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_COMPONENT_CHARS = re.compile(r"[^a-z0-9._-]")
_MAX_COMPONENT = 64
NO_NAMESPACE = "_"
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


class Verb(StrEnum):
    GET = "get"
    LIST = "list"
    WATCH = "watch"
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    DELETECOLLECTION = "deletecollection"
    OTHER = "other"


def component_of(user_agent: str | None) -> str:
    """The component a request comes from: User-Agent up to its first ``/``, lower-cased."""
    head = (user_agent or "").split("/", 1)[0].strip().lower()
    cleaned = _COMPONENT_CHARS.sub("-", head)[:_MAX_COMPONENT]
    return cleaned or "unknown"


@dataclass(frozen=True, kw_only=True, slots=True)
class Resource:
    """A group/version/resource; ``group`` is empty for the core group."""

    group: str
    version: str
    resource: str

    @property
    def key(self) -> str:
        return f"{self.resource}.{self.version}.{self.group or 'core'}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, namespace: str = "", name: str = "", subresource: str = "") -> str:
        """The URL path of a collection or an object of this resource."""
        parts = [self.prefix]
        if namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.resource)
        if name:
            parts.append(name)
        if subresource:
            parts.append(subresource)
        return "/".join(parts)

    @classmethod
    def from_key(cls, key: str) -> Resource:
        resource, version, group = key.split(".", 2)
        return cls(group="" if group == "core" else group, version=version, resource=resource)


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestInfo:
    """What one HTTP request to the API asks for."""

    verb: Verb
    resource: Resource | None = None
    """None for non-resource paths (``/api``, ``/version``, ``/openapi/v3``...)."""
    namespace: str = ""
    name: str = ""
    subresource: str = ""

    @property
    def is_resource(self) -> bool:
        return self.resource is not None


_METHOD_VERBS = {
    "POST": Verb.CREATE,
    "PUT": Verb.UPDATE,
    "PATCH": Verb.PATCH,
}


def parse_request(method: str, path: str, *, watch_param: str = "") -> RequestInfo:
    """Parse a request the way the API server does; unknown shapes become non-resource."""
    parts = [p for p in path.split("/") if p]
    method = method.upper()
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return RequestInfo(verb=_nonresource_verb(method))
    watching = watch_param.lower() in {"1", "true"}
    if rest and rest[0] == "watch":
        watching, rest = True, rest[1:]
    if not rest:
        return RequestInfo(verb=_nonresource_verb(method))
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 2:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
        else:
            namespace = ""  # the namespace object itself (cluster-scoped)
    if len(rest) > 3:
        return RequestInfo(verb=_nonresource_verb(method))
    resource = Resource(group=group, version=version, resource=rest[0])
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    verb = _resource_verb(method, has_name=bool(name), watching=watching)
    return RequestInfo(
        verb=verb, resource=resource, namespace=namespace, name=name, subresource=subresource
    )


def _nonresource_verb(method: str) -> Verb:
    return Verb.GET if method in {"GET", "HEAD"} else Verb.OTHER


def _resource_verb(method: str, *, has_name: bool, watching: bool) -> Verb:
    if method in {"GET", "HEAD"}:
        if watching:
            return Verb.WATCH
        return Verb.GET if has_name else Verb.LIST
    if method == "DELETE":
        return Verb.DELETE if has_name else Verb.DELETECOLLECTION
    return _METHOD_VERBS.get(method, Verb.OTHER)


def object_key(component: str, resource: Resource, namespace: str, name: str) -> str:
    return f"o/{component}/{resource.key}/{namespace or NO_NAMESPACE}/{name}"


def parse_object_key(key: str) -> tuple[str, str, str, str] | None:
    """``(component, resource key, namespace, name)`` of an object key, else None."""
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != "o":
        return None
    _, component, resource, namespace, name = parts
    return component, resource, "" if namespace == NO_NAMESPACE else namespace, name


def sort_key(namespace: str, name: str) -> str:
    """Where etcd (and so the API server) puts an object in a LIST: by ``<ns>/<name>`` bytes."""
    return f"{namespace}/{name}" if namespace else name
