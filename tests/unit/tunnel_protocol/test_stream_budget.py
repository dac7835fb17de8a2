"""The rapid-reset defence: floods end the session, legitimate churn never does.

Scripts over an in-memory pair: the client plays the peer that opens streams (an agent, or a
hostile one), the server plays the end that pays for them.
"""

from __future__ import annotations

import pytest

from tests.unit.tunnel_protocol.helpers import SessionPair, assert_no_leaks
from tunnel_protocol import (
    Data,
    DataReceived,
    ErrorCode,
    Event,
    Frame,
    GoAway,
    Open,
    RemoteProtocolError,
    Reset,
    SessionState,
    SessionTerminated,
    StreamClosed,
    StreamOpened,
    StreamReset,
    TunnelSettings,
    WindowUpdate,
    decode_frame,
    encode_frame,
    split_frames,
)
from tunnel_protocol.stream_budget import StreamBudget

BURST = 8


def tight_pair(*, max_concurrent_streams: int = 1024) -> SessionPair:
    """A server that allows 8 unproductive streams at once and one more per second."""
    settings = TunnelSettings(
        unproductive_stream_burst=BURST,
        unproductive_stream_rate=1.0,
        max_concurrent_streams=max_concurrent_streams,
    )
    return SessionPair(server_settings=settings)


def open_and_reset(pair: SessionPair) -> list[Event]:
    """The rapid reset, with the real API: OPEN and RESET leave in the same flush."""
    stream_id = pair.client.open_stream("kubelet")
    pair.client.reset_stream(stream_id, ErrorCode.CANCEL, "")
    assert pair.client.events() == [StreamClosed(stream_id)]
    return pair.to_server()


def assert_calmed(pair: SessionPair, events: list[Event], *, last_stream_id: int) -> str:
    """The server ended the session with ENHANCE_YOUR_CALM and told the client why."""
    terminated = events[-1]
    assert isinstance(terminated, SessionTerminated)
    assert terminated.code is ErrorCode.ENHANCE_YOUR_CALM
    assert terminated.text.startswith("stream flood: the peer opened")
    assert pair.server.state is SessionState.TERMINATED
    assert isinstance(pair.server.error, RemoteProtocolError)
    assert pair.server.error.code is ErrorCode.ENHANCE_YOUR_CALM
    (message,) = pair.in_flight(pair.server)
    goaway = GoAway(last_stream_id, ErrorCode.ENHANCE_YOUR_CALM, terminated.text, final=True)
    assert decode_frame(message)[1] == goaway
    assert pair.to_client()[-1] == SessionTerminated(ErrorCode.ENHANCE_YOUR_CALM, terminated.text)
    assert_no_leaks(pair.server)
    assert_no_leaks(pair.client)
    return terminated.text


# ---------------------------------------------------------------------------- the bucket


def test_budget_charges_refunds_and_refills_with_time() -> None:
    budget = StreamBudget(burst=3, rate=2.0, now=10.0)
    for _ in range(4):
        budget.charge(10.0)
    assert budget.level(10.0) == -1
    assert budget.overdrawn(10.0)
    assert budget.level(10.25) == -0.5  # 2 units per second
    assert not budget.overdrawn(10.5)
    budget.refund(10.5)
    assert budget.level(10.5) == 1
    assert budget.level(100.0) == 3  # never above the burst, however long the pause
    budget.refund(100.0)
    assert budget.level(100.0) == 3
    assert budget.level(50.0) == 3  # a clock that steps back refills nothing
    assert budget.spent == 4


def test_settings_refuse_a_budget_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="burst"):
        TunnelSettings(unproductive_stream_burst=0)
    with pytest.raises(ValueError, match="rate"):
        TunnelSettings(unproductive_stream_rate=-1.0)
    with pytest.raises(ValueError, match="rate"):
        TunnelSettings(unproductive_stream_rate=float("nan"))
    assert TunnelSettings(unproductive_stream_rate=0.0).unproductive_stream_rate == 0.0


# ---------------------------------------------------------------------------- floods


def test_open_reset_flood_gets_a_go_away_with_the_reason() -> None:
    pair = tight_pair()
    for n in range(1, BURST + 2):  # the budget, and one more: the peer is now overdrawn
        events = open_and_reset(pair)
        sid = 2 * n - 1
        assert events == [
            StreamOpened(sid, "kubelet"),
            StreamReset(sid, ErrorCode.CANCEL, "", by_peer=True),
            StreamClosed(sid),
        ]
    events = open_and_reset(pair)  # the next OPEN is refused as a connection error
    text = assert_calmed(pair, events, last_stream_id=2 * (BURST + 1) - 1)
    assert events == [SessionTerminated(ErrorCode.ENHANCE_YOUR_CALM, text)]  # no StreamOpened
    assert text == (
        "stream flood: the peer opened 9 streams that were reset or refused before carrying"
        " data in 0.0 s (allowed: 8 at once, 1 per second, plus one per stream that carried"
        " data)"
    )


def test_a_pipelined_flood_with_the_defaults_stops_after_the_burst() -> None:
    """2048 OPEN+RESET pairs fill one message; the flood ends early in the second one."""
    pair = SessionPair()
    burst = TunnelSettings().unproductive_stream_burst

    def flood(first: int) -> bytes:
        frames: list[Frame] = []
        for sid in range(first, first + 4096, 2):
            frames += [Open(sid, "kubelet"), Reset(sid, ErrorCode.CANCEL, "")]
        return b"".join(encode_frame(frame, version=1) for frame in frames)

    message = flood(1)
    assert len(list(split_frames(message))) == 4096  # as many frames as a message may hold
    pair.server.receive_message(message, now=0.0)
    pair.server.receive_message(flood(4097), now=0.001)
    events = pair.server.events()
    opened = [e for e in events if isinstance(e, StreamOpened)]
    assert len(opened) == burst + 1  # what the application was ever asked to serve
    pair.server.messages_to_send()
    assert isinstance(events[-1], SessionTerminated)
    assert events[-1].code is ErrorCode.ENHANCE_YOUR_CALM
    assert f"opened {burst + 1} streams" in events[-1].text


def test_reopening_a_refused_target_over_and_over_is_a_flood() -> None:
    pair = tight_pair()
    for _ in range(BURST + 1):
        sid = pair.client.open_stream("10.0.0.1:22")
        assert pair.to_server() == [StreamOpened(sid, "10.0.0.1:22")]
        pair.server.reject(sid, ErrorCode.TARGET_NOT_ALLOWED, "not in the allow-list")
        assert pair.server.events() == [StreamClosed(sid)]
        pair.to_client()
    pair.client.open_stream("10.0.0.1:22")
    assert_calmed(pair, pair.to_server(), last_stream_id=2 * (BURST + 1) - 1)


def test_making_us_reset_streams_is_a_flood_too() -> None:
    """The MadeYouReset variant: a stream error of the peer's costs budget even after DATA."""
    pair = tight_pair()
    sid = 1
    for _ in range(BURST // 2):  # early DATA, then a WINDOW_UPDATE before ACCEPT: reset
        pair.inject(pair.server, Open(sid, "kubelet"))
        assert pair.inject(pair.server, Data(sid, b"x")) == [DataReceived(sid, b"x")]
        assert isinstance(pair.inject(pair.server, WindowUpdate(sid, 1))[0], StreamReset)
        sid += 2
    for _ in range(BURST // 2 + 1):  # accepted, some DATA, then a window overflow
        pair.inject(pair.server, Open(sid, "kubelet"))
        pair.server.accept(sid)
        assert pair.inject(pair.server, Data(sid, b"x")) == [DataReceived(sid, b"x")]
        assert isinstance(pair.inject(pair.server, WindowUpdate(sid, 2**31 - 1))[0], StreamReset)
        sid += 2
    pair.server.messages_to_send()
    events = pair.inject(pair.server, Open(sid, "kubelet"))
    assert isinstance(events[-1], SessionTerminated)
    assert events[-1].code is ErrorCode.ENHANCE_YOUR_CALM


def test_opens_beyond_the_stream_cap_spend_the_budget() -> None:
    pair = tight_pair(max_concurrent_streams=1)
    pair.open_accepted()  # holds the only slot
    for sid in range(3, 3 + 2 * (BURST + 1), 2):  # a peer ignoring the cap it was told
        assert pair.inject(pair.server, Open(sid, "kubelet")) == []
    events = pair.inject(pair.server, Open(3 + 2 * (BURST + 1), "kubelet"))
    assert isinstance(events[-1], SessionTerminated)
    assert events[-1].code is ErrorCode.ENHANCE_YOUR_CALM


def test_time_refills_the_budget() -> None:
    pair = tight_pair()
    for _ in range(BURST + 1):
        open_and_reset(pair)
    pair.now = 0.999  # one unit per second: not quite back to zero
    assert isinstance(open_and_reset(pair)[-1], SessionTerminated)

    pair = tight_pair()
    for _ in range(BURST + 1):
        open_and_reset(pair)
    pair.now = 1.0  # back to zero: not overdrawn, so the next stream may be opened
    assert isinstance(open_and_reset(pair)[0], StreamOpened)
    assert isinstance(open_and_reset(pair)[-1], SessionTerminated)  # overdrawn again


def test_streams_that_carried_data_give_budget_back() -> None:
    pair = tight_pair()
    for _ in range(BURST):
        open_and_reset(pair)
    sid = pair.open_accepted()
    pair.client.send_data(sid, b"GET /healthz")
    pair.client.reset_stream(sid)  # cancelled, but it had carried a request: productive
    pair.exchange()
    for _ in range(2):
        open_and_reset(pair)  # back to -1 only now
    assert isinstance(open_and_reset(pair)[-1], SessionTerminated)


def test_opens_refused_while_draining_cost_nothing() -> None:
    pair = tight_pair()
    pair.open_accepted()  # keeps the session draining instead of ending
    pair.server.go_away(ErrorCode.NO_ERROR, "replica shutting down")
    for sid in range(3, 3 + 4 * BURST, 2):  # OPENs that crossed the GO_AWAY
        assert pair.inject(pair.server, Open(sid, "kubelet")) == []
    assert pair.server.state is SessionState.DRAINING


def test_only_the_peers_streams_count() -> None:
    pair = tight_pair()
    for _ in range(4 * BURST):  # the server's own opens, refused by the client
        sid = pair.server.open_stream("agent-api")
        pair.to_client()
        pair.client.reject(sid, ErrorCode.TARGET_NOT_ALLOWED, "no")
        pair.exchange()
    for _ in range(BURST + 1):
        open_and_reset(pair)
    assert pair.server.state is SessionState.OPEN


# ---------------------------------------------------------------------------- legitimate churn


def test_cancelling_watches_over_and_over_never_trips() -> None:
    """A watch sends its request before it is cancelled, so cancels cost nothing."""
    pair = SessionPair()
    for _ in range(2100):  # more than the burst, all at one instant: no refill by time
        sid = pair.open_accepted("kube-apiserver")
        pair.client.send_data(sid, b"GET /api/v1/pods?watch=1 HTTP/1.1\r\n\r\n")
        pair.to_server()
        pair.server.send_data(sid, b"HTTP/1.1 200 OK\r\n")
        pair.to_client()
        pair.client.reset_stream(sid, ErrorCode.CANCEL, "^C")
        pair.exchange()
    assert pair.server.state is pair.client.state is SessionState.OPEN


def test_a_hundred_short_streams_a_second_with_many_failures_never_trip() -> None:
    """A busy HTTP client on a bad day: a quarter of its opens time out, a tenth are refused.

    That is 2100 unproductive streams in the minute, more than the burst: the session stays
    up because time and the completed streams give the budget back.
    """
    pair = SessionPair()
    for n in range(6000):
        pair.now = n / 100
        sid = pair.client.open_stream("kubelet")
        assert pair.to_server() == [StreamOpened(sid, "kubelet")]
        if n % 4 == 0:  # the client gave up while the target was still dialling
            pair.client.reset_stream(sid, ErrorCode.CANCEL, "open timed out")
            pair.exchange()
            continue
        if n % 10 == 1:
            pair.server.reject(sid, ErrorCode.TARGET_UNREACHABLE, "connection refused")
            pair.exchange()
            continue
        pair.server.accept(sid)
        pair.to_client()
        pair.client.send_data(sid, b"GET /metrics HTTP/1.1\r\n\r\n")
        pair.client.end_stream(sid)
        pair.to_server()
        pair.server.acknowledge(sid, 25)
        pair.server.send_data(sid, b"HTTP/1.1 200 OK\r\n\r\n")
        pair.server.end_stream(sid)
        pair.exchange()
    assert pair.server.state is pair.client.state is SessionState.OPEN
    assert_no_leaks(pair.server)


def test_every_concurrent_stream_failing_twice_at_once_never_trips() -> None:
    """A target goes down under full load: all 1024 streams fail, and all their retries."""
    pair = SessionPair()
    cap = pair.server.settings.max_concurrent_streams
    pending = [pair.client.open_stream("kubelet") for _ in range(cap)]
    pair.to_server()
    for sid in pending:  # the dials hang; the opener gives up on all of them
        pair.client.reset_stream(sid, ErrorCode.CANCEL, "open timed out")
    pair.to_server()
    retries = [pair.client.open_stream("kubelet") for _ in range(cap)]
    pair.to_server()
    for sid in retries:
        pair.server.reject(sid, ErrorCode.TARGET_UNREACHABLE, "connection refused")
    pair.exchange()
    assert pair.open_accepted() > 0  # the budget is exactly spent, not overdrawn
    assert pair.server.state is SessionState.OPEN


def test_a_dead_target_polled_at_ninety_per_second_never_trips() -> None:
    pair = SessionPair()
    for n in range(2700):  # 30 s; without the refill the burst would be gone after 23 s
        pair.now = n / 90
        sid = pair.client.open_stream("kubelet")
        pair.to_server()
        pair.server.reject(sid, ErrorCode.TARGET_UNREACHABLE, "connection refused")
        pair.exchange()
    assert pair.server.state is SessionState.OPEN
