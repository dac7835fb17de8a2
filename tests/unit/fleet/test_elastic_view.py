"""The elastic view's routes in-process: what is refused before a member is asked.

With a real member cluster behind a real agent: tests/integration/clusters/elastic_view/.
Here: authentication, the cluster scope, names and parameters, a cluster that is not there or
offline, and the bounded read of the member's answer against a stream that misbehaves (the
one place a fake stands in: a fault to inject).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import h11
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tunnel_aio import TunnelStream
from tunnel_server.api.caller import Caller
from tunnel_server.app import bootstrap, create_app
from tunnel_server.app_keys import STORE_KEY
from tunnel_server.fleet import member_read
from tunnel_server.fleet.cluster_proxy import TARGET
from tunnel_server.identity import tokens, users
from tunnel_server.settings import ServerSettings
from tunnel_server.store import NodeKind, NodeRecord

Client = TestClient[web.Request, web.Application]
ROUTES = ("nodepools", "resourcepolicies")


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    settings = ServerSettings(data_dir=tmp_path, port=1)
    identity = bootstrap(settings)
    now = time.time()
    kinds: tuple[tuple[str, NodeKind], ...] = (("east", "cluster"), ("edge-1", "node"))
    for name, kind in kinds:
        token = tokens.create_token(
            identity.store, tokens.TokenSpec(kind=kind, name=name, ttl=60), now=now
        )
        identity.store.redeem_token(
            token.id,
            now=now,
            node=NodeRecord(name=name, kind=kind, state="approved", created_at=now),
        )
    app = create_app(settings, identity=identity)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    identity.store.close()


def admin(tmp_path: Path) -> dict[str, str]:
    return {"Authorization": "Bearer " + (tmp_path / "admin-token").read_text().strip()}


async def _get(client: Client, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    answer = await client.get(path, headers=headers)
    assert answer.content_type == "application/problem+json", await answer.text()
    return answer.status, await answer.json()


@pytest.mark.parametrize("route", ROUTES)
async def test_refusals_before_the_member_is_asked(
    client: Client, tmp_path: Path, route: str
) -> None:
    headers = admin(tmp_path)
    status, body = await _get(client, f"/api/v1/clusters/east/{route}", {})
    assert (status, body["reason"]) == (401, "unauthenticated")
    status, body = await _get(client, f"/api/v1/clusters/No_Such/{route}", headers)
    assert (status, body["reason"]) == (400, "bad_name")
    status, body = await _get(client, f"/api/v1/clusters/west/{route}", headers)
    assert (status, body["reason"]) == (404, "cluster_not_found")
    status, body = await _get(client, f"/api/v1/clusters/edge-1/{route}", headers)
    assert (status, body["reason"]) == (404, "cluster_not_found")
    assert "is a node" in body["detail"]
    status, body = await _get(client, f"/api/v1/clusters/east/{route}?limit=0", headers)
    assert (status, body["reason"]) == (400, "bad_parameter")
    status, body = await _get(client, f"/api/v1/clusters/east/{route}?continue=bm9wZQ", headers)
    assert (status, body["reason"]) == (400, "bad_continue")
    # Registered, but its agent has no tunnel session: nothing can be read.
    status, body = await _get(client, f"/api/v1/clusters/east/{route}", headers)
    assert (status, body["reason"]) == (503, "cluster_offline")
    assert "cluster east is offline" in body["detail"]


async def test_a_namespace_must_be_a_namespace_name(client: Client, tmp_path: Path) -> None:
    for bad in ("Shop", "a/b", "-x", "x" * 64):
        status, body = await _get(
            client, f"/api/v1/clusters/east/resourcepolicies?namespace={bad}", admin(tmp_path)
        )
        assert (status, body["reason"]) == (400, "bad_parameter"), bad
        assert "namespace" in body["detail"]


async def test_the_cloud_scope_comes_first(client: Client) -> None:
    _, token = users.create_user(
        client.app[STORE_KEY],
        "ops",
        role="operator",
        clusters=("west",),
        ttl=3600,
        now=time.time(),
    )
    for route in ROUTES:
        status, body = await _get(
            client, f"/api/v1/clusters/east/{route}", {"Authorization": f"Bearer {token}"}
        )
        assert (status, body["reason"]) == (403, "cluster_out_of_scope")


# ---------------------------------------------------------------- the bounded read


class FakeStream:
    """What the agent's side of a stream would send back, in chunks; what we wrote, kept."""

    target = TARGET

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = deque(chunks)
        self.written = b""

    async def write(self, data: bytes) -> None:
        self.written += data

    async def read(self, max_bytes: int = 256 * 1024) -> bytes:
        del max_bytes
        return self.chunks.popleft() if self.chunks else b""


CALLER = Caller(name="alice smith", role="viewer", clusters=None)


async def exchange(stream: FakeStream, *, limit: int) -> member_read.MemberAnswer:
    head = member_read._head("/apis/x?limit=5", CALLER)
    return await member_read._exchange(cast("TunnelStream", stream), head, limit=limit)


async def test_the_request_carries_the_cluster_proxys_impersonation_and_nothing_else() -> None:
    stream = FakeStream(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}")
    answer = await exchange(stream, limit=100)
    assert (answer.status, answer.content_type, answer.body) == (200, "application/json", b"{}")
    sent = stream.written.decode()
    assert sent.startswith("GET /apis/x?limit=5 HTTP/1.1\r\n")
    assert "impersonate-user: edgefleet:viewer\r\n" in sent.lower()
    assert "impersonate-group: edgefleet:viewer\r\n" in sent.lower()
    assert "impersonate-extra-user.edgefleet.io: alice%20smith\r\n" in sent.lower()
    assert "authorization" not in sent.lower()


async def test_an_answer_over_the_limit_is_not_read_on() -> None:
    stream = FakeStream(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"x" * 600, b"x" * 400)
    with pytest.raises(member_read._TooLargeError):
        await exchange(stream, limit=500)
    assert stream.chunks, "the rest was left unread"


async def test_garbage_and_silence_are_protocol_errors() -> None:
    with pytest.raises(h11.RemoteProtocolError):
        await exchange(FakeStream(b"SSH-2.0-nope\r\n\r\n"), limit=500)
    with pytest.raises(h11.RemoteProtocolError):
        await exchange(FakeStream(), limit=500)
