"""A Service port's ready endpoints, from the Service and its EndpointSlices (pure: no I/O).

The rules are Kubernetes' own (discovery.k8s.io/v1, what kube-proxy does):

* The Service's ``spec.ports`` entry whose ``port`` is the number asked for (protocol TCP,
  the default) gives the port's *name* (``""`` when the Service has one unnamed port). No
  such entry: ``NoPortError`` ("service demo/web has no port 80").
* EndpointSlices belong to a Service by the label ``kubernetes.io/service-name``; all of a
  Service's slices are merged. In each slice, the ``ports`` entry of that *name* (and
  protocol TCP) gives the endpoints' port number (the resolved ``targetPort``); a slice
  without it contributes nothing for this port. Only ``addressType`` IPv4 and IPv6 are used
  (FQDN is deprecated and kube-proxy ignores it too).
* An endpoint is used when ``conditions.ready`` is not false (missing means ready, as the API
  says) and ``conditions.terminating`` is not true (missing means not terminating). Of its
  ``addresses`` the first is used (the API calls them fungible; kube-proxy does the same).
  Addresses that are no IP address are skipped, never dialled.
* The same address and port in two slices (an endpoint moving between slices) counts once.
  The result is sorted, so round robin over it is stable while nothing changes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.cluster.gateway.target import ServiceTarget

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""The label that ties an EndpointSlice to its Service."""

MAX_ENDPOINTS = 4096
"""Endpoints of one Service port the gateway balances over: a Service that large is far beyond
what one agent's tunnel serves; beyond it the rest are ignored rather than held."""


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One address the agent may dial: an IP address (v4 or v6) and a TCP port."""

    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


class ResolveError(Exception):
    """The Service port cannot be served; the message is the reason the cloud sees."""

    result = "unresolved"
    """The metrics label of this refusal."""


class NoServiceError(ResolveError):
    result = "no_service"


class NoPortError(ResolveError):
    result = "no_port"


class NoEndpointsError(ResolveError):
    result = "no_endpoints"


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: object) -> list[Mapping[str, Any]]:
    """The objects of a JSON list (anything else in it, or no list, is skipped)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _tcp(entry: Mapping[str, Any]) -> bool:
    return entry.get("protocol", "TCP") in ("TCP", None)


def port_name(service: Mapping[str, Any], target: ServiceTarget) -> str:
    """The name of the Service's TCP port ``target.port`` (``""`` if unnamed); NoPortError."""
    for entry in _dicts(_dict(service.get("spec")).get("ports")):
        if entry.get("port") == target.port and _tcp(entry):
            name = entry.get("name") or ""
            return name if isinstance(name, str) else ""
    raise NoPortError(f"service {target.service} has no port {target.port}")


def _slice_port(endpoint_slice: Mapping[str, Any], name: str) -> int | None:
    for entry in _dicts(endpoint_slice.get("ports")):
        if (entry.get("name") or "") == name and _tcp(entry):
            port = entry.get("port")
            if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
                return port
    return None


def usable(endpoint: Mapping[str, Any]) -> bool:
    """Ready (missing counts as ready) and not terminating (missing counts as not)."""
    conditions = _dict(endpoint.get("conditions"))
    return conditions.get("ready") is not False and conditions.get("terminating") is not True


def _address(endpoint: Mapping[str, Any], family: int) -> str | None:
    addresses = endpoint.get("addresses")
    if not isinstance(addresses, list) or not addresses or not isinstance(addresses[0], str):
        return None
    try:
        parsed = ipaddress.ip_address(addresses[0])
    except ValueError:
        return None
    return str(parsed) if parsed.version == family else None


_FAMILIES = {"IPv4": 4, "IPv6": 6}


def ready_endpoints(name: str, slices: Iterable[Mapping[str, Any]]) -> list[Endpoint]:
    """The usable endpoints of the port named ``name`` over all ``slices``, sorted, unique."""
    found: set[Endpoint] = set()
    for endpoint_slice in slices:
        family = _FAMILIES.get(str(endpoint_slice.get("addressType")))
        port = _slice_port(endpoint_slice, name)
        if family is None or port is None:
            continue
        for endpoint in _dicts(endpoint_slice.get("endpoints")):
            if not usable(endpoint):
                continue
            address = _address(endpoint, family)
            if address is not None:
                found.add(Endpoint(address=address, port=port))
            if len(found) >= MAX_ENDPOINTS:
                return sorted(found)
    return sorted(found)


def resolve(
    target: ServiceTarget,
    service: Mapping[str, Any] | None,
    slices: Iterable[Mapping[str, Any]],
) -> list[Endpoint]:
    """The ready endpoints of ``target`` (never empty); a ResolveError says why there are none."""
    if service is None:
        raise NoServiceError(f"no service {target.service} in this cluster")
    name = port_name(service, target)
    endpoints = ready_endpoints(name, slices)
    if not endpoints:
        raise NoEndpointsError(f"no ready endpoints for {target}")
    return endpoints


def service_of(endpoint_slice: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(namespace, service name)`` a slice belongs to, or None (no label)."""
    metadata = _dict(endpoint_slice.get("metadata"))
    namespace = metadata.get("namespace")
    name = _dict(metadata.get("labels")).get(SERVICE_NAME_LABEL)
    if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
        return namespace, name
    return None


def service_ports(service: Mapping[str, Any]) -> list[tuple[int, str]]:
    """``(port, name)`` of every TCP port of a Service (for /status)."""
    ports: list[tuple[int, str]] = []
    for entry in _dicts(_dict(service.get("spec")).get("ports")):
        port, name = entry.get("port"), entry.get("name") or ""
        if isinstance(port, int) and isinstance(name, str) and _tcp(entry):
            ports.append((port, name))
    return ports
