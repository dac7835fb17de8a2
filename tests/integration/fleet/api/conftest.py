"""A real ``tunnel-server run`` with users of each role, and clients for fleet objects and watches.

The server runs with a short change log (``EDGEFLEET_FLEET_CHANGES_KEPT``), so a watch from an
old resourceVersion can be made to expire with a few dozen writes.
"""

from __future__ import annotations

import copy
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemons import Server

API = "fleet.edgefleet.io/v1alpha1"
CHANGES_KEPT = 40
_CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "web", "namespace": "default"},
    "data": {"greeting": "hello"},
}
SPECS: dict[str, dict[str, Any]] = {
    "ManagedCluster": {"hubAcceptsClient": True, "leaseDurationSeconds": 10},
    "ManagedClusterSet": {
        "clusterSelector": {
            "selectorType": "LabelSelector",
            "labelSelector": {"matchLabels": {"env": "prod"}},
        }
    },
    "Placement": {
        "clusterSets": ["prod"],
        "numberOfClusters": 2,
        "predicates": [
            {"requiredClusterSelector": {"labelSelector": {"matchLabels": {"env": "prod"}}}}
        ],
    },
    "Work": {"clusterName": "c1", "workload": {"manifests": [_CONFIGMAP]}},
    "WorkSet": {
        "placementRefs": [{"name": "web", "rolloutStrategy": {"type": "All"}}],
        "manifestWorkTemplate": {"workload": {"manifests": [_CONFIGMAP]}},
    },
    "GitSource": {
        "repository": "/srv/git/fleet",
        "ref": {"branch": "main"},
        "path": "clusters",
        "intervalSeconds": 60,
    },
}
PLURALS = {
    "ManagedCluster": "managedclusters",
    "ManagedClusterSet": "managedclustersets",
    "Placement": "placements",
    "Work": "works",
    "WorkSet": "worksets",
    "GitSource": "gitsources",
}


def document(
    kind: str,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    """A valid document of ``kind`` (its spec from ``SPECS`` unless given)."""
    meta: dict[str, Any] = {"name": name, **metadata}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": API,
        "kind": kind,
        "metadata": meta,
        "spec": copy.deepcopy(SPECS[kind]) if spec is None else spec,
    }


@dataclass(frozen=True, kw_only=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class Event:
    type: str
    id: int | None
    data: dict[str, Any]


@dataclass(kw_only=True)
class Fleet:
    server: Server
    tokens: dict[str, str]
    """Bearer value by role label: admin, operator, viewer, scoped-operator, scoped-viewer."""

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.server.port, context=self.server.ssl_context(), timeout=30
        )

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        as_: str = "admin",
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request as ``as_`` (a role label); ``body`` is sent as JSON, ``raw`` as is."""
        sent = {"Content-Type": "application/json", **(headers or {})}
        sent["Authorization"] = f"Bearer {self.tokens[as_]}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        connection = self.connection()
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            text = response.read()
            parsed = json.loads(text) if text else {}
            return Answer(status=response.status, body=parsed, headers=dict(response.getheaders()))
        finally:
            connection.close()

    def put(self, doc: dict[str, Any], *, as_: str = "admin", **kw: Any) -> Answer:
        path = f"/api/v1/fleet/{PLURALS[doc['kind']]}/{doc['metadata']['name']}"
        return self.call("PUT", path, doc, as_=as_, **kw)

    def watch(
        self, path: str, *, as_: str = "admin", count: int | None = None
    ) -> tuple[int, list[Event]]:
        """Read a watch until ``count`` events came or the server ends it (timeoutSeconds)."""
        connection = self.connection()
        try:
            connection.request("GET", path, headers={"Authorization": f"Bearer {self.tokens[as_]}"})
            response = connection.getresponse()
            if response.status != 200:
                return response.status, [Event("HTTP", None, json.loads(response.read()))]
            assert response.getheader("Content-Type", "").startswith("text/event-stream")
            return 200, events_of(response, count)
        finally:
            connection.close()


def events_of(response: http.client.HTTPResponse, count: int | None) -> list[Event]:
    events: list[Event] = []
    fields: dict[str, str] = {}
    while count is None or len(events) < count:
        line = response.readline()
        if not line:
            break
        text = line.decode().rstrip("\n")
        if text == "":
            if "event" in fields:
                ident = fields.get("id")
                events.append(
                    Event(
                        fields["event"], int(ident) if ident else None, json.loads(fields["data"])
                    )
                )
            fields = {}
        elif not text.startswith(":"):
            key, _, value = text.partition(": ")
            fields[key] = value
    return events


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir: Path = tmp_path_factory.mktemp("fleet-api")
    server = Server(workdir=workdir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEFLEET_FLEET_CHANGES_KEPT", str(CHANGES_KEPT))
        server.start()
    try:
        system = Fleet(server=server, tokens={"admin": server.admin_token})
        for label, role, clusters in (
            ("operator", "operator", None),
            ("viewer", "viewer", None),
            ("scoped-operator", "operator", ["c1"]),
            ("scoped-viewer", "viewer", ["c1"]),
        ):
            body: dict[str, Any] = {"name": f"fleet-{label}", "role": role}
            if clusters is not None:
                body["clusters"] = clusters
            made = system.call("POST", "/api/v1/users", body)
            assert made.status == 201, made
            system.tokens[label] = made.body["token"]
        yield system
    finally:
        server.stop()
