"""The member API server as the applier sees it: requests, resource discovery, object paths.

``KubeRequests`` is what the applier needs of a client (``MemberApi.request`` is one).
``Discovery`` maps ``apiVersion`` + ``kind`` to the resource (plural) and its scope, the way
client-go's lazy REST mapper does: one ``GET /api/v1`` or ``/apis/<group>/<version>`` per group
version, cached, read again on a kind not found (at most every ``refresh_seconds`` per group
version, so a CRD applied a moment ago shows up without a read per manifest).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

__all__ = [
    "Discovery",
    "DiscoveryError",
    "Impersonating",
    "KubeRequests",
    "Resource",
    "split_api_version",
]

MAX_RESOURCES = 2000
"""Resources one group version may list: the largest built-in (v1) has about 50."""

_GROUP = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_VERSION = re.compile(r"^v[0-9]{1,4}([a-z]{1,10}[0-9]{0,4})?$")
_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,62}$")


class KubeRequests(Protocol):
    """One JSON request; ``(status, decoded answer or None)``; raises when there is no answer."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]: ...


class Impersonating:
    """``api`` acting as ``user`` (and the group of the same name).

    What works may do is then what the member's RBAC grants that identity, not everything the
    agent itself may do.
    """

    def __init__(self, api: KubeRequests, user: str) -> None:
        self._api = api
        self._headers = {"Impersonate-User": user, "Impersonate-Group": user}

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        return await self._api.request(
            method,
            path,
            body=body,
            content_type=content_type,
            headers={**(headers or {}), **self._headers},
        )


class DiscoveryError(Exception):
    """The API server answered discovery with an error (not a plain "not served")."""


@dataclass(frozen=True)
class Resource:
    """Where objects of one kind live on the API server."""

    group: str
    version: str
    kind: str
    resource: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection(self, namespace: str) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced:
            base += f"/namespaces/{quote(namespace, safe='')}"
        return f"{base}/{self.resource}"

    def path(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{quote(name, safe='')}"


def split_api_version(api_version: str) -> tuple[str, str] | None:
    """``(group, version)`` of ``apps/v1`` / ``v1``; None when it is not a valid one."""
    group, _, version = api_version.rpartition("/")
    if group and not _GROUP.match(group):
        return None
    if not _VERSION.match(version):
        return None
    return group, version


def valid_kind(kind: str) -> bool:
    return bool(_KIND.match(kind))


class Discovery:
    """Kind -> Resource, per group version, cached and refreshed on a miss."""

    def __init__(
        self,
        api: KubeRequests,
        *,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._refresh = refresh_seconds
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[float, dict[str, Resource]]] = {}

    async def resolve(self, group: str, version: str, kind: str) -> Resource | None:
        """The resource of ``kind`` in ``group/version``; None when the server has none.

        Raises DiscoveryError on an error answer and the client's error when unreachable.
        """
        key = (group, version)
        held = self._known.get(key)
        if held is not None:
            fetched_at, kinds = held
            if kind in kinds or self._clock() - fetched_at < self._refresh:
                return kinds.get(kind)
        kinds = await self._fetch(group, version)
        self._known[key] = (self._clock(), kinds)
        return kinds.get(kind)

    def forget(self, group: str) -> None:
        """Read every version of ``group`` again next time (a CRD of it just changed)."""
        for key in [k for k in self._known if k[0] == group]:
            del self._known[key]

    async def _fetch(self, group: str, version: str) -> dict[str, Resource]:
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        status, answer = await self._api.request("GET", path)
        if status == 404:
            return {}
        if not 200 <= status < 300 or not isinstance(answer, dict):
            raise DiscoveryError(f"GET {path}: HTTP {status}")
        kinds: dict[str, Resource] = {}
        listed = answer.get("resources")
        for entry in (listed if isinstance(listed, list) else [])[:MAX_RESOURCES]:
            if not isinstance(entry, dict):
                continue
            name, kind = entry.get("name"), entry.get("kind")
            # "deployments/scale" and friends are subresources, not where objects live.
            if not isinstance(name, str) or "/" in name or not isinstance(kind, str):
                continue
            kinds.setdefault(
                kind,
                Resource(
                    group=group,
                    version=version,
                    kind=kind,
                    resource=name,
                    namespaced=entry.get("namespaced") is True,
                ),
            )
        return kinds
