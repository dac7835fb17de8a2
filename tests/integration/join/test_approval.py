"""Tokens that require approval: the joiner waits, shows progress, and can resume."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import aiohttp

from edge_agent.identity import Identity
from tests.harness.waiting import eventually_async
from tests.integration.join.conftest import BIN

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.join.conftest import RunningServer


async def _wait_for_state(server: RunningServer, name: str, state: str) -> None:
    async def node() -> dict[str, Any]:
        found: dict[str, Any] = (await server.nodes()).get(name, {})
        return found

    await eventually_async(
        node, lambda node: node.get("state") == state, what=f"{name} {state}", within=20, every=0.1
    )


async def test_pending_until_approved(server: RunningServer, tmp_path: Path, name: str) -> None:
    token = await server.token(name, "--require-approval")
    joiner = await asyncio.create_subprocess_exec(
        BIN / "edge-agent",
        "join",
        "--server",
        server.url,
        "--token",
        token,
        "--ca-hash",
        server.ca_hash,
        "--name",
        name,
        "--data-dir",
        str(tmp_path),
        "--wait-approval",
        "30",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _wait_for_state(server, name, "pending")
        assert not (tmp_path / "identity.json").exists()
        approved = await server.cli("nodes", "approve", name)
        assert approved.rc == 0, approved.stderr
        async with asyncio.timeout(30):
            stdout, stderr = await joiner.communicate()
    finally:
        if joiner.returncode is None:
            joiner.kill()
            await joiner.wait()
    assert joiner.returncode == 0, stderr.decode()
    assert f"tunnel-server nodes approve {name}" in stderr.decode()
    assert "joined" in stdout.decode()
    assert Identity.load(tmp_path).name == name
    assert not (tmp_path / "pending.json").exists()
    assert not (tmp_path / "pending.key").exists()
    assert (await server.nodes())[name]["state"] == "approved"


async def test_timeout_then_resume_without_a_new_token(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    token = await server.token(name, "--require-approval")
    extra = ("--wait-approval", "0.5")
    first = await server.join(token=token, name=name, data_dir=tmp_path, extra=extra)
    assert first.rc == 7, first.stderr
    assert "run the same `edge-agent join` again" in first.stderr
    assert (await server.cli("nodes", "approve", name)).rc == 0
    second = await server.join(token=token, name=name, data_dir=tmp_path, extra=extra)
    assert second.rc == 0, second.stderr
    assert "resuming" in second.stderr
    assert Identity.load(tmp_path).name == name


async def test_revoked_while_pending_is_rejected(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    token = await server.token(name, "--require-approval")
    extra = ("--wait-approval", "0.2")
    assert (await server.join(token=token, name=name, data_dir=tmp_path, extra=extra)).rc == 7
    assert (await server.cli("nodes", "revoke", name)).rc == 0
    again = await server.join(token=token, name=name, data_dir=tmp_path, extra=extra)
    assert again.rc == 8, again.stderr
    assert "rejected" in again.stderr
    assert not (tmp_path / "pending.json").exists()


async def test_poll_needs_the_poll_secret(server: RunningServer, tmp_path: Path, name: str) -> None:
    token = await server.token(name, "--require-approval")
    extra = ("--wait-approval", "0.2")
    assert (await server.join(token=token, name=name, data_dir=tmp_path, extra=extra)).rc == 7
    pending = json.loads((tmp_path / "pending.json").read_text())
    assert (await server.cli("nodes", "approve", name)).rc == 0
    url = server.url + pending["poll"]
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer not-the-secret"}):
            async with session.get(url, headers=headers, ssl=server.trusting_context()) as answer:
                assert answer.status == 401
                assert (await answer.json())["reason"] == "bad_poll_secret"
        headers = {"Authorization": f"Bearer {pending['poll_secret']}"}
        async with session.get(url, headers=headers, ssl=server.trusting_context()) as answer:
            assert answer.status == 200
            assert "BEGIN CERTIFICATE" in (await answer.json())["certificate"]
