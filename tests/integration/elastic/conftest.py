"""What every elastic test module shares: a member API client on the module's ``cluster``.

Each module defines its own module-scoped ``cluster`` fixture (its member's shape differs);
this ``api`` fixture uses whichever one the requesting module has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from edge_agent.cluster import credentials
from edge_agent.cluster.member_api import MemberApi, open_member_api
from edge_agent.cluster.settings import ClusterSettings
from tests.harness import member


@pytest.fixture
async def api(cluster: member.MemberCluster) -> AsyncIterator[MemberApi]:
    settings = ClusterSettings(kubeconfig=cluster.kubeconfig)
    async with open_member_api(credentials=credentials.load(settings), settings=settings) as client:
        yield client
