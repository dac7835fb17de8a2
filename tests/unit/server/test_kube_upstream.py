"""``--kube-upstream``: the server reads its hub's kubeconfig with the shared loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon_support.kubeconfig import KubeconfigError
from tunnel_server.kube.upstream import load_upstream, open_upstream


def _kubeconfig(path: Path, server: str, user: dict[str, object]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "hub", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "c", "context": {"cluster": "hub", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return path


def test_load_upstream_gives_url_tls_and_the_token(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path / "kc", "http://127.0.0.1:8080/", {"token": "abc"})
    assert load_upstream(path) == ("http://127.0.0.1:8080", False, {"Authorization": "Bearer abc"})


def test_an_exec_plugin_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path / "kc", "https://hub:6443", {"exec": {"command": "aws"}})
    with pytest.raises(KubeconfigError, match=r"plugins \(exec\) are not supported.*tokenFile"):
        load_upstream(path)


async def test_the_session_sends_the_token_file_as_it_is_now(tmp_path: Path) -> None:
    seen: list[str | None] = []

    async def version(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/version", version)
    (tmp_path / "token").write_text("one\n")
    async with TestServer(app) as server:
        base = str(server.make_url("")).rstrip("/")
        path = _kubeconfig(tmp_path / "kc", base, {"tokenFile": "token"})
        upstream = open_upstream(path, token_reload=0.0)  # read at every request
        try:
            (await upstream.session.get(f"{upstream.base_url}/version")).release()
            (tmp_path / "token").write_text("two\n")
            (await upstream.session.get(f"{upstream.base_url}/version")).release()
        finally:
            await upstream.session.close()
    assert seen == ["Bearer one", "Bearer two"]
