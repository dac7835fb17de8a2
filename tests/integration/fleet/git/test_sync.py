"""One GitSource's sync, step by step, against a real git repository and the real fleet store.

Each step is one ``sync_once`` (what the syncer does every ``intervalSeconds``), so these tests
need no waiting; ``test_server.py`` runs the same through a real ``tunnel-server`` and its
intervals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_model.gitsource import GITSOURCE_LABEL, parse_spec
from tests.harness.waiting import eventually_async
from tests.integration.fleet.git.repo import Repo, git, placement
from tunnel_server.fleet.hub.gitsource import GitSourceSettings, GitSyncer, SourceSync
from tunnel_server.fleet.hub.gitsource_git import Mirror
from tunnel_server.fleet.hub.hub import FleetHub, FleetSettings
from tunnel_server.fleet.hub.setup import open_hub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FleetHub]:
    (tmp_path / "data").mkdir()
    opened = open_hub(tmp_path / "data", FleetSettings())
    yield opened
    opened.store.close()


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo.create(tmp_path / "config")


def source(hub: FleetHub, tmp_path: Path, name: str, spec: dict[str, Any]) -> SourceSync:
    stored, _ = hub.put("GitSource", name, labels={}, annotations={}, spec=spec)
    return SourceSync(
        hub=hub,
        source=stored,
        spec=parse_spec(spec),
        mirror=Mirror(tmp_path / "mirrors" / name, settings=GitSourceSettings().git),
        settings=GitSourceSettings(),
    )


def status(hub: FleetHub, name: str) -> dict[str, Any]:
    stored = hub.store.get("GitSource", name)
    assert stored is not None
    return dict(stored.status)


def synced(hub: FleetHub, name: str) -> dict[str, Any]:
    conditions = status(hub, name)["conditions"]
    assert [c["type"] for c in conditions] == ["Synced"]
    return dict(conditions[0])


def names(hub: FleetHub, kind: str = "Placement") -> list[str]:
    return [o.name for o in hub.store.list(kind)]


async def test_commit_change_and_delete_are_followed(
    hub: FleetHub, repo: Repo, tmp_path: Path
) -> None:
    repo.write("fleet/web.yaml", placement("web", labels={"app": "web"}))
    repo.write("fleet/db.yml", placement("db"))
    repo.write("README.md", "not a fleet object\n")
    first = repo.commit("web and db")
    sync = source(
        hub,
        tmp_path,
        "config",
        {"repository": str(repo.path), "ref": {"branch": "main"}, "path": "fleet"},
    )

    await sync.sync_once()
    assert names(hub) == ["db", "web"]
    web = hub.store.get("Placement", "web")
    assert web is not None
    assert dict(web.labels) == {"app": "web", GITSOURCE_LABEL: "config"}
    now = status(hub, "config")
    assert now["commit"] == first
    assert now["objects"] == [
        {"kind": "Placement", "name": "db"},
        {"kind": "Placement", "name": "web"},
    ]
    assert now["files"] == []
    assert (synced(hub, "config")["status"], synced(hub, "config")["reason"]) == ("True", "Synced")
    synced_at = now["syncedAt"]

    await sync.sync_once()  # nothing moved: nothing written
    assert hub.store.get("Placement", "web") == web
    assert status(hub, "config")["syncedAt"] == synced_at

    repo.write("fleet/web.yaml", placement("web", labels={"app": "web"}, clusters=3))
    second = repo.commit("web on 3")
    await sync.sync_once()
    changed = hub.store.get("Placement", "web")
    assert changed is not None
    assert changed.spec["numberOfClusters"] == 3
    assert changed.generation == web.generation + 1
    assert status(hub, "config")["commit"] == second

    repo.remove("fleet/db.yml")
    third = repo.commit("no db")
    await sync.sync_once()
    assert names(hub) == ["web"]
    assert status(hub, "config")["commit"] == third
    assert status(hub, "config")["objects"] == [{"kind": "Placement", "name": "web"}]


async def test_bad_files_are_reported_and_the_good_ones_applied(
    hub: FleetHub, repo: Repo, tmp_path: Path
) -> None:
    repo.write("broken.yaml", placement("broken"))
    repo.write("invalid.yaml", placement("invalid"))
    repo.commit("all good at first")
    sync = source(
        hub, tmp_path, "config", {"repository": str(repo.path), "ref": {"branch": "main"}}
    )
    await sync.sync_once()
    assert names(hub) == ["broken", "invalid"]

    repo.write("broken.yaml", "kind: Placement\nmetadata: {name: [oops\n")
    repo.write("invalid.yaml", placement("invalid", labels={"app": "no spaces allowed"}))
    repo.write(
        "loop.yaml",
        placement("fine")
        + "---\n"
        + (
            "apiVersion: fleet.edgefleet.io/v1alpha1\nkind: GitSource\nmetadata: {name: more}\n"
            "spec: {repository: /srv/other, ref: {branch: main}}\n"
        ),
    )
    commit = repo.commit("one broken file, one invalid document, one GitSource")
    await sync.sync_once()

    now = status(hub, "config")
    errors = {entry["path"]: entry["error"] for entry in now["files"]}
    assert set(errors) == {"broken.yaml", "invalid.yaml", "loop.yaml"}
    assert errors["broken.yaml"].startswith("not valid YAML")
    assert errors["invalid.yaml"].startswith("document 1 (Placement invalid): /metadata/labels/app")
    assert (
        "document 2 (GitSource more): /kind: a GitSource may not declare GitSources"
        in errors["loop.yaml"]
    )
    # The good document applied; what the broken and invalid files held is kept, not pruned.
    assert names(hub) == ["broken", "fine", "invalid"]
    assert names(hub, "GitSource") == ["config"]
    condition = synced(hub, "config")
    assert (condition["status"], condition["reason"]) == ("False", "FileErrors")
    assert "3 file(s) with errors" in condition["message"]
    assert "nothing pruned" in condition["message"]
    assert now["commit"] == commit


async def test_a_failing_fetch_keeps_what_was_applied_and_says_why(
    hub: FleetHub, repo: Repo, tmp_path: Path
) -> None:
    repo.write("web.yaml", placement("web"))
    good = repo.commit("web")
    sync = source(
        hub, tmp_path, "config", {"repository": str(repo.path), "ref": {"branch": "main"}}
    )
    await sync.sync_once()
    git(repo.path, "branch", "-m", "main", "renamed")

    await sync.sync_once()
    condition = synced(hub, "config")
    assert (condition["status"], condition["reason"]) == ("False", "FetchFailed")
    assert "couldn't find remote ref refs/heads/main" in condition["message"]
    assert names(hub) == ["web"]
    assert status(hub, "config")["commit"] == good

    missing = source(
        hub, tmp_path, "elsewhere", {"repository": str(tmp_path / "nowhere"), "ref": {"tag": "v1"}}
    )
    await missing.sync_once()
    condition = synced(hub, "elsewhere")
    assert (condition["status"], condition["reason"]) == ("False", "FetchFailed")
    assert "does not appear to be a git repository" in condition["message"]
    assert status(hub, "elsewhere")["commit"] is None


async def test_a_missing_folder_applies_and_prunes_nothing(
    hub: FleetHub, repo: Repo, tmp_path: Path
) -> None:
    repo.write("fleet/web.yaml", placement("web"))
    repo.commit("web")
    sync = source(
        hub,
        tmp_path,
        "config",
        {"repository": str(repo.path), "ref": {"branch": "main"}, "path": "fleet"},
    )
    await sync.sync_once()
    git(repo.path, "mv", "fleet", "moved")
    repo.commit("folder moved")
    await sync.sync_once()
    condition = synced(hub, "config")
    assert (condition["status"], condition["reason"]) == ("False", "PathNotFound")
    assert "path 'fleet' does not exist" in condition["message"]
    assert names(hub) == ["web"]


async def test_the_first_owner_keeps_an_object_and_drift_is_put_back(
    hub: FleetHub, repo: Repo, tmp_path: Path
) -> None:
    repo.write("web.yaml", placement("web"))
    repo.commit("web")
    spec = {"repository": str(repo.path), "ref": {"branch": "main"}}
    first = source(hub, tmp_path, "first", spec)
    second = source(hub, tmp_path, "second", spec)
    await first.sync_once()
    await second.sync_once()
    web = hub.store.get("Placement", "web")
    assert web is not None
    assert web.labels[GITSOURCE_LABEL] == "first"
    errors = status(hub, "second")["files"]
    assert errors == [{"path": "web.yaml", "error": "Placement web belongs to GitSource first"}]
    assert status(hub, "second")["objects"] == []

    # A hand edit and a hand delete are put back at the next interval (the commit did not move).
    hub.put("Placement", "web", labels={"hand": "made"}, annotations={}, spec={})
    await first.sync_once()
    back = hub.store.get("Placement", "web")
    assert back is not None
    assert dict(back.labels) == {GITSOURCE_LABEL: "first"}
    assert back.spec == {"numberOfClusters": 1}
    hub.delete("Placement", "web")
    await first.sync_once()
    assert names(hub) == ["web"]

    # The owner gone, the other source adopts the object.
    hub.delete("GitSource", "first")
    await second.sync_once()
    adopted = hub.store.get("Placement", "web")
    assert adopted is not None
    assert adopted.labels[GITSOURCE_LABEL] == "second"
    assert status(hub, "second")["files"] == []


async def test_without_prune_removed_files_leave_their_objects(
    hub: FleetHub, repo: Repo, tmp_path: Path
) -> None:
    repo.write("web.yaml", placement("web"))
    repo.commit("web")
    sync = source(
        hub,
        tmp_path,
        "config",
        {"repository": str(repo.path), "ref": {"branch": "main"}, "prune": False},
    )
    await sync.sync_once()
    repo.remove("web.yaml")
    repo.commit("no web")
    await sync.sync_once()
    assert names(hub) == ["web"]
    assert synced(hub, "config")["status"] == "True"


async def test_the_syncer_starts_restarts_and_stops_with_the_stores_sources(
    hub: FleetHub, repo: Repo, tmp_path: Path
) -> None:
    """New source: synced at once; new spec: synced again at once; deleted: stopped, mirror gone.

    The interval is a day, so every sync seen here is one the follower started.
    """
    repo.write("a/web.yaml", placement("web"))
    repo.write("b/db.yaml", placement("db"))
    repo.commit("two folders")
    spec = {"repository": str(repo.path), "ref": {"branch": "main"}, "intervalSeconds": 86_400}
    syncer = GitSyncer(hub=hub, data_dir=tmp_path / "data", settings=GitSourceSettings())

    async def objects() -> list[dict[str, str]]:
        return list(status(hub, "config").get("objects", [])) if names(hub, "GitSource") else []

    async with asyncio.TaskGroup() as group:
        task = group.create_task(syncer.run(), name="test.gitsource")
        hub.put("GitSource", "config", labels={}, annotations={}, spec={**spec, "path": "a"})
        await eventually_async(
            objects, lambda o: o == [{"kind": "Placement", "name": "web"}], what="folder a synced"
        )
        hub.put("GitSource", "config", labels={}, annotations={}, spec={**spec, "path": "b"})
        await eventually_async(
            objects, lambda o: o == [{"kind": "Placement", "name": "db"}], what="folder b synced"
        )
        assert names(hub) == ["db"]  # web pruned: the source's folder no longer declares it
        mirror = tmp_path / "data" / "fleet" / "git" / "config"
        assert mirror.is_dir()
        hub.delete("GitSource", "config")

        async def mirror_gone() -> bool:
            return not mirror.exists()

        await eventually_async(mirror_gone, what="the deleted source's mirror removed")
        assert syncer._running == {}
        assert names(hub) == ["db"]  # kept: deleting a source does not delete its objects
        task.cancel()
