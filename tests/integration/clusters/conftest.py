"""One tunnel server and two registered member clusters, shared by the tests of a module."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.harness import kube
from tests.harness.daemons import Server
from tests.integration.clusters.members import Member, register


@dataclass
class Fleet:
    server: Server
    a: Member
    b: Member


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("clusters")
    planes = [kube.launch(f"member-{x}", base / f"member-{x}") for x in ("a", "b")]
    server = Server(workdir=base)
    members: list[Member] = []
    try:
        server.start()
        for plane in planes:
            plane.wait_ready()
        members = [register(server, plane, plane.name, base) for plane in planes]
        yield Fleet(server=server, a=members[0], b=members[1])
    finally:
        for member in members:
            member.agent.stop()
        server.stop()
        for plane in planes:
            plane.stop()
