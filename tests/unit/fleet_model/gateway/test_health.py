"""Backend health: conditions, active checks, outlier ejection with growing times, the board."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model.gateway.balancer import Balancer
from fleet_model.gateway.health import (
    CheckResult,
    Event,
    HealthBoard,
    HealthSettings,
    Outcome,
    Reachability,
    ReadyEndpoints,
    Reason,
    RequestResult,
    State,
)

SETTINGS = HealthSettings(
    consecutive_5xx=3,
    consecutive_connect_errors=2,
    base_ejection_seconds=10,
    max_ejection_seconds=25,
    max_ejection_percent=50,
    unhealthy_threshold=2,
    healthy_threshold=2,
)
ERROR = RequestResult(outcome=Outcome.SERVER_ERROR)
CONNECT = RequestResult(outcome=Outcome.CONNECT_ERROR)
OK = RequestResult(outcome=Outcome.SUCCESS)


def board_of(*keys: str, warm: bool = True) -> HealthBoard:
    board = HealthBoard(settings=SETTINGS)
    for key in keys:
        board.add(key, now=0.0, warm=warm)
    return board


def test_a_warm_backend_is_available_since_ever_a_new_one_since_added() -> None:
    board = board_of("a")
    board.add("b", now=5.0)
    assert board.available() == {"a": -math.inf, "b": 5.0}


def test_conditions_make_it_unhealthy_with_every_reason_and_recovery_starts_slow() -> None:
    board = board_of("a")
    changed = board.observe("a", Reachability(reachable=False), now=1.0)
    assert changed is not None
    assert changed.state is State.UNHEALTHY
    assert changed.reasons == (Reason.UNREACHABLE,)
    assert board.available() == {}
    board.observe("a", ReadyEndpoints(count=0), now=2.0)
    assert board.health("a").reasons == (Reason.UNREACHABLE, Reason.NO_READY_ENDPOINTS)
    assert board.health("a").since == 1.0
    assert board.health("a").describe() == "unhealthy: Unreachable, NoReadyEndpoints"
    assert board.observe("a", Reachability(reachable=True), now=3.0) is not None
    assert board.available() == {}
    back = board.observe("a", ReadyEndpoints(count=2), now=4.0)
    assert back is not None
    assert back.state is State.HEALTHY
    assert board.available() == {"a": 4.0}


def test_active_checks_need_thresholds_both_ways() -> None:
    board = board_of("a")
    fail, ok = CheckResult(ok=False), CheckResult(ok=True)
    assert board.observe("a", fail, now=1.0) is None
    assert board.observe("a", ok, now=2.0) is None  # resets the failure count
    assert board.observe("a", fail, now=3.0) is None
    changed = board.observe("a", fail, now=4.0)
    assert changed is not None
    assert changed.reasons == (Reason.FAILING_CHECKS,)
    assert board.observe("a", ok, now=5.0) is None
    assert board.observe("a", ok, now=6.0) is not None
    assert board.available() == {"a": 6.0}


def test_a_check_result_may_carry_its_routes_own_thresholds() -> None:
    board = board_of("a")  # the board's thresholds are 2 and 2
    fail = CheckResult(ok=False, unhealthy_threshold=3, healthy_threshold=1)
    ok = CheckResult(ok=True, unhealthy_threshold=3, healthy_threshold=1)
    assert board.observe("a", fail, now=1.0) is None
    assert board.observe("a", fail, now=2.0) is None  # 2 < 3: still in
    changed = board.observe("a", fail, now=3.0)
    assert changed is not None
    assert changed.reasons == (Reason.FAILING_CHECKS,)
    assert board.observe("a", ok, now=4.0) is not None  # one pass is enough
    assert board.available() == {"a": 4.0}


def test_consecutive_errors_eject_for_growing_capped_times() -> None:
    board = board_of("a", "b", "c", "d")
    for now in (1.0, 2.0):
        assert board.observe("a", ERROR, now=now) is None
    ejected = board.observe("a", ERROR, now=3.0)
    assert ejected is not None
    assert ejected.state is State.EJECTED
    assert ejected.wake_at == 13.0
    assert board.wake_at() == 13.0
    assert board.tick(12.9) == {}
    back = board.tick(14.0)
    assert back["a"].state is State.HEALTHY
    assert back["a"].available_since == 13.0, "recovery is dated at the ejection's end"
    assert board.wake_at() is None
    for now in (15.0, 16.0):
        board.observe("a", CONNECT, now=now)
    assert board.health("a").wake_at == 16.0 + 20.0, "the second ejection lasts twice the base"
    board.tick(36.0)
    for now in (37.0, 38.0):
        board.observe("a", CONNECT, now=now)
    assert board.health("a").wake_at == 38.0 + 25.0, "capped"
    board.tick(63.0)
    for now in (100.0, 101.0):
        board.observe("a", CONNECT, now=now)
    assert board.health("a").wake_at == 101.0 + 10.0, "the count starts again after quiet time"


def test_a_success_resets_the_counts_and_kinds_count_apart() -> None:
    board = board_of("a")
    for outcome in (ERROR, ERROR, OK, ERROR, ERROR, CONNECT):
        board.observe("a", outcome, now=1.0)
    assert board.health("a").state is State.HEALTHY, "2 of 3 errors, 1 of 2 connect failures"
    board.observe("a", ERROR, now=1.0)
    assert board.health("a").state is State.EJECTED, "a connect failure does not reset 5xx"


def test_max_ejection_percent_but_one_always_may_go() -> None:
    board = board_of("a", "b")
    for _ in range(2):
        board.observe("a", CONNECT, now=1.0)
        board.observe("b", CONNECT, now=1.0)
    assert board.health("a").state is State.EJECTED
    assert board.health("b").state is State.HEALTHY, "a pool of two ejects one at most"
    board.tick(11.0)
    board.observe("b", CONNECT, now=12.0)
    assert board.health("b").state is State.EJECTED, "it kept its count and goes when room is made"


def test_results_of_in_flight_requests_to_an_unhealthy_backend_are_ignored() -> None:
    board = board_of("a", "b")
    board.observe("a", Reachability(reachable=False), now=1.0)
    for _ in range(5):
        board.observe("a", CONNECT, now=1.0)
    board.observe("a", Reachability(reachable=True), now=2.0)
    assert board.health("a").state is State.HEALTHY
    assert board.observe("unknown", CONNECT, now=2.0) is None


def test_board_membership() -> None:
    board = board_of("a")
    board.add("a", now=9.0)
    assert board.available() == {"a": -math.inf}, "adding twice keeps the state"
    board.remove("a")
    board.remove("a")
    assert "a" not in board
    assert len(board) == 0


EVENTS = st.sampled_from(
    [
        Reachability(reachable=False),
        Reachability(reachable=True),
        ReadyEndpoints(count=0),
        ReadyEndpoints(count=3),
        CheckResult(ok=False),
        CheckResult(ok=True),
        ERROR,
        CONNECT,
        OK,
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), EVENTS, st.floats(0, 5)), max_size=60))
def test_the_balancer_never_picks_what_the_board_holds_unhealthy(
    script: list[tuple[str, Event, float]],
) -> None:
    board = board_of("a", "b", "c")
    balancer = Balancer({"a": 5, "b": 3, "c": 1})
    now = 0.0
    for key, event, step in script:
        now += step
        board.tick(now)
        board.observe(key, event, now=now)
        available = board.available()
        ejected = [k for k in board if board.health(k).state is State.EJECTED]
        assert len(ejected) <= 1, "50% of three is one"
        for k in board:
            health = board.health(k)
            assert (k in available) == (health.state is State.HEALTHY)
            assert (health.wake_at is not None) == (Reason.EJECTED in health.reasons)
            if health.wake_at is not None:
                assert health.wake_at > now
        chosen = balancer.pick(now=now, available=available)
        assert (chosen is None) == (not available)
        assert chosen is None or board.health(chosen).state is State.HEALTHY


def test_an_ejected_backend_that_also_went_unreachable_still_counts_as_ejected() -> None:
    board = board_of("a", "b")
    for _ in range(2):
        board.observe("a", CONNECT, now=1.0)
    board.observe("a", Reachability(reachable=False), now=2.0)
    assert board.health("a").reasons == (Reason.UNREACHABLE, Reason.EJECTED)
    for _ in range(2):
        board.observe("b", CONNECT, now=3.0)
    assert board.health("b").state is State.HEALTHY, "a is still ejected: no room for b"
