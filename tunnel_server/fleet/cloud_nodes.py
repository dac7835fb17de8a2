"""The cloud cluster's Node objects as the fleet needs them: addresses, kubelet port, labels.

Fed by a list+watch of ``/api/v1/nodes`` on the API server of ``--kube-upstream``. The egress
server maps a CONNECT host to a node through ``by_address``; the autonomy controller and
webhook read labels and annotations. Listeners hear the name of every node that changed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("tunnel_server.fleet.nodes")


def normalize_host(value: str) -> str:
    """An address as ``connect_head`` normalizes a CONNECT host: the same text for one host."""
    text = value.strip()
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text.strip("[]")))
    return text.lower().removesuffix(".")


@dataclass(frozen=True, kw_only=True)
class CloudNode:
    name: str
    addresses: tuple[str, ...] = ()
    """``status.addresses`` values, normalized (``normalize_host``)."""
    kubelet_port: int | None = None
    """``status.daemonEndpoints.kubeletEndpoint.Port``; None when the kubelet has not said."""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def node_from_json(obj: dict[str, Any]) -> CloudNode:
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    addresses = tuple(
        dict.fromkeys(
            normalize_host(str(entry["address"]))
            for entry in status.get("addresses") or []
            if isinstance(entry, dict) and entry.get("address")
        )
    )
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    return CloudNode(
        name=str(metadata["name"]),
        addresses=addresses,
        kubelet_port=port if isinstance(port, int) and 0 < port < 65536 else None,
        labels=dict(metadata.get("labels") or {}),
        annotations=dict(metadata.get("annotations") or {}),
    )


class CloudNodes:
    """Nodes by name and by address; a ``WatchSink`` of ``kube_watch.ListWatch``."""

    def __init__(self) -> None:
        self.by_name: dict[str, CloudNode] = {}
        self.by_address: dict[str, set[str]] = {}
        self._listeners: list[Callable[[str], None]] = []

    def listen(self, callback: Callable[[str], None]) -> None:
        self._listeners.append(callback)

    def replace(self, items: list[dict[str, Any]]) -> None:
        old = set(self.by_name)
        self.by_name.clear()
        self.by_address.clear()
        for obj in items:
            self._put(node_from_json(obj))
        for name in old | set(self.by_name):
            self._changed(name)

    def apply(self, event: str, obj: dict[str, Any]) -> None:
        node = node_from_json(obj)
        self._drop(node.name)
        if event != "DELETED":
            self._put(node)
        self._changed(node.name)

    def names_for(self, host: str) -> set[str]:
        return set(self.by_address.get(host, ()))

    def _put(self, node: CloudNode) -> None:
        self.by_name[node.name] = node
        for address in node.addresses:
            self.by_address.setdefault(address, set()).add(node.name)

    def _drop(self, name: str) -> None:
        old = self.by_name.pop(name, None)
        if old is None:
            return
        for address in old.addresses:
            names = self.by_address.get(address)
            if names is not None:
                names.discard(name)
                if not names:
                    del self.by_address[address]

    def _changed(self, name: str) -> None:
        for callback in self._listeners:
            try:
                callback(name)
            except Exception:
                log.exception("a node listener failed for %s", name)
