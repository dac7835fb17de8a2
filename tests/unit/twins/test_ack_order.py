"""AckOrder (replica.py rule 7), sans-IO: when a pipelined batch's messages are acknowledged.

A batch is acknowledged once the broker holds all of its answers and every earlier batch is
acknowledged (the order the messages came); at most `limit` batches and `MAX_RECENT` messages
per device wait unacknowledged; an answer that did not reach the broker stops every later
acknowledgement.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.twins.replica import MAX_RECENT, AckOrder


def test_a_later_batch_held_first_waits_for_the_earlier_one() -> None:
    order = AckOrder(limit=4)
    first, ready = order.start(answers=2, devices={"d1": 2})
    assert ready == []
    second, ready = order.start(answers=1, devices={"d2": 1})
    assert ready == []
    assert order.held(second) == []  # held, but batch `first` is still waiting
    assert order.held(first) == []
    assert order.held(first) == [first, second]
    assert order.unacknowledged == 0


def test_a_batch_with_nothing_to_send_is_acknowledged_in_its_turn() -> None:
    order = AckOrder(limit=4)
    number, ready = order.start(answers=0, devices={"d1": 3})
    assert ready == [number]
    first, _ = order.start(answers=1, devices={"d1": 1})
    quiet, ready = order.start(answers=0, devices={"d1": 1})
    assert ready == []  # behind `first`
    assert order.held(first) == [first, quiet]


def test_room_is_bounded_by_batches_and_by_each_devices_rid_memory() -> None:
    order = AckOrder(limit=2)
    assert order.has_room({"d1": MAX_RECENT + 5})  # nothing pending: one batch always goes
    first, _ = order.start(answers=1, devices={"d1": MAX_RECENT - 3})
    assert order.has_room({"d1": 3, "d2": MAX_RECENT})
    assert not order.has_room({"d2": MAX_RECENT + 1})  # alone it goes only when nothing waits
    assert not order.has_room({"d1": 4})  # d1's oldest rids would leave its memory
    order.start(answers=1, devices={"d2": 1})
    assert not order.has_room({"d3": 1})  # two batches already unacknowledged
    order.held(first)
    assert order.has_room({"d1": MAX_RECENT - 1, "d3": 1})


def test_a_failed_answer_stops_every_later_acknowledgement() -> None:
    order = AckOrder(limit=4)
    first, _ = order.start(answers=1, devices={"d1": 1})
    second, _ = order.start(answers=1, devices={"d1": 1})
    order.failed(first)
    assert order.broken
    assert order.held(second) == []
    assert order.has_room({"d1": 99})  # the caller must learn of the break, not wait
    with pytest.raises(RuntimeError):
        order.start(answers=1, devices={"d1": 1})


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        AckOrder(limit=0)
    order = AckOrder(limit=1)
    number, _ = order.start(answers=1, devices={})
    order.held(number)
    with pytest.raises(KeyError):
        order.held(number)  # acknowledged already: not pending


@st.composite
def pipelines(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Batch sizes, and an order in which their answers' PUBACKs arrive."""
    answers = draw(st.lists(st.integers(0, 4), min_size=1, max_size=8))
    arrivals = [number for number, count in enumerate(answers) for _ in range(count)]
    return answers, draw(st.permutations(arrivals))


@given(pipelines())
def test_any_puback_order_acknowledges_each_batch_once_in_order_after_its_answers(
    case: tuple[list[int], list[int]],
) -> None:
    answers, arrivals = case
    order = AckOrder(limit=len(answers))
    acknowledged: list[int] = []
    for count in answers:
        _, ready = order.start(answers=count, devices={"d": 1})
        acknowledged += ready
    left = list(answers)
    for number in arrivals:
        left[number] -= 1
        ready = order.held(number)
        for done in ready:
            # all of its answers are held, and so are those of every earlier batch
            assert all(remaining == 0 for remaining in left[: done + 1])
        acknowledged += ready
        # as soon as a prefix is complete it is acknowledged, not later
        complete = next((i for i, remaining in enumerate(left) if remaining), len(left))
        assert acknowledged == list(range(complete))
    assert acknowledged == list(range(len(answers)))
    assert order.unacknowledged == 0
