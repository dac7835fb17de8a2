"""The opener with the Lease watch's view: a dead holder, a stale one, an agent coming back.

A real ``PeerLinks`` (real dials to a port nobody listens on) for the dead holder; a
``ScriptedLinks`` (a ``PeerLinks`` whose ``open`` answers from a script per replica) where a
peer must answer "not held" or accept. The mirror is changed while a request waits, as the
Lease watch does.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import prometheus_client
import pytest
from aiohttp import web

from tests.harness.procs import free_port
from tunnel_protocol import ErrorCode
from tunnel_server.api import node_proxy
from tunnel_server.app_keys import SESSIONS_KEY
from tunnel_server.fleet import cluster_proxy
from tunnel_server.identity.pki import CertificateAuthority
from tunnel_server.replicas import opener, rules
from tunnel_server.replicas.keys import PEERS_KEY
from tunnel_server.replicas.mirror import LeaseMirror
from tunnel_server.replicas.peer_client import (
    NotHeldError,
    PeerLinks,
    PeerSettings,
    PeerUnreachableError,
)
from tunnel_server.settings import PkiSettings
from tunnel_server.tunnel.sessions import SessionRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tunnel_aio import TunnelStream
    from tunnel_server.tunnel.sessions import AgentSession

SETTINGS = PeerSettings(reconnect_wait=0.5, retry_after=1)
_versions = iter(range(1, 10_000))


def replica(name: str, *, peer: str, renewed: float | None = None) -> rules.LeaseRecord:
    return rules.LeaseRecord(
        name=rules.replica_lease(name),
        holder=name,
        renew_time=time.time() if renewed is None else renewed,
        duration=15,
        kind="replica",
        peer=peer,
        version=str(next(_versions)),
    )


def agent(node: str, holder: str) -> rules.LeaseRecord:
    return rules.LeaseRecord(
        name=rules.agent_lease(node),
        holder=holder,
        acquire_time=time.time(),
        kind="agent",
        node=node,
        version=str(next(_versions)),
    )


class ScriptedLinks(PeerLinks):
    """``open`` answers per replica: an exception to raise, or a stream to return."""

    def __init__(self, mirror: LeaseMirror, authority: CertificateAuthority) -> None:
        super().__init__(
            name="replica-a",
            issue=lambda: authority.issue_replica_certificate("replica-a", lifetime=3600),
            trusted_pem=authority.trusted_pem,
            settings=SETTINGS,
            registry=prometheus_client.CollectorRegistry(),
            mirror=mirror,
        )
        self.script: dict[str, Exception | str] = {}
        self.opened: list[str] = []

    async def open(
        self,
        *,
        replica: str,
        address: str,
        node: str,
        target: str,
        timeout: float,  # noqa: ASYNC109 - PeerLinks.open's signature
    ) -> TunnelStream:
        del address, node, target, timeout
        self.opened.append(replica)
        answer = self.script[replica]
        if isinstance(answer, Exception):
            raise answer
        return cast("TunnelStream", FakeStream(answer))


def _app(links: PeerLinks) -> web.Application:
    app = web.Application()
    app[SESSIONS_KEY] = SessionRegistry()
    app[PEERS_KEY] = links
    return app


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", settings=PkiSettings())


@pytest.fixture
def mirror() -> LeaseMirror:
    return LeaseMirror()


@pytest.fixture
async def real_app(
    mirror: LeaseMirror, authority: CertificateAuthority
) -> AsyncIterator[web.Application]:
    links = PeerLinks(
        name="replica-a",
        issue=lambda: authority.issue_replica_certificate("replica-a", lifetime=3600),
        trusted_pem=authority.trusted_pem,
        settings=SETTINGS,
        registry=prometheus_client.CollectorRegistry(),
        mirror=mirror,
    )
    task = asyncio.create_task(links.run(), name="test.peer-links")  # noqa: TID251 - a test's own
    await asyncio.sleep(0)
    try:
        yield _app(links)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _count(app: web.Application, result: str) -> float:
    value: float = app[PEERS_KEY].metrics.streams.labels("out", result)._value.get()
    return value


async def test_a_dead_holder_is_reconnecting_and_dialled_once(
    real_app: web.Application, mirror: LeaseMirror
) -> None:
    # b's Lease looks alive (renewed now, 15 s), but nothing listens at its address: killed.
    mirror.reset(
        [replica("replica-b", peer=f"127.0.0.1:{free_port()}"), agent("edge-1", "replica-b")]
    )
    assert opener.connected(real_app, "edge-1") is False  # no HOLDER_KEY here: the view decides
    began = time.monotonic()
    with pytest.raises(opener.AgentReconnectingError) as first:
        await opener.open_agent_stream(real_app, "edge-1", "web", timeout=10)
    waited = time.monotonic() - began
    assert SETTINGS.reconnect_wait <= waited < 5  # waited for a new holder, briefly
    assert (first.value.replica, first.value.retry_after) == ("replica-b", 1)
    assert first.value.code is ErrorCode.REFUSED_STREAM  # an AgentNotConnectedError too
    assert "replica-b" in str(first.value)
    assert opener.reconnecting(real_app, "edge-1")
    # Marked dead: the next request is not dialled again.
    with pytest.raises(opener.AgentReconnectingError):
        await opener.open_agent_stream(real_app, "edge-1", "web", timeout=10)
    assert _count(real_app, "unreachable") == 1
    assert _count(real_app, "reconnecting") == 2
    (gauge,) = real_app[PEERS_KEY].metrics.dead.collect()
    assert [sample.value for sample in gauge.samples] == [1.0]


async def test_a_request_waiting_goes_to_the_new_holder_once_the_watch_shows_it(
    mirror: LeaseMirror, authority: CertificateAuthority
) -> None:
    links = ScriptedLinks(mirror, authority)
    links.script = {
        "replica-b": PeerUnreachableError("refused", code=ErrorCode.CANCEL, dead=True),
        "replica-c": "stream on c",
    }
    mirror.reset(
        [
            replica("replica-b", peer="b:1"),
            replica("replica-c", peer="c:1"),
            agent("edge-1", "replica-b"),
        ]
    )
    assert links.view is not None
    links.view.unreachable("replica-b", time.time())  # as the real dial does
    app = _app(links)

    async def agent_moves() -> None:
        await asyncio.sleep(0.1)
        mirror.put(agent("edge-1", "replica-c"))

    async with asyncio.TaskGroup() as group:
        group.create_task(agent_moves(), name="test.agent-moves")
        began = time.monotonic()
        stream = await opener.open_agent_stream(app, "edge-1", "web", timeout=10)
        took = time.monotonic() - began
    assert stream.target == "stream on c"
    assert links.opened == ["replica-c"]  # b, marked dead, was never tried
    assert took < SETTINGS.reconnect_wait  # woken by the Lease change, not the end of the wait


async def test_a_stale_holder_is_read_again_and_the_new_one_tried_once(
    mirror: LeaseMirror, authority: CertificateAuthority
) -> None:
    links = ScriptedLinks(mirror, authority)
    not_held = NotHeldError("replica-b does not hold node 'edge-1'", code=ErrorCode.REFUSED_STREAM)
    links.script = {"replica-b": not_held, "replica-c": "stream on c"}
    mirror.reset(
        [
            replica("replica-b", peer="b:1"),
            replica("replica-c", peer="c:1"),
            agent("edge-1", "replica-b"),
        ]
    )
    app = _app(links)

    async def record_follows() -> None:
        await asyncio.sleep(0.1)  # the new holder's write reaches our watch a little later
        mirror.put(agent("edge-1", "replica-c"))

    async with asyncio.TaskGroup() as group:
        group.create_task(record_follows(), name="test.record")
        stream = await opener.open_agent_stream(app, "edge-1", "web", timeout=10)
    assert stream.target == "stream on c"
    assert links.opened == ["replica-b", "replica-c"]
    assert _count(app, "retried") == 1


async def test_a_stale_holder_and_the_agent_now_here_opens_locally(
    mirror: LeaseMirror, authority: CertificateAuthority
) -> None:
    links = ScriptedLinks(mirror, authority)
    links.script = {"replica-b": NotHeldError("does not hold node", code=ErrorCode.REFUSED_STREAM)}
    mirror.reset([replica("replica-b", peer="b:1"), agent("edge-1", "replica-b")])
    app = _app(links)
    local = LocalSession("edge-1")

    async def agent_connects_here() -> None:
        await asyncio.sleep(0.1)
        app[SESSIONS_KEY].add(cast("AgentSession", local))

    async with asyncio.TaskGroup() as group:
        group.create_task(agent_connects_here(), name="test.here")
        stream = await opener.open_agent_stream(app, "edge-1", "web", timeout=10)
    assert stream.target == "local web"
    assert links.opened == ["replica-b"]


async def test_a_stale_holder_that_stays_is_reconnecting(
    mirror: LeaseMirror, authority: CertificateAuthority
) -> None:
    links = ScriptedLinks(mirror, authority)
    links.script = {"replica-b": NotHeldError("does not hold node", code=ErrorCode.REFUSED_STREAM)}
    mirror.reset([replica("replica-b", peer="b:1"), agent("edge-1", "replica-b")])
    with pytest.raises(opener.AgentReconnectingError):
        await opener.open_agent_stream(_app(links), "edge-1", "web", timeout=10)
    assert links.opened == ["replica-b"]  # once: never a loop


async def test_a_peer_that_answers_but_refuses_the_link_is_not_marked_dead(
    mirror: LeaseMirror, authority: CertificateAuthority
) -> None:
    links = ScriptedLinks(mirror, authority)
    links.script = {"replica-b": PeerUnreachableError("429", code=ErrorCode.CANCEL, dead=False)}
    mirror.reset([replica("replica-b", peer="b:1"), agent("edge-1", "replica-b")])
    with pytest.raises(PeerUnreachableError):
        await opener.open_agent_stream(_app(links), "edge-1", "web", timeout=10)
    assert links.view is not None
    assert links.view.marked() == []


async def test_offline_is_answered_at_once(
    mirror: LeaseMirror, authority: CertificateAuthority
) -> None:
    links = ScriptedLinks(mirror, authority)
    mirror.reset([replica("replica-b", peer="b:1")])
    began = time.monotonic()
    with pytest.raises(opener.AgentNotConnectedError) as refused:
        await opener.open_agent_stream(_app(links), "edge-1", "web", timeout=10)
    assert not isinstance(refused.value, opener.AgentReconnectingError)
    assert time.monotonic() - began < SETTINGS.reconnect_wait  # nobody to wait for


@dataclass
class FakeStream:
    target: str


@dataclass
class LocalConnection:
    async def open_stream(
        self,
        target: str,
        *,
        timeout: float,  # noqa: ASYNC109 - TunnelConnection.open_stream's signature
        early_data: bytes = b"",
    ) -> TunnelStream:
        del timeout, early_data
        return cast("TunnelStream", FakeStream(f"local {target}"))


@dataclass
class LocalSession:
    """What the opener and the registry use of an ``AgentSession``."""

    name: str
    connection: LocalConnection = field(default_factory=LocalConnection)


def test_the_proxies_answer_reconnecting_with_retry_after() -> None:
    moving = opener.AgentReconnectingError("edge-1", replica="replica-b", retry_after=1)
    # The node proxy: a problem document (docs/api.md), reason agent_reconnecting.
    answer = node_proxy.ProxyError(
        503, "agent_reconnecting", str(moving), headers={"Retry-After": "1"}
    ).response()
    assert (answer.status, answer.headers["Retry-After"]) == (503, "1")
    assert isinstance(answer.body, bytes)
    problem = json.loads(answer.body)
    assert problem["reason"] == "agent_reconnecting"
    assert "replica-b" in problem["detail"]
    # The cluster proxy: a Kubernetes Status as the API server writes its own 503s.
    status = cluster_proxy.ClusterProxyError(503, str(moving), retry_after=1).response()
    assert (status.status, status.headers["Retry-After"]) == (503, "1")
    assert isinstance(status.body, bytes)
    body = json.loads(status.body)
    assert (body["reason"], body["code"], body["details"]) == (
        "ServiceUnavailable",
        503,
        {"retryAfterSeconds": 1},
    )
    plain = json.loads(cast("bytes", cluster_proxy.status_response(503, "offline").body))
    assert "details" not in plain
