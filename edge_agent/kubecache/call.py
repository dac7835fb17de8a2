# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""One request to the proxy, parsed once: what every part of the proxy is handed."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from edge_agent.kubecache.keys import RequestInfo, Resource
from edge_agent.kubecache.wire import Representation


@dataclass(slots=True)
class Call:
    """One request to the proxy, parsed once."""

    request: web.Request
    info: RequestInfo
    component: str
    cached_agent: bool
    representation: Representation
    body: bytes

    @property
    def resource(self) -> Resource:
        assert self.info.resource is not None  # noqa: S101 - only called for resource requests
        return self.info.resource

    @property
    def cacheable(self) -> bool:
        """The answer is plain JSON for a cached component about a whole object or list."""
        return (
            self.cached_agent
            and self.info.is_resource
            and self.representation is Representation.JSON
            and self.info.subresource in {"", "status"}
        )
