"""GitOps through a real ``tunnel-server``: a GitSource PUT by the REST API follows a local repo.

The repository is made and changed with the real git CLI; the server fetches it every
``intervalSeconds`` (5, the least allowed: no API forces a sync), so each step waits for its
effect to show in the API, never for a fixed time.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_model.gitsource import GITSOURCE_LABEL
from tests.harness.daemons import Server
from tests.harness.waiting import eventually
from tests.integration.fleet.git.repo import Repo, placement

WITHIN = 60.0
"""Seconds: a few 5 s intervals on two busy cores."""


def call(server: Server, method: str, path: str, body: object = None) -> tuple[int, Any]:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=server.ssl_context(), timeout=15
    )
    try:
        connection.request(
            method,
            path,
            body=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {server.admin_token}",
                "Content-Type": "application/json",
            },
        )
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(workdir=tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def put_source(server: Server, name: str, spec: dict[str, Any]) -> None:
    status, body = call(
        server,
        "PUT",
        f"/api/v1/fleet/gitsources/{name}",
        {
            "apiVersion": "fleet.edgefleet.io/v1alpha1",
            "kind": "GitSource",
            "metadata": {"name": name},
            "spec": spec,
        },
    )
    assert status in (200, 201), body


def placements(server: Server) -> dict[str, dict[str, Any]]:
    status, body = call(server, "GET", "/api/v1/fleet/placements")
    assert status == 200, body
    return {item["metadata"]["name"]: item for item in body["items"]}


def source_status(server: Server, name: str) -> dict[str, Any]:
    status, body = call(server, "GET", f"/api/v1/fleet/gitsources/{name}")
    assert status == 200, body
    return dict(body.get("status") or {})


def synced(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == "Synced"), {})


def test_the_hub_follows_commits_changes_deletes_and_bad_files(
    server: Server, tmp_path: Path
) -> None:
    repo = Repo.create(tmp_path / "config")
    repo.write("fleet/web.yaml", placement("web", labels={"app": "web"}))
    repo.write("fleet/db.yaml", placement("db"))
    first = repo.commit("web and db")
    put_source(
        server,
        "config",
        {
            "repository": str(repo.path),
            "ref": {"branch": "main"},
            "path": "fleet",
            "intervalSeconds": 5,
        },
    )

    found = eventually(
        lambda: placements(server),
        lambda items: set(items) == {"db", "web"},
        what="web and db applied from the first commit",
        within=WITHIN,
    )
    assert found["web"]["metadata"]["labels"] == {"app": "web", GITSOURCE_LABEL: "config"}
    status = eventually(
        lambda: source_status(server, "config"),
        lambda s: s.get("commit") == first and synced(s).get("status") == "True",
        what="the first commit in the status, Synced",
        within=WITHIN,
    )
    assert status["objects"] == [
        {"kind": "Placement", "name": "db"},
        {"kind": "Placement", "name": "web"},
    ]

    repo.write("fleet/web.yaml", placement("web", labels={"app": "web"}, clusters=3))
    repo.commit("web on 3 clusters")
    eventually(
        lambda: placements(server)["web"]["spec"],
        lambda spec: spec.get("numberOfClusters") == 3,
        what="the change of web applied",
        within=WITHIN,
    )

    repo.remove("fleet/db.yaml")
    repo.commit("db removed")
    eventually(
        lambda: placements(server),
        lambda items: set(items) == {"web"},
        what="db pruned",
        within=WITHIN,
    )

    repo.write("fleet/broken.yaml", "kind: Placement\nmetadata: {name: [oops\n")
    repo.write("fleet/invalid.yaml", placement("invalid", labels={"app": "not a value!"}))
    repo.write("fleet/good.yaml", placement("good"))
    bad = repo.commit("a malformed file, an invalid document, a good one")
    status = eventually(
        lambda: source_status(server, "config"),
        lambda s: s.get("commit") == bad,
        what="the commit with bad files in the status",
        within=WITHIN,
    )
    errors = {entry["path"]: entry["error"] for entry in status["files"]}
    assert set(errors) == {"broken.yaml", "invalid.yaml"}
    assert errors["broken.yaml"].startswith("not valid YAML")
    assert "/metadata/labels/app" in errors["invalid.yaml"]
    assert (synced(status)["status"], synced(status)["reason"]) == ("False", "FileErrors")
    assert set(placements(server)) == {"good", "web"}

    # The source deleted: its task and mirror go, what it applied stays (docs/fleet/gitops.md).
    mirror = server.data_dir / "fleet" / "git" / "config"
    assert mirror.is_dir()
    assert call(server, "DELETE", "/api/v1/fleet/gitsources/config")[0] == 200
    eventually(
        lambda: not mirror.exists(), what="the deleted source's mirror removed", within=WITHIN
    )
    assert set(placements(server)) == {"good", "web"}


def test_a_branch_that_does_not_exist_says_so_with_gits_message(
    server: Server, tmp_path: Path
) -> None:
    repo = Repo.create(tmp_path / "config")
    repo.write("web.yaml", placement("web"))
    repo.commit("web")
    put_source(
        server,
        "nope",
        {"repository": str(repo.path), "ref": {"branch": "nope"}, "intervalSeconds": 5},
    )
    status = eventually(
        lambda: source_status(server, "nope"),
        lambda s: synced(s).get("reason") == "FetchFailed",
        what="Synced False with the fetch's failure",
        within=WITHIN,
    )
    assert synced(status)["status"] == "False"
    assert "couldn't find remote ref refs/heads/nope" in synced(status)["message"]
    assert status["commit"] is None
    assert placements(server) == {}


def test_a_bad_spec_is_refused_by_the_api(server: Server) -> None:
    status, body = call(
        server,
        "PUT",
        "/api/v1/fleet/gitsources/bad",
        {
            "apiVersion": "fleet.edgefleet.io/v1alpha1",
            "kind": "GitSource",
            "metadata": {"name": "bad"},
            "spec": {"repository": "--upload-pack=touch /tmp/x", "ref": {"branch": "main"}},
        },
    )
    assert status == 400, body
    assert [p["path"] for p in body["problems"]] == ["/spec/repository"]
