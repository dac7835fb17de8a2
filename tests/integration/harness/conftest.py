"""Fixtures of the harness's own tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.harness import member


@pytest.fixture
def member_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., member.MemberCluster]]:
    """``make(name, spec=None, **options)``: member clusters stopped when the test ends."""
    with member.factory(lambda name: tmp_path_factory.mktemp(f"member-{name}")) as make:
        yield make
