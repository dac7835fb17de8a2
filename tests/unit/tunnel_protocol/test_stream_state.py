"""The stream state table, checked cell by cell: allowed inputs move, the rest raise."""

from __future__ import annotations

import itertools

import pytest

from tunnel_protocol import ErrorCode, LocalProtocolError, RemoteProtocolError
from tunnel_protocol.stream_state import (
    TRANSITIONS,
    StreamInput,
    StreamState,
    StreamStateMachine,
)

S = StreamState
I = StreamInput  # noqa: E741 -- same alias as the module under test, so cells read alike


def machine_in(state: StreamState) -> StreamStateMachine:
    machine = StreamStateMachine()
    machine.state = state
    return machine


ALL_CELLS = list(itertools.product(StreamState, StreamInput))
ALLOWED = [(s, i) for s, i in ALL_CELLS if i in TRANSITIONS[s]]
FORBIDDEN = [(s, i) for s, i in ALL_CELLS if i not in TRANSITIONS[s]]


@pytest.mark.parametrize(("state", "event"), ALLOWED)
def test_allowed_inputs_move_as_the_table_says(state: StreamState, event: StreamInput) -> None:
    machine = machine_in(state)
    assert machine.process(event) is TRANSITIONS[state][event]
    assert machine.state is TRANSITIONS[state][event]


@pytest.mark.parametrize(("state", "event"), FORBIDDEN)
def test_forbidden_inputs_raise_and_change_nothing(state: StreamState, event: StreamInput) -> None:
    machine = machine_in(state)
    expected = RemoteProtocolError if event.is_remote else LocalProtocolError
    with pytest.raises(expected):
        machine.process(event)
    assert machine.state is state


def test_half_close_is_real_both_ways() -> None:
    machine = machine_in(S.OPEN)
    machine.process(I.SEND_FIN)
    assert not machine.can_send
    assert machine.can_receive  # the peer's direction is still open after our FIN
    machine.process(I.RECV_DATA)
    assert machine.process(I.RECV_FIN) is S.CLOSED

    machine = machine_in(S.OPEN)
    machine.process(I.RECV_FIN)
    assert machine.can_send
    assert not machine.can_receive
    machine.process(I.SEND_DATA)
    assert machine.process(I.SEND_FIN) is S.CLOSED


@pytest.mark.parametrize("event", [I.RECV_DATA, I.RECV_FIN])
def test_peer_data_after_its_fin_is_stream_closed(event: StreamInput) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        machine_in(S.HALF_CLOSED_REMOTE).process(event)
    assert caught.value.code is ErrorCode.STREAM_CLOSED


def test_data_before_accept_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        machine_in(S.OPENING_LOCAL).process(I.RECV_DATA)
    assert caught.value.code is ErrorCode.PROTOCOL_ERROR


def test_every_live_state_can_be_reset_and_closed_is_final() -> None:
    live = [s for s in StreamState if s not in {S.IDLE, S.CLOSED}]
    for state, event in itertools.product(live, [I.SEND_RESET, I.RECV_RESET]):
        assert machine_in(state).process(event) is S.CLOSED
    assert TRANSITIONS[S.CLOSED] == {}
