"""With a kubeconfig upstream, the kube proxy serves before the agent's other parts load."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from aiohttp import web

from edge_agent import config, daemon
from edge_agent.twins import TwinMqttService
from tests.harness.waiting import eventually_async


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_the_kube_proxy_accepts_connections_before_the_local_api_is_built(
    tmp_path: Path,
) -> None:
    kube_port, api_port = _free_port(), _free_port()
    (tmp_path / "kubeconfig").write_text(
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"  # nothing listens
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
        "current-context: x\n"
    )
    (tmp_path / "agent.toml").write_text(
        f'[kube]\nenabled = true\nkubeconfig = "{tmp_path / "kubeconfig"}"\nport = {kube_port}\n'
        f"[local_api]\nport = {api_port}\n"
    )
    settings = config.load(tmp_path / "agent.toml", overrides={"data_dir": tmp_path / "data"})
    seen: list[str] = []

    def when_the_local_api_is_built(_app: web.Application, _twins: TwinMqttService | None) -> None:
        # Called after the twins, cluster and status parts are made, before the local API
        # serves: the proxy's socket must already accept (a refused connect raises here).
        with socket.create_connection(("127.0.0.1", kube_port), timeout=5):
            seen.append("kube proxy listening")

    async def hook_ran() -> bool:
        return bool(seen)

    async with asyncio.TaskGroup() as group:
        agent = group.create_task(
            daemon.run(settings, local_api_hook=when_the_local_api_is_built), name="test.agent"
        )
        await eventually_async(hook_ran, what="the local API hook ran", within=60)
        agent.cancel()
    assert seen == ["kube proxy listening"]
