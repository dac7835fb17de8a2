"""A server answering 503 with Retry-After decides when the agent tries again, within bounds."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.settings import TunnelClientSettings
from edge_agent.tunnel_client import parse_retry_after, retry_after_delay

NOW = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5.0),
        (" 12 ", 12.0),
        ("0", 0.0),
        ("007", 7.0),
        ("60", 60.0),
        ("61", 60.0),  # capped at the limit
        ("86400", 60.0),
        ("9" * 5000, 60.0),  # absurd: capped, and no int() of 5,000 digits
        ("Fri, 27 Nov 2026 08:00:30 GMT", 30.0),  # an HTTP-date
        ("Fri, 27 Nov 2026 09:00:00 +0100", 0.0),  # the same instant as now, other zone
        ("Fri, 27 Nov 2026 07:59:00 GMT", 0.0),  # in the past: now
        ("Sat, 28 Nov 2026 08:00:00 GMT", 60.0),  # a day ahead: capped
        ("Fri Nov 27 08:00:10 2026", 10.0),  # asctime form: GMT by definition
    ],
)
def test_delay_seconds_and_dates_are_read_and_capped(value: str, seconds: float) -> None:
    assert parse_retry_after(value, limit=60.0, now=NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [None, "", "soon", "-5", "1.5", "5s", "1e3", "0x10", "\u0663", "\uff15", "Fri, 99 Nov 2026"],
)
def test_garbage_is_ignored(value: str | None) -> None:
    """Not understood: the caller falls back to its own backoff."""
    assert parse_retry_after(value, limit=60.0, now=NOW) is None


@given(st.text(max_size=80))
def test_any_header_gives_nothing_or_a_bounded_delay(value: str) -> None:
    seconds = parse_retry_after(value, limit=60.0, now=NOW)
    assert seconds is None or 0.0 <= seconds <= 60.0


@pytest.mark.parametrize("seconds", [0.0, 0.5, 1.0, 7.0, 30.0, 55.0, 60.0])
def test_wait_is_the_servers_time_plus_jitter_within_base_and_cap(seconds: float) -> None:
    settings = TunnelClientSettings(backoff_base=1.0, backoff_cap=60.0)
    rng = random.Random(3)  # noqa: S311 - jitter, not cryptography
    delays = [retry_after_delay(seconds, settings, rng) for _ in range(500)]
    assert all(max(1.0, seconds) <= d <= min(60.0, seconds + 1.0 + seconds / 5) for d in delays)
    if 1.0 <= seconds <= 59.0:  # room between base and cap: the same second spreads out
        assert max(delays) - min(delays) > 0.5


def test_a_small_cap_wins_over_the_servers_time() -> None:
    settings = TunnelClientSettings(backoff_base=0.2, backoff_cap=2.0)
    assert retry_after_delay(30.0, settings, random.Random(1)) == 2.0  # noqa: S311 - jitter
