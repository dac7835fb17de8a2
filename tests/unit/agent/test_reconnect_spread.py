"""After a lived session drops, the backoff starts at the reconnect spread."""

from __future__ import annotations

import pytest

from edge_agent.settings import TunnelClientSettings
from edge_agent.tunnel_client import spread_attempts


@pytest.mark.parametrize(
    ("base", "spread", "attempts", "ceiling"),
    [
        (1.0, 15.0, 4, 16.0),  # the default: first retry within 16 s
        (1.0, 16.0, 4, 16.0),
        (1.0, 0.0, 0, 1.0),  # off: back to the plain backoff
        (2.0, 1.0, 0, 2.0),  # a spread below the base changes nothing
        (0.2, 15.0, 7, 25.6),
    ],
)
def test_first_ceiling_reaches_the_spread(
    base: float, spread: float, attempts: int, ceiling: float
) -> None:
    settings = TunnelClientSettings(backoff_base=base, reconnect_spread=spread)
    assert spread_attempts(settings) == attempts
    assert base * 2**attempts == pytest.approx(ceiling)
    assert base * 2**attempts >= spread
