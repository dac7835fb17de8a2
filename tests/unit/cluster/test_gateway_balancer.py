"""Round robin with outlier ejection, as a script over passed-in time."""

from __future__ import annotations

import pytest

from edge_agent.cluster.gateway.balancer import Balancer
from edge_agent.cluster.gateway.endpoints import Endpoint

A, B, C = (Endpoint(f"10.0.0.{i}", 8080) for i in (1, 2, 3))


def balancer(**options: float) -> Balancer:
    settings = {"eject_after": 2, "eject_base": 5.0, "eject_max": 30.0, **options}
    return Balancer(
        eject_after=int(settings["eject_after"]),
        eject_base=settings["eject_base"],
        eject_max=settings["eject_max"],
    )


def test_round_robin_starts_one_further_each_time() -> None:
    b = balancer()
    firsts = [b.order("demo/web:80", [A, B, C], now=0.0)[0] for _ in range(6)]
    assert firsts == [A, B, C, A, B, C]
    assert b.order("demo/web:80", [A, B, C], now=0.0) == [A, B, C]
    # Every key has its own cursor.
    assert b.order("demo/api:80", [A, B, C], now=0.0)[0] == A


def test_consecutive_failures_eject_and_ejected_endpoints_go_last() -> None:
    b = balancer()
    assert not b.failed(B, now=0.0)
    assert b.failed(B, now=0.0)  # two in a row
    assert b.ejections == 1
    assert b.is_ejected(B, now=4.9)
    orders = [b.order("k", [A, B, C], now=1.0) for _ in range(4)]
    assert all(order[-1] == B for order in orders)
    assert [order[0] for order in orders] == [A, C, A, C]
    assert b.ejected(now=1.0) == {B: 4.0}
    assert not b.is_ejected(B, now=5.0)  # back after eject_base, in the rotation again
    assert b.order("k", [A, B, C], now=5.0) == [B, C, A]  # the fifth pick: cursor 4 of 3


def test_a_success_between_failures_resets_the_count() -> None:
    b = balancer()
    assert not b.failed(A, now=0.0)
    b.succeeded(A)
    assert not b.failed(A, now=0.0)
    assert not b.is_ejected(A, now=0.0)


def test_ejections_in_a_row_double_up_to_the_cap_and_probation_is_one_failure() -> None:
    b = balancer()
    now = 0.0
    durations = []
    b.failed(A, now)
    for _ in range(5):
        assert b.failed(A, now)  # after the first ejection, one failure on return suffices
        durations.append(b.ejected(now)[A])
        now += durations[-1]
    assert durations == [5.0, 10.0, 20.0, 30.0, 30.0]
    b.succeeded(A)
    assert not b.failed(A, now)  # history forgotten: two in a row again
    assert b.failed(A, now)
    assert b.ejected(now)[A] == 5.0


def test_a_failure_while_ejected_counts_nothing_more() -> None:
    b = balancer(eject_after=1)
    assert b.failed(A, now=0.0)
    assert not b.failed(A, now=1.0)  # dialled as a last resort
    assert b.ejected(now=1.0) == {A: 4.0}
    assert b.ejections == 1


def test_all_ejected_are_still_tried_soonest_back_first() -> None:
    b = balancer(eject_after=1)
    b.failed(A, now=0.0)
    b.failed(B, now=1.0)
    b.failed(C, now=0.5)
    assert b.order("k", [A, B, C], now=2.0) == [A, C, B]


def test_retain_forgets_endpoints_that_left() -> None:
    b = balancer(eject_after=1)
    b.failed(A, now=0.0)
    b.failed(B, now=0.0)
    b.retain([B, C])
    assert not b.is_ejected(A, now=0.0)
    assert b.is_ejected(B, now=0.0)


def test_cursors_are_bounded() -> None:
    b = Balancer(eject_after=1, eject_base=1.0, eject_max=1.0, max_keys=3)
    for key in ("a", "b", "c", "d"):
        b.order(key, [A, B], now=0.0)
    assert len(b._cursors) == 3
    assert "a" not in b._cursors


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="eject_after"):
        Balancer(eject_after=0, eject_base=1.0, eject_max=2.0)
    with pytest.raises(ValueError, match="eject_base"):
        Balancer(eject_after=1, eject_base=3.0, eject_max=2.0)
