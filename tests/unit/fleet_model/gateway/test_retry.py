"""Retrying a failed attempt: idempotency, nothing sent yet, attempts, deadline, eligibility."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model.gateway.retry import IDEMPOTENT_METHODS, Attempt, Failure, decide
from fleet_model.gateway.route import DEFAULT_RETRY, METHODS, Retry

BACKENDS = ("a", "b", "c")


def fail(
    backend: str = "a",
    failure: Failure = Failure.RESET,
    at: float = 10.0,
    status: int | None = None,
) -> Attempt:
    return Attempt(backend=backend, failure=failure, at=at, status=status)


def test_an_idempotent_request_cut_off_by_a_dying_cluster_goes_to_another_backend() -> None:
    decision = decide(method="GET", policy=DEFAULT_RETRY, attempts=[fail()], candidates=BACKENDS)
    assert decision.retry
    assert decision.exclude == {"a"}
    assert decision.not_before == 10.0


@pytest.mark.parametrize("method", sorted(set(METHODS) - IDEMPOTENT_METHODS))
def test_a_non_idempotent_request_that_may_have_arrived_is_not_retried(method: str) -> None:
    for failure in (Failure.RESET, Failure.TIMEOUT):
        decision = decide(
            method=method,
            policy=DEFAULT_RETRY,
            attempts=[fail(failure=failure)],
            candidates=BACKENDS,
        )
        assert not decision.retry
        assert "idempotent" in decision.reason
    connect = decide(
        method=method,
        policy=DEFAULT_RETRY,
        attempts=[fail(failure=Failure.CONNECT)],
        candidates=BACKENDS,
    )
    assert connect.retry, "a request that never reached a backend is sent once by retrying it"


def test_nothing_is_retried_once_the_client_got_a_byte() -> None:
    for failure in Failure:
        decision = decide(
            method="GET",
            policy=Retry(attempts=5, codes=(503,)),
            attempts=[fail(failure=failure, status=503)],
            candidates=BACKENDS,
            response_started=True,
        )
        assert not decision.retry


def test_statuses_are_retried_only_when_listed() -> None:
    policy = Retry(attempts=2, codes=(503,))
    assert decide(
        method="GET",
        policy=policy,
        attempts=[fail(failure=Failure.STATUS, status=503)],
        candidates=BACKENDS,
    ).retry
    refused = decide(
        method="GET",
        policy=policy,
        attempts=[fail(failure=Failure.STATUS, status=500)],
        candidates=BACKENDS,
    )
    assert not refused.retry
    assert "500" in refused.reason


def test_attempts_are_bounded_and_tried_backends_excluded() -> None:
    policy = Retry(attempts=2)
    one = decide(method="GET", policy=policy, attempts=[fail("a")], candidates=BACKENDS)
    two = decide(method="GET", policy=policy, attempts=[fail("a"), fail("b")], candidates=BACKENDS)
    three = decide(
        method="GET", policy=policy, attempts=[fail("a"), fail("b"), fail("c")], candidates=BACKENDS
    )
    assert one.retry
    assert two.retry
    assert two.exclude == {"a", "b"}
    assert not three.retry
    assert "2 retries spent" in three.reason
    none = decide(method="GET", policy=Retry(attempts=0), attempts=[fail()], candidates=BACKENDS)
    assert not none.retry


def test_no_retry_when_every_available_backend_was_tried() -> None:
    decision = decide(
        method="GET",
        policy=Retry(attempts=5),
        attempts=[fail("a"), fail("b")],
        candidates=("a", "b"),
    )
    assert not decision.retry
    assert "every available backend" in decision.reason


def test_backoff_and_deadline() -> None:
    policy = Retry(attempts=1, backoff=0.5)
    ok = decide(
        method="GET", policy=policy, attempts=[fail(at=10.0)], candidates=BACKENDS, deadline=11.0
    )
    assert ok.not_before == 10.5
    late = decide(
        method="GET", policy=policy, attempts=[fail(at=10.0)], candidates=BACKENDS, deadline=10.5
    )
    assert not late.retry


def test_a_streamed_body_cannot_be_replayed() -> None:
    decision = decide(
        method="PUT",
        policy=DEFAULT_RETRY,
        attempts=[fail()],
        candidates=BACKENDS,
        body_replayable=False,
    )
    assert not decision.retry


def test_decide_needs_an_attempt() -> None:
    with pytest.raises(ValueError, match="failed attempt"):
        decide(method="GET", policy=DEFAULT_RETRY, attempts=[], candidates=BACKENDS)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    failures=st.lists(
        st.tuples(
            st.sampled_from(BACKENDS),
            st.sampled_from(list(Failure)),
            st.sampled_from([None, 500, 503]),
        ),
        min_size=1,
        max_size=6,
    ),
    attempts=st.integers(0, 5),
    started=st.booleans(),
    replayable=st.booleans(),
)
def test_a_retry_always_respects_every_rule(
    method: str,
    failures: list[tuple[str, Failure, int | None]],
    attempts: int,
    *,
    started: bool,
    replayable: bool,
) -> None:
    tried = [
        Attempt(backend=b, failure=f, at=float(i), status=s) for i, (b, f, s) in enumerate(failures)
    ]
    decision = decide(
        method=method,
        policy=Retry(attempts=attempts, codes=(503,)),
        attempts=tried,
        candidates=BACKENDS,
        response_started=started,
        body_replayable=replayable,
    )
    if decision.retry:
        last = tried[-1]
        assert not started
        assert replayable
        assert len(tried) <= attempts
        assert method in IDEMPOTENT_METHODS or last.failure is Failure.CONNECT
        assert last.failure is not Failure.STATUS or last.status == 503
        assert set(BACKENDS) - decision.exclude
        assert decision.exclude == {a.backend for a in tried}
