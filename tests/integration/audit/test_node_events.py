"""Node events against a real server and agent: join, approval, sessions, renewal, revocation."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemons import BIN, Agent, Server
from tests.harness.waiting import eventually_async
from tests.integration.audit.test_audit_log import audit, call, user_token

NAME = "ev-1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # Agents renew after 2/3 of their certificate's life: 8 s here.
    server = Server(workdir=tmp_path, extra_args=("--client-cert-lifetime", "12s"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def events(server: Server, name: str = NAME) -> list[dict[str, Any]]:
    status, _, body = await call(
        server, "GET", f"/api/v1/nodes/{name}/events", token=server.admin_token
    )
    if status == 404:  # not joined yet
        return []
    assert status == 200, body
    items: list[dict[str, Any]] = body["items"]
    return items


async def until(server: Server, kind: str) -> list[dict[str, Any]]:
    return await eventually_async(
        lambda: events(server),
        lambda items: any(item["type"] == kind for item in items),
        what=f"a {kind!r} event of {NAME}",
        within=30,
    )


async def test_a_node_life_in_events(server: Server, tmp_path: Path) -> None:
    token = server.cli("token", "create", "--name", NAME, "--require-approval").strip()
    agent = Agent(
        name=NAME, workdir=tmp_path, server=server, tunnel_options={"renew_check_interval": 0.5}
    )
    join = await asyncio.create_subprocess_exec(
        BIN / "edge-agent",
        "join",
        "--server",
        server.url,
        "--token",
        token,
        "--ca-hash",
        server.ca_hash,
        "--name",
        NAME,
        "--data-dir",
        str(agent.data_dir),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await until(server, "joined")
        server.cli("nodes", "approve", NAME)
        async with asyncio.timeout(60):
            assert await join.wait() == 0
    finally:
        if join.returncode is None:
            join.kill()
            await join.wait()
    try:
        agent.start()
        agent.wait_connected()
        await until(server, "online")
        await until(server, "certificateRenewed")
    finally:
        agent.stop()
    await until(server, "offline")
    server.cli("nodes", "revoke", NAME)
    newest_first = await until(server, "revoked")

    kinds = [kind for kind, _ in itertools.groupby(e["type"] for e in reversed(newest_first))]
    assert kinds == ["joined", "approved", "online", "certificateRenewed", "offline", "revoked"]
    ids = [e["id"] for e in newest_first]
    assert ids == sorted(ids, reverse=True), "newest first"
    joined = newest_first[-1]
    assert "waiting for approval" in joined["detail"]
    assert joined["at"].startswith("20")

    # Every role reads events; paging works; an unknown node is a 404.
    viewer = user_token(server, "vera", "viewer")
    status, _, page = await call(
        server, "GET", f"/api/v1/nodes/{NAME}/events?limit=2", token=viewer
    )
    assert status == 200, page
    assert [e["id"] for e in page["items"]] == ids[:2]
    assert page["metadata"]["continue"]
    status, _, missing = await call(server, "GET", "/api/v1/nodes/nobody/events", token=viewer)
    assert status == 404, missing
    assert missing["reason"] == "node_not_found"
    # The agents' own join protocol is not an operator's write: not in the audit log.
    routes = {record["route"] for record in await audit(server)}
    assert not {r for r in routes if r.startswith(("/api/v1/join", "/api/v1/renew"))}, routes
