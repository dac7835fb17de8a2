"""The life of one stream: every state, every frame, every transition. Rules live only here.

Theory of operation
-------------------
A stream is a pair of byte pipes (one each way) between the two ends of a session, opened by
either end. This machine tracks one stream *from this end's point of view*; it does not know
whether it runs in the agent or the cloud, or what the bytes mean. Each direction closes on its
own (FIN), which gives real half-close: after we send FIN we keep receiving DATA until the
peer's FIN, and the reverse. RESET closes both directions at once, from any live state.

Inputs are the frames we send (``SEND_*``, caused by an API call) and the frames we receive
(``RECV_*``). The table below is the whole protocol of a stream; a pair missing from it is a
violation. A missing ``SEND_*`` pair is the caller's mistake (``LocalProtocolError``, nothing
sent, nothing changed). A missing ``RECV_*`` pair is the peer's (``RemoteProtocolError``), and
the session answers it by resetting *just that stream*; connection-level rules (ids, parity,
frame sizes) are checked by the session before a frame reaches this machine.

=====================  ==================================================================
state                  input → next state
=====================  ==================================================================
IDLE                   SEND_OPEN → OPENING_LOCAL;  RECV_OPEN → OPENING_REMOTE
OPENING_LOCAL          RECV_ACCEPT → OPEN;  RECV_REJECT → CLOSED;  *_RESET → CLOSED
  (we sent OPEN)       (no DATA, FIN or WINDOW_UPDATE either way before ACCEPT)
OPENING_REMOTE         SEND_ACCEPT → OPEN;  SEND_REJECT → CLOSED;  *_RESET → CLOSED
  (peer sent OPEN)
OPEN                   *_DATA, *_WINDOW_UPDATE → OPEN;  SEND_FIN → HALF_CLOSED_LOCAL;
                       RECV_FIN → HALF_CLOSED_REMOTE;  *_RESET → CLOSED
HALF_CLOSED_LOCAL      RECV_DATA, *_WINDOW_UPDATE → HALF_CLOSED_LOCAL;  RECV_FIN → CLOSED;
  (we sent FIN)        *_RESET → CLOSED.  We may not send DATA or FIN again.
HALF_CLOSED_REMOTE     SEND_DATA, RECV_WINDOW_UPDATE → HALF_CLOSED_REMOTE;  SEND_FIN → CLOSED;
  (peer sent FIN)      *_RESET → CLOSED.  Peer DATA or FIN now is STREAM_CLOSED.
CLOSED                 nothing: the session forgets the stream, so late frames never get here
=====================  ==================================================================

With the early-data extension (both HELLOs offered it; ``early_data=True``) four cells are
added, and two states that only they lead to:

=====================  ==================================================================
OPENING_LOCAL          SEND_DATA → OPENING_LOCAL;  SEND_FIN → OPENING_LOCAL_ENDED
OPENING_REMOTE         RECV_DATA → OPENING_REMOTE;  RECV_FIN → OPENING_REMOTE_ENDED
OPENING_LOCAL_ENDED    RECV_ACCEPT → HALF_CLOSED_LOCAL;  RECV_REJECT → CLOSED;  *_RESET → CLOSED
  (we sent OPEN, FIN)  (we may not send DATA or FIN again)
OPENING_REMOTE_ENDED   SEND_ACCEPT → HALF_CLOSED_REMOTE;  SEND_REJECT → CLOSED;  *_RESET → CLOSED
  (peer sent OPEN, FIN)  (peer DATA or FIN now is STREAM_CLOSED)
=====================  ==================================================================

WINDOW_UPDATE still waits for ACCEPT either way: the receiver holds early data unread until it
accepts (the window bounds it), then gives back what its application consumed.

``*_X`` means both ``SEND_X`` and ``RECV_X``. WINDOW_UPDATE stays legal towards a half-closed
direction because one may be in flight when the FIN is sent; it is simply useless there.
Flow control (how much DATA) is the session's concern; this machine only says whether DATA is
allowed at all.
"""

from __future__ import annotations

import enum

from tunnel_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = [
    "EARLY_TRANSITIONS",
    "TRANSITIONS",
    "UNANSWERED",
    "StreamInput",
    "StreamState",
    "StreamStateMachine",
]


class StreamState(enum.Enum):
    IDLE = "IDLE"
    OPENING_LOCAL = "OPENING_LOCAL"
    OPENING_REMOTE = "OPENING_REMOTE"
    OPENING_LOCAL_ENDED = "OPENING_LOCAL_ENDED"
    """Early data: we sent OPEN and FIN, no answer yet."""
    OPENING_REMOTE_ENDED = "OPENING_REMOTE_ENDED"
    """Early data: the peer sent OPEN and FIN, we have not answered yet."""
    OPEN = "OPEN"
    HALF_CLOSED_LOCAL = "HALF_CLOSED_LOCAL"
    HALF_CLOSED_REMOTE = "HALF_CLOSED_REMOTE"
    CLOSED = "CLOSED"

    # Members are singletons compared by identity, so identity hashing is exact; Enum's own
    # ``__hash__`` is Python code hashing the name, and the table lookups below run for
    # every frame.
    __hash__ = object.__hash__


class StreamInput(enum.Enum):
    __hash__ = object.__hash__  # as StreamState's: identity, for the per-frame table lookups

    SEND_OPEN = "SEND_OPEN"
    RECV_OPEN = "RECV_OPEN"
    SEND_ACCEPT = "SEND_ACCEPT"
    RECV_ACCEPT = "RECV_ACCEPT"
    SEND_REJECT = "SEND_REJECT"
    RECV_REJECT = "RECV_REJECT"
    SEND_DATA = "SEND_DATA"
    RECV_DATA = "RECV_DATA"
    SEND_WINDOW_UPDATE = "SEND_WINDOW_UPDATE"
    RECV_WINDOW_UPDATE = "RECV_WINDOW_UPDATE"
    SEND_FIN = "SEND_FIN"
    RECV_FIN = "RECV_FIN"
    SEND_RESET = "SEND_RESET"
    RECV_RESET = "RECV_RESET"

    @property
    def is_remote(self) -> bool:
        return self.name.startswith("RECV_")


S = StreamState
I = StreamInput  # noqa: E741 -- one-letter alias keeps the table below readable

_RESETS = {I.SEND_RESET: S.CLOSED, I.RECV_RESET: S.CLOSED}

TRANSITIONS: dict[StreamState, dict[StreamInput, StreamState]] = {
    S.IDLE: {I.SEND_OPEN: S.OPENING_LOCAL, I.RECV_OPEN: S.OPENING_REMOTE},
    S.OPENING_LOCAL: {I.RECV_ACCEPT: S.OPEN, I.RECV_REJECT: S.CLOSED, **_RESETS},
    S.OPENING_REMOTE: {I.SEND_ACCEPT: S.OPEN, I.SEND_REJECT: S.CLOSED, **_RESETS},
    # Reached only with early data (below), left the same way in both tables.
    S.OPENING_LOCAL_ENDED: {
        I.RECV_ACCEPT: S.HALF_CLOSED_LOCAL,
        I.RECV_REJECT: S.CLOSED,
        **_RESETS,
    },
    S.OPENING_REMOTE_ENDED: {
        I.SEND_ACCEPT: S.HALF_CLOSED_REMOTE,
        I.SEND_REJECT: S.CLOSED,
        **_RESETS,
    },
    S.OPEN: {
        I.SEND_DATA: S.OPEN,
        I.RECV_DATA: S.OPEN,
        I.SEND_WINDOW_UPDATE: S.OPEN,
        I.RECV_WINDOW_UPDATE: S.OPEN,
        I.SEND_FIN: S.HALF_CLOSED_LOCAL,
        I.RECV_FIN: S.HALF_CLOSED_REMOTE,
        **_RESETS,
    },
    S.HALF_CLOSED_LOCAL: {
        I.RECV_DATA: S.HALF_CLOSED_LOCAL,
        I.SEND_WINDOW_UPDATE: S.HALF_CLOSED_LOCAL,
        I.RECV_WINDOW_UPDATE: S.HALF_CLOSED_LOCAL,
        I.RECV_FIN: S.CLOSED,
        **_RESETS,
    },
    S.HALF_CLOSED_REMOTE: {
        I.SEND_DATA: S.HALF_CLOSED_REMOTE,
        I.RECV_WINDOW_UPDATE: S.HALF_CLOSED_REMOTE,
        I.SEND_FIN: S.CLOSED,
        **_RESETS,
    },
    S.CLOSED: {},
}
"""The table of the module docstring, as data."""

EARLY_TRANSITIONS: dict[StreamState, dict[StreamInput, StreamState]] = {
    **TRANSITIONS,
    S.OPENING_LOCAL: {
        **TRANSITIONS[S.OPENING_LOCAL],
        I.SEND_DATA: S.OPENING_LOCAL,
        I.SEND_FIN: S.OPENING_LOCAL_ENDED,
    },
    S.OPENING_REMOTE: {
        **TRANSITIONS[S.OPENING_REMOTE],
        I.RECV_DATA: S.OPENING_REMOTE,
        I.RECV_FIN: S.OPENING_REMOTE_ENDED,
    },
}
"""The table with the early-data cells of the module docstring: a stream of a session where
both ends offered the extension uses this one."""

UNANSWERED = frozenset({S.OPENING_REMOTE, S.OPENING_REMOTE_ENDED})
"""The peer opened the stream and we have not answered: early data waits, no credit goes back."""


def _states_allowing(event: StreamInput) -> dict[bool, frozenset[StreamState]]:
    """Per table (keyed by ``early_data``), the states where ``event`` is allowed."""
    tables = {False: TRANSITIONS, True: EARLY_TRANSITIONS}
    return {
        early: frozenset(state for state, row in table.items() if event in row)
        for early, table in tables.items()
    }


_CAN_SEND = _states_allowing(I.SEND_DATA)
_CAN_RECEIVE = _states_allowing(I.RECV_DATA)
_PEER_DIRECTION_CLOSED = frozenset({S.HALF_CLOSED_REMOTE, S.OPENING_REMOTE_ENDED, S.CLOSED})


class StreamStateMachine:
    """Current state of one stream; ``process`` applies an input or raises without changing."""

    __slots__ = ("_can_receive", "_can_send", "_table", "state")

    def __init__(self, *, early_data: bool = False) -> None:
        self.state = StreamState.IDLE
        self._table = EARLY_TRANSITIONS if early_data else TRANSITIONS
        self._can_send = _CAN_SEND[early_data]
        self._can_receive = _CAN_RECEIVE[early_data]

    @property
    def early_data(self) -> bool:
        return self._table is EARLY_TRANSITIONS

    @property
    def can_send(self) -> bool:
        """Whether we may send DATA (accepted, or opened by us with early data; not ended)."""
        return self.state in self._can_send

    @property
    def can_receive(self) -> bool:
        """Whether the peer may still send DATA to us."""
        return self.state in self._can_receive

    def process(self, event: StreamInput) -> StreamState:
        """Apply ``event`` and return the new state.

        Raises ``LocalProtocolError`` for a ``SEND_*`` input and ``RemoteProtocolError`` for a
        ``RECV_*`` input that the table does not allow; the state is then unchanged.
        """
        new_state = self._table[self.state].get(event)
        if new_state is None:
            raise self._violation(event)
        self.state = new_state
        return new_state

    def _violation(self, event: StreamInput) -> LocalProtocolError | RemoteProtocolError:
        message = f"{event.name} is not allowed in state {self.state.name}"
        if not event.is_remote:
            return LocalProtocolError(message)
        data_or_fin = event in {I.RECV_DATA, I.RECV_FIN}
        if data_or_fin and self.state in _PEER_DIRECTION_CLOSED:
            return RemoteProtocolError(message, code=ErrorCode.STREAM_CLOSED)
        return RemoteProtocolError(message, code=ErrorCode.PROTOCOL_ERROR)
