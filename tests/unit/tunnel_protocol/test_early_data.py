"""Early data: an opener's DATA and FIN sent with its OPEN, before the ACCEPT (a HELLO extension).

Synchronous scripts on a pair of sessions: what is negotiated with which peer (one that
predates the extension is played by ``early_data=False``, whose HELLO is byte for byte the old
one), what the receiver holds before it answers, what a refusal means for the opener, and that
early data buys no stream budget.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import pytest

from tests.unit.tunnel_protocol.helpers import SessionPair, assert_no_leaks
from tunnel_protocol import (
    EXTENSION_EARLY_DATA,
    Data,
    DataReceived,
    ErrorCode,
    Fin,
    FrameType,
    GoAway,
    Hello,
    LocalProtocolError,
    Open,
    Role,
    SessionState,
    SessionTerminated,
    StreamAccepted,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
    StreamState,
    TunnelSession,
    TunnelSettings,
    decode_frame,
    encode_frame,
    split_frames,
)

OLD = TunnelSettings(early_data=False)
"""A peer of the release before the extension: it offers nothing and ignores what we offer."""
KIB = 1024
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def frame_types(messages: Iterable[bytes]) -> list[FrameType]:
    return [decode_frame(piece)[1].frame_type for m in messages for piece in split_frames(m)]


# ---------------------------------------------------------------------------- negotiation


def test_hello_without_the_extension_is_the_old_hello_byte_for_byte() -> None:
    old = struct.pack("!BHIII", 1, 1, 256 * KIB, 512 * KIB, 1024)  # the version-1 layout
    [message] = TunnelSession(Role.CLIENT, now=0.0, settings=OLD).messages_to_send()
    assert message[12:] == old
    [message] = TunnelSession(Role.CLIENT, now=0.0).messages_to_send()
    assert message[12:] == old + struct.pack("!HH", EXTENSION_EARLY_DATA, 0)


def test_hello_extensions_round_trip_and_unknown_ones_are_kept_unused() -> None:
    hello = Hello((1,), 64 * KIB, KIB, 10, extensions=frozenset({EXTENSION_EARLY_DATA, 77}))
    assert decode_frame(encode_frame(hello, version=0))[1] == hello
    # A value on an extension this version does not know is skipped over.
    payload = Hello((1,), 64 * KIB, KIB, 10).payload() + struct.pack("!HH3s", 9, 3, b"abc")
    header = struct.pack("!BBHII", 0, FrameType.HELLO, 0, 0, len(payload))
    decoded = decode_frame(header + payload)[1]
    assert isinstance(decoded, Hello)
    assert decoded.extensions == frozenset({9})


@pytest.mark.parametrize(("client", "server"), [(None, None), (OLD, None), (None, OLD), (OLD, OLD)])
def test_early_data_is_used_only_when_both_ends_offer_it(
    client: TunnelSettings | None, server: TunnelSettings | None
) -> None:
    pair = SessionPair(client_settings=client, server_settings=server)
    both = client is None and server is None
    assert pair.client.early_data is pair.server.early_data is both
    sid = pair.client.open_stream("kubelet")
    if both:
        assert pair.client.send_data(sid, REQUEST) == len(REQUEST)
    else:  # as before the extension: nothing may go before the ACCEPT
        with pytest.raises(LocalProtocolError):
            pair.client.send_data(sid, REQUEST)
        assert pair.client.send_capacity(sid) == 0
        with pytest.raises(LocalProtocolError):
            pair.client.end_stream(sid)


def test_a_peer_without_the_extension_resets_early_data_as_before() -> None:
    """Data before ACCEPT to an old peer is the stream error it always was."""
    pair = SessionPair(server_settings=OLD)
    pair.inject(pair.server, Open(1, "kubelet"))
    events = pair.inject(pair.server, Data(1, REQUEST))
    assert isinstance(events[0], StreamReset)
    assert events[0].code is ErrorCode.PROTOCOL_ERROR


# ---------------------------------------------------------------------------- the exchange


def test_request_rides_with_the_open_and_answer_with_the_accept() -> None:
    pair = SessionPair()
    client, server = pair.client, pair.server
    sid = client.open_stream("kubelet")
    client.send_data(sid, REQUEST)
    client.end_stream(sid)
    assert client.stream_state(sid) is StreamState.OPENING_LOCAL_ENDED
    assert frame_types(pair.in_flight(client)) == [FrameType.OPEN, FrameType.DATA, FrameType.FIN]
    assert pair.to_server() == [
        StreamOpened(sid, "kubelet"),
        DataReceived(sid, REQUEST),
        StreamEnded(sid),
    ]
    assert server.stream_state(sid) is StreamState.OPENING_REMOTE_ENDED
    assert server.buffered_bytes(sid) == len(REQUEST)
    server.acknowledge(sid, len(REQUEST))  # read before answering: credit waits for ACCEPT
    assert not server.messages_to_send()
    level = server._budget.level(pair.now)
    server.accept(sid)
    server.send_data(sid, b"HTTP/1.1 200 OK\r\n\r\n")
    server.end_stream(sid)
    assert frame_types(pair.in_flight(server)) == [FrameType.ACCEPT, FrameType.DATA, FrameType.FIN]
    assert pair.to_client() == [
        StreamAccepted(sid),
        DataReceived(sid, b"HTTP/1.1 200 OK\r\n\r\n"),
        StreamEnded(sid),
        StreamClosed(sid),
    ]
    assert server._budget.level(pair.now) == level  # productive (the bucket was full)
    pair.exchange()
    assert_no_leaks(client)
    assert_no_leaks(server)


def test_early_data_is_bounded_by_the_initial_window_and_the_rest_follows_the_accept() -> None:
    small = TunnelSettings(initial_window=4 * KIB)
    pair = SessionPair(server_settings=small)
    client, server = pair.client, pair.server
    sid = client.open_stream("kubelet")
    body = bytes(range(256)) * 40  # 10 KiB
    assert client.send_data(sid, body) == 4 * KIB
    assert client.send_capacity(sid) == 0
    pair.to_server()
    assert server.buffered_bytes(sid) == 4 * KIB  # all the window, held unread
    server.accept(sid)
    server.acknowledge(sid, 4 * KIB)
    assert pair.to_client()[0] == StreamAccepted(sid)
    assert client.send_capacity(sid) == 4 * KIB
    assert client.send_data(sid, body[4 * KIB :]) == 4 * KIB


def test_credit_read_before_the_accept_goes_back_with_it() -> None:
    """An application that read early data before accepting gets its credit back at ACCEPT."""
    small = TunnelSettings(initial_window=4 * KIB)
    pair = SessionPair(server_settings=small)
    sid = pair.client.open_stream("kubelet")
    pair.client.send_data(sid, b"x" * 4 * KIB)
    pair.to_server()
    pair.server.acknowledge(sid, 4 * KIB)
    assert not pair.server.messages_to_send()
    pair.server.accept(sid)
    assert frame_types(pair.in_flight(pair.server)) == [FrameType.ACCEPT, FrameType.WINDOW_UPDATE]
    pair.to_client()
    assert pair.client.send_capacity(sid) == 4 * KIB


def test_early_data_beyond_the_window_is_a_flow_control_error() -> None:
    pair = SessionPair(server_settings=TunnelSettings(initial_window=4 * KIB))
    pair.inject(pair.server, Open(1, "kubelet"))
    pair.inject(pair.server, Data(1, b"x" * 4 * KIB))
    events = pair.inject(pair.server, Data(1, b"y"))
    assert isinstance(events[0], StreamReset)
    assert events[0].code is ErrorCode.FLOW_CONTROL_ERROR
    assert_no_leaks(pair.server)


@pytest.mark.parametrize("frame", [Data(1, b"more"), Fin(1)])
def test_data_or_fin_after_an_early_fin_is_stream_closed(frame: Data | Fin) -> None:
    pair = SessionPair()
    pair.inject(pair.server, Open(1, "kubelet"))
    pair.inject(pair.server, Fin(1))
    events = pair.inject(pair.server, frame)
    assert isinstance(events[0], StreamReset)
    assert events[0].code is ErrorCode.STREAM_CLOSED


def test_the_opener_cannot_send_after_its_early_fin() -> None:
    pair = SessionPair()
    sid = pair.client.open_stream("kubelet")
    pair.client.end_stream(sid)
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(sid, b"late")
    assert pair.client.send_capacity(sid) == 0


# ---------------------------------------------------------------------------- refusals


def test_a_refused_stream_drops_its_early_data_and_the_opener_learns_it() -> None:
    pair = SessionPair()
    sid = pair.client.open_stream("kubelet")
    pair.client.send_data(sid, REQUEST)
    pair.client.end_stream(sid)
    pair.to_server()
    pair.server.reject(sid, ErrorCode.TARGET_UNREACHABLE, "connection refused")
    assert pair.server.total_buffered_bytes == 0
    assert pair.to_client() == [
        StreamRejected(sid, ErrorCode.TARGET_UNREACHABLE, "connection refused"),
        StreamClosed(sid),
    ]
    assert_no_leaks(pair.client)
    assert_no_leaks(pair.server)


def test_early_data_crossing_a_refusal_is_dropped() -> None:
    """Over the stream cap: the OPEN is refused, its early DATA and FIN are late frames."""
    pair = SessionPair(server_settings=TunnelSettings(max_concurrent_streams=0))
    pair.inject(pair.server, Open(1, "kubelet"))
    level = pair.server._budget.level(pair.now)
    assert pair.inject(pair.server, Data(1, REQUEST)) == []
    assert pair.inject(pair.server, Fin(1)) == []
    assert pair.server._budget.level(pair.now) == level  # one unit for the OPEN, no more
    assert_no_leaks(pair.server)


def test_go_away_refuses_unprocessed_streams_that_sent_early_data() -> None:
    pair = SessionPair()
    sid = pair.client.open_stream("kubelet")
    pair.client.send_data(sid, REQUEST)
    pair.client.end_stream(sid)
    events = pair.inject(pair.client, GoAway(0, ErrorCode.NO_ERROR, "draining"))
    assert StreamRejected(sid, ErrorCode.REFUSED_STREAM, "the peer is going away") in events


@pytest.mark.parametrize("ending", ["reject", "reset_by_opener", "reset_by_receiver"])
def test_early_data_on_a_stream_that_never_was_accepted_costs_the_budget(ending: str) -> None:
    """Early data buys nothing from the stream budget.

    OPEN + DATA + FIN then a refusal or reset, over and over, is a flood like OPEN + RESET,
    cut off past the burst with ENHANCE_YOUR_CALM.
    """
    burst = 4
    pair = SessionPair(server_settings=TunnelSettings(unproductive_stream_burst=burst))
    client, server = pair.client, pair.server
    for _ in range(burst + 1):
        sid = client.open_stream("kubelet")
        client.send_data(sid, REQUEST)
        client.end_stream(sid)
        pair.to_server()
        if ending == "reject":
            server.reject(sid, ErrorCode.TARGET_UNREACHABLE, "no")
        elif ending == "reset_by_opener":
            client.reset_stream(sid)
        else:
            server.reset_stream(sid, ErrorCode.INTERNAL_ERROR, "handler failed")
        pair.exchange()
    client.open_stream("kubelet")
    events = pair.to_server()
    assert isinstance(events[-1], SessionTerminated)
    assert events[-1].code is ErrorCode.ENHANCE_YOUR_CALM
    assert not any(isinstance(event, StreamOpened) for event in events)
    assert server.state is SessionState.TERMINATED
    assert_no_leaks(server)


def test_accepted_early_data_gives_back_what_a_refusal_took() -> None:
    pair = SessionPair(server_settings=TunnelSettings(unproductive_stream_burst=4))
    sid = pair.client.open_stream("kubelet")
    pair.to_server()
    pair.server.reject(sid, ErrorCode.TARGET_UNREACHABLE, "no")
    pair.exchange()
    low = pair.server._budget.level(pair.now)
    sid = pair.client.open_stream("kubelet")
    pair.client.send_data(sid, REQUEST)
    pair.to_server()
    pair.server.accept(sid)
    pair.server.reset_stream(sid)  # accepted with data: productive even though reset
    pair.exchange()
    assert pair.server._budget.level(pair.now) == low + 1
