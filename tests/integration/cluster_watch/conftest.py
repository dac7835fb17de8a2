"""A control plane of this package's own (it restarts its API server), and MemberApi onto it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.cluster import credentials
from edge_agent.cluster.member_api import MemberApi
from edge_agent.cluster.settings import ClusterSettings
from tests.harness import kube


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kube.ControlPlane]:
    # Not the session's shared plane: the tests here restart the API server.
    started = kube.start("watch", tmp_path_factory.mktemp("watch"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def namespace(plane: kube.ControlPlane) -> Iterator[str]:
    name = f"iw-{secrets.token_hex(4)}"
    status, answer = plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert status == 201, answer
    yield name
    plane.request("DELETE", f"/api/v1/namespaces/{name}")


def kubeconfig_for(plane: kube.ControlPlane, folder: Path, *, port: int | None = None) -> Path:
    """The plane's admin kubeconfig, pointing at ``port`` (a fault proxy) when given."""
    config = yaml.safe_load(plane.kubeconfig.read_text())
    if port is not None:
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = folder / f"kubeconfig-{port or plane.port}"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class RecordingApi(MemberApi):
    """The real client, remembering the paths it was asked to GET (to see the LIST pages)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gets: list[str] = []

    async def get_json(self, path: str) -> Any:
        self.gets.append(path)
        return await super().get_json(path)


async def open_api(kubeconfig: Path) -> RecordingApi:
    settings = ClusterSettings(kubeconfig=kubeconfig)
    client = RecordingApi(credentials=credentials.load(settings), settings=settings)
    await client.open()
    return client


@pytest.fixture
async def api(plane: kube.ControlPlane, tmp_path: Path) -> AsyncIterator[RecordingApi]:
    client = await open_api(kubeconfig_for(plane, tmp_path))
    try:
        yield client
    finally:
        await client.close()
