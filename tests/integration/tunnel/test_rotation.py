"""Certificates rotate over the live tunnel session, long before they expire."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.identity import Identity
from tests.harness.daemons import Agent, Server
from tests.harness.waiting import eventually_async


@pytest.fixture
def short_lived(tmp_path: Path) -> Iterator[tuple[Server, Agent]]:
    server = Server(workdir=tmp_path, extra_args=("--client-cert-lifetime", "12s"))
    server.start()
    agent = Agent(
        name="rotor", workdir=tmp_path, server=server, tunnel_options={"renew_check_interval": 0.5}
    )
    try:
        agent.join()
        agent.start()
        agent.wait_connected()
        yield server, agent
    finally:
        agent.stop()
        server.stop()


async def test_certificate_rotates_over_the_session(short_lived: tuple[Server, Agent]) -> None:
    server, agent = short_lived
    first = Identity.load(agent.data_dir)
    serials = {first.certificate.serial_number}

    async def serials_seen() -> set[int]:
        serials.add(Identity.load(agent.data_dir).certificate.serial_number)
        return serials

    # Two renewals, one after another: three certificates seen.
    await eventually_async(
        serials_seen,
        lambda seen: len(seen) >= 3,
        what="the agent renewed twice",
        within=40,
        every=0.5,
    )
    assert server.metric("tunnel_server_session_connects_total") == 1, "no reconnect was needed"
    assert agent.process is not None
    assert "renewed over the tunnel" in agent.process.tail(200)
    # The first certificate has expired by now; a fresh process connects with the current one.
    agent.process.kill()
    agent.start()
    agent.wait_connected()
    assert server.metric("tunnel_server_sessions") == 1
