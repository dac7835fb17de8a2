"""Hypothesis against whole sessions: hostile bytes, and random API interleavings on a pair."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.tunnel_protocol.helpers import SessionPair, assert_no_leaks
from tests.unit.tunnel_protocol.strategies import messages
from tunnel_protocol import (
    DataReceived,
    ErrorCode,
    Event,
    Role,
    SessionState,
    SessionTerminated,
    StreamClosed,
    StreamOpened,
    StreamRejected,
    StreamReset,
    StreamState,
    TunnelSession,
    TunnelSettings,
    WindowUpdate,
)
from tunnel_protocol.stream_state import UNANSWERED

WINDOW = 4096
CAP = 4
SMALL = TunnelSettings(initial_window=WINDOW, max_concurrent_streams=CAP, max_frame_payload=1024)


def handshaken_server() -> TunnelSession:
    server = TunnelSession(Role.SERVER, now=0.0, settings=SMALL)
    client = TunnelSession(Role.CLIENT, now=0.0, settings=SMALL)
    for message in client.messages_to_send():
        server.receive_message(message)
    server.events()
    server.messages_to_send()
    return server


@settings(deadline=None, max_examples=200)
@given(inputs=st.lists(messages(st.integers(1, 9)), max_size=25))
def test_hostile_bytes_never_raise_and_state_stays_bounded(inputs: list[bytes]) -> None:
    server = handshaken_server()
    for index, message in enumerate(inputs):
        server.receive_message(message, now=float(index))
        events = server.events()
        assert len(server.messages_to_send()) <= 2  # one answer per message, at most a reset
        assert server.open_streams_count <= CAP
        assert all(server.buffered_bytes(sid) <= WINDOW for sid in range(1, 10))
        assert server.total_buffered_bytes <= CAP * WINDOW
        for event in events:
            if isinstance(event, StreamOpened):  # an application that accepts everything
                server.accept(event.stream_id)
    if server.state is SessionState.TERMINATED:
        assert_no_leaks(server)
    server.close()
    assert_no_leaks(server)


# ---------------------------------------------------------------------------- conservation


@dataclass
class Ledger:
    """What the applications on both ends sent and received, per stream and direction."""

    sent: dict[tuple[Role, int], int] = field(default_factory=dict)
    received: dict[tuple[Role, int], bytearray] = field(default_factory=dict)
    reset: set[int] = field(default_factory=set)
    known: dict[Role, set[int]] = field(default_factory=lambda: {r: set() for r in Role})
    closed: dict[Role, set[int]] = field(default_factory=lambda: {r: set() for r in Role})
    pending: dict[Role, list[int]] = field(default_factory=lambda: {r: [] for r in Role})


_CYCLE = bytes(range(251)) * 64


def pattern(stream_id: int, start: int, length: int) -> bytes:
    """The bytes a sender writes at ``start``: position-dependent, so reordering shows."""
    chunks = []
    offset = (stream_id * 7 + start) % 251
    while length > 0:  # the cycle repeats every 251 bytes, so any window of it will do
        chunk = _CYCLE[offset : offset + length]
        chunks.append(chunk)
        length -= len(chunk)
        offset = (offset + len(chunk)) % 251
    return b"".join(chunks)


def record(ledger: Ledger, receiver: TunnelSession, events: list[Event]) -> None:
    for event in events:
        if isinstance(event, DataReceived):
            key = (receiver.role, event.stream_id)
            ledger.received.setdefault(key, bytearray()).extend(event.data)
        elif isinstance(event, StreamOpened):
            ledger.pending[receiver.role].append(event.stream_id)
            ledger.known[receiver.role].add(event.stream_id)
        elif isinstance(event, StreamReset | StreamRejected):
            # A refused stream's early data may be cut short too (the rest was in flight).
            ledger.reset.add(event.stream_id)
        elif isinstance(event, StreamClosed):
            assert event.stream_id not in ledger.closed[receiver.role], "closed twice"
            ledger.closed[receiver.role].add(event.stream_id)


def live_streams(session: TunnelSession) -> list[int]:
    return sorted(session._streams)


OPS = st.sampled_from(["open", "answer", "send", "ack", "fin", "reset", "deliver", "go_away"])
STEPS = st.tuples(
    OPS, st.sampled_from([Role.CLIENT, Role.SERVER]), st.integers(0, 7), st.integers(1, 6000)
)


class Driver:
    """Plays random but legal application moves on both ends of a pair.

    With early data (the default) an opener also sends DATA and FIN before the ACCEPT.
    """

    def __init__(self, *, early_data: bool = True) -> None:
        settings = SMALL if early_data else replace(SMALL, early_data=False)
        self.pair = SessionPair(client_settings=settings, server_settings=settings)
        self.ledger = Ledger()

    def side(self, role: Role) -> TunnelSession:
        return self.pair.client if role is Role.CLIENT else self.pair.server

    def drain(self) -> None:
        for session in (self.pair.client, self.pair.server):
            record(self.ledger, session, session.events())

    def step(self, op: str, role: Role, pick: int, size: int) -> None:
        session = self.side(role)
        streams = live_streams(session)
        stream_id = streams[pick % len(streams)] if streams else 0
        if op == "deliver":
            record(self.ledger, self.pair.peer_of(session), self.pair.deliver(session, pick + 1))
        elif op == "open" and session.can_open_stream:
            self.ledger.known[role].add(session.open_stream(f"target-{pick}"))
        elif op == "answer":
            self.answer(session, accept=size % 3 != 0)
        elif op == "go_away" and size < 200 and session.state is SessionState.OPEN:
            session.go_away(ErrorCode.NO_ERROR, "drain")
        elif stream_id:
            self.stream_step(op, session, stream_id, size)
        self.drain()

    def answer(self, session: TunnelSession, *, accept: bool) -> None:
        pending = self.ledger.pending[session.role]
        while pending:
            stream_id = pending.pop()
            if session.stream_state(stream_id) in UNANSWERED:
                if accept:
                    session.accept(stream_id)
                else:
                    session.reject(stream_id, ErrorCode.TARGET_NOT_ALLOWED, "no")

    def stream_step(self, op: str, session: TunnelSession, stream_id: int, size: int) -> None:
        state = session.stream_state(stream_id)
        can_send = state in {StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE} or (
            session.early_data and state is StreamState.OPENING_LOCAL
        )
        if op == "send" and can_send:
            key = (session.role, stream_id)
            start = self.ledger.sent.get(key, 0)
            taken = session.send_data(stream_id, pattern(stream_id, start, size))
            assert taken == min(size, taken + session.send_capacity(stream_id))
            self.ledger.sent[key] = start + taken
        elif op == "ack":
            session.acknowledge(stream_id, session.buffered_bytes(stream_id) // (size % 2 + 1))
        elif op == "fin" and can_send:
            session.end_stream(stream_id)
        elif op == "reset" and size % 4 == 0:
            session.reset_stream(stream_id, ErrorCode.CANCEL, "random reset")

    def wind_down(self) -> None:
        """Finish every stream the polite way: read everything, refuse pending, end."""
        for _ in range(10):
            self.deliver_all()
            for session in (self.pair.client, self.pair.server):
                self.answer(session, accept=False)
                for stream_id in live_streams(session):
                    session.acknowledge(stream_id, session.buffered_bytes(stream_id))
                    if session.stream_state(stream_id) in {
                        StreamState.OPEN,
                        StreamState.HALF_CLOSED_REMOTE,
                    }:
                        session.end_stream(stream_id)
                self.drain()
        self.deliver_all()

    def deliver_all(self) -> None:
        client_events, server_events = self.pair.exchange()
        record(self.ledger, self.pair.client, client_events)
        record(self.ledger, self.pair.server, server_events)

    def check_every_stream_closed_once(self) -> None:
        """Each stream an application learned of got exactly one StreamClosed there."""
        assert self.ledger.closed == self.ledger.known

    def check_conservation(self) -> None:
        for (sender, stream_id), count in self.ledger.sent.items():
            receiver = Role.SERVER if sender is Role.CLIENT else Role.CLIENT
            got = bytes(self.ledger.received.get((receiver, stream_id), b""))
            expected = pattern(stream_id, 0, count)
            if stream_id in self.ledger.reset:
                assert expected.startswith(got)  # a reset may cut the stream short, in order
            else:
                assert got == expected


@settings(deadline=None, max_examples=100)
@given(steps=st.lists(STEPS, max_size=60), early_data=st.booleans())
def test_random_interleavings_conserve_data_and_leak_nothing(
    steps: list[tuple[str, Role, int, int]], *, early_data: bool
) -> None:
    driver = Driver(early_data=early_data)
    for step in steps:
        driver.step(*step)
        for session in (driver.pair.client, driver.pair.server):
            assert session.total_buffered_bytes <= session.open_streams_count * WINDOW
    driver.wind_down()
    for session in (driver.pair.client, driver.pair.server):
        assert_no_leaks(session)
        assert session.state is not SessionState.TERMINATED or session.error is None
    driver.check_conservation()
    driver.check_every_stream_closed_once()


@settings(deadline=None, max_examples=50)
@given(steps=st.lists(STEPS, max_size=40))
def test_close_at_any_point_leaves_nothing_behind(steps: list[tuple[str, Role, int, int]]) -> None:
    driver = Driver()
    for step in steps:
        driver.step(*step)
    driver.pair.client.close(ErrorCode.NO_ERROR, "stop")
    driver.deliver_all()
    driver.pair.server.close()
    driver.drain()
    for session in (driver.pair.client, driver.pair.server):
        assert_no_leaks(session)
        assert session.state is SessionState.TERMINATED
    driver.check_conservation()
    driver.check_every_stream_closed_once()


# ---------------------------------------------------------------------------- stream floods

STREAM_ENDINGS = st.sampled_from(
    [
        "reset",
        "reject",
        "accept_reset",
        "violate",
        "early_reject",
        "early_reset",
        "early_violate",
        "data_reset",
        "complete",
        "early_complete",
    ]
)
"""How a peer-opened stream ends: the first seven are unproductive, the last three productive.
``early_*``: the client sent DATA (and FIN) with its OPEN, before any ACCEPT."""
PRODUCTIVE = frozenset({"data_reset", "complete", "early_complete"})
PACES = st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.5, 2.0])


def play_stream(pair: SessionPair, ending: str) -> list[Event]:
    """The client opens one stream and it ends as ``ending`` says; returns the server's events."""
    client, server = pair.client, pair.server
    sid = client.open_stream("kubelet")
    if ending.startswith("early_"):
        client.send_data(sid, b"GET / HTTP/1.1\r\n\r\n")
        client.end_stream(sid)
    events = pair.to_server()
    if server.state is SessionState.TERMINATED:
        return events
    if ending in {"reset", "early_reset"}:
        client.reset_stream(sid)
    elif ending in {"reject", "early_reject"}:
        server.reject(sid, ErrorCode.TARGET_UNREACHABLE, "connection refused")
    elif ending in {"violate", "early_violate"}:
        events += pair.inject(server, WindowUpdate(sid, 1))  # before ACCEPT: a stream error
    elif ending == "early_complete":
        server.accept(sid)
        server.end_stream(sid)
    else:
        server.accept(sid)
        pair.to_client()
        if ending == "accept_reset":
            client.reset_stream(sid)
        elif ending == "data_reset":
            client.send_data(sid, b"GET / HTTP/1.1\r\n\r\n")
            client.reset_stream(sid)
        else:
            client.end_stream(sid)
            server.end_stream(sid)
    return events + pair.exchange()[1]


@settings(deadline=None, max_examples=150)
@given(
    burst=st.integers(1, 6),
    rate=st.sampled_from([0.0, 0.5, 2.0]),
    plays=st.lists(st.tuples(STREAM_ENDINGS, PACES), max_size=40),
)
def test_the_stream_budget_never_cuts_a_burst_and_always_cuts_a_flood(
    burst: int, rate: float, plays: list[tuple[str, float]]
) -> None:
    """The budget's two promises, for any mix and pace of stream endings.

    A peer that wasted at most ``burst`` streams is never cut off; one that wasted more than
    the burst plus everything time and productive streams gave back is cut off at its next
    OPEN, with ENHANCE_YOUR_CALM, before the application hears of it, leaving nothing behind.
    """
    budget = TunnelSettings(unproductive_stream_burst=burst, unproductive_stream_rate=rate)
    pair = SessionPair(server_settings=budget)
    wasted = productive = 0
    for ending, pace in plays:
        pair.now += pace
        events = play_stream(pair, ending)
        calmed = pair.server.state is SessionState.TERMINATED
        if wasted <= burst:
            assert not calmed, "a burst within the budget was cut off"
        if wasted > burst + productive + rate * pair.now + 1e-9:
            assert calmed, "a flood beyond the budget was let through"
        if calmed:
            last = events[-1]
            assert isinstance(last, SessionTerminated)
            assert last.code is ErrorCode.ENHANCE_YOUR_CALM
            assert not any(isinstance(event, StreamOpened) for event in events)
            assert_no_leaks(pair.server)
            return
        if ending in PRODUCTIVE:
            productive += 1
        else:
            wasted += 1
    assert_no_leaks(pair.server)
