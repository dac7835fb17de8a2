"""Session scenarios as synchronous scripts over an in-memory pair of sessions."""

from __future__ import annotations

import pytest

from tests.unit.tunnel_protocol.helpers import SessionPair, assert_no_leaks
from tunnel_protocol import (
    EXTENSION_EARLY_DATA,
    MAX_FRAME_PAYLOAD_HARD_CAP,
    Accept,
    Data,
    DataReceived,
    ErrorCode,
    Fin,
    GoAway,
    GoAwayReceived,
    HandshakeComplete,
    Hello,
    LocalProtocolError,
    Open,
    PeerSettings,
    Ping,
    Pong,
    PongReceived,
    Reject,
    Role,
    SendCapacityAvailable,
    SessionState,
    SessionTerminated,
    StreamClosed,
    StreamClosedError,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
    StreamState,
    TunnelSession,
    TunnelSettings,
    WindowUpdate,
    decode_frame,
    encode_data,
    encode_frame,
)

KIB = 1024


def frames_of(messages: list[bytes]) -> list[object]:
    return [decode_frame(m)[1] for m in messages]


# ---------------------------------------------------------------------------- handshake


def test_handshake_exchanges_settings_and_agrees_version_1() -> None:
    pair = SessionPair(handshake=False)
    client_events, server_events = pair.exchange()
    expected = PeerSettings(
        versions=(1,), max_frame_payload=256 * KIB, initial_window=512 * KIB,
        max_concurrent_streams=1024, extensions=frozenset({EXTENSION_EARLY_DATA}),
    )  # fmt: skip
    assert client_events == [HandshakeComplete(1, expected, early_data=True)]
    assert server_events == [HandshakeComplete(1, expected, early_data=True)]
    assert pair.client.state is pair.server.state is SessionState.OPEN
    assert pair.client.version == pair.server.version == 1


def test_highest_common_version_wins_and_is_stamped_on_frames() -> None:
    pair = SessionPair(
        client_settings=TunnelSettings(supported_versions=(1, 2, 3)),
        server_settings=TunnelSettings(supported_versions=(4, 3, 2)),
    )
    assert pair.client.version == pair.server.version == 3
    pair.client.open_stream("kubelet")
    assert pair.in_flight(pair.client)[0][0] == 3


def test_version_mismatch_terminates_both_ends_with_a_clear_error() -> None:
    pair = SessionPair(
        client_settings=TunnelSettings(supported_versions=(1,)),
        server_settings=TunnelSettings(supported_versions=(2, 3)),
        handshake=False,
    )
    client_events, server_events = pair.exchange()
    text = "no common protocol version: we speak [1], the peer speaks [2, 3]"
    assert client_events == [SessionTerminated(ErrorCode.VERSION_MISMATCH, text)]
    assert server_events == [
        SessionTerminated(
            ErrorCode.VERSION_MISMATCH,
            "no common protocol version: we speak [2, 3], the peer speaks [1]",
        )
    ]
    assert pair.client.state is pair.server.state is SessionState.TERMINATED
    assert pair.client.error is not None
    assert pair.client.error.code is ErrorCode.VERSION_MISMATCH


def test_stream_api_before_the_handshake_is_local_misuse() -> None:
    session = TunnelSession(Role.CLIENT, now=0.0)
    with pytest.raises(LocalProtocolError, match="handshake"):
        session.open_stream("kubelet")
    with pytest.raises(LocalProtocolError, match="handshake"):
        session.ping(1.0)


def test_frames_before_hello_and_a_second_hello_are_connection_errors() -> None:
    session = TunnelSession(Role.SERVER, now=0.0)
    session.receive_message(encode_frame(Ping(b"12345678"), version=1))
    assert session.events() == [
        SessionTerminated(ErrorCode.PROTOCOL_ERROR, "PING before HELLO"),
    ]
    pair = SessionPair()
    hello = Hello((1,), 65536, 1024, 10)
    events = pair.inject(pair.server, hello, version=0)
    assert events == [SessionTerminated(ErrorCode.PROTOCOL_ERROR, "second HELLO")]


def test_handshake_timeout() -> None:
    session = TunnelSession(Role.CLIENT, now=100.0)
    assert session.next_deadline() == 110.0
    session.handle_timeout(109.9)
    assert session.events() == []
    session.handle_timeout(110.0)
    assert session.events() == [
        SessionTerminated(ErrorCode.HANDSHAKE_TIMEOUT, "no HELLO from the peer in time"),
    ]
    assert session.next_deadline() is None


# ---------------------------------------------------------------------------- streams


def test_open_accept_and_ids_by_role() -> None:
    pair = SessionPair()
    assert [pair.open_accepted() for _ in range(3)] == [1, 3, 5]
    assert [pair.open_accepted(opener=pair.server) for _ in range(2)] == [2, 4]
    assert pair.client.open_streams_count == pair.server.open_streams_count == 5
    assert pair.client.stream_state(1) is StreamState.OPEN
    assert pair.client.stream_state(7) is StreamState.IDLE


def test_reject_reports_code_and_text_and_frees_the_stream() -> None:
    pair = SessionPair()
    stream_id = pair.client.open_stream("10.0.0.1:22")
    assert pair.to_server() == [StreamOpened(stream_id, "10.0.0.1:22")]
    pair.server.reject(stream_id, ErrorCode.TARGET_NOT_ALLOWED, "not in the allow-list")
    assert pair.server.events() == [StreamClosed(stream_id)]
    assert pair.to_client() == [
        StreamRejected(stream_id, ErrorCode.TARGET_NOT_ALLOWED, "not in the allow-list"),
        StreamClosed(stream_id),
    ]
    assert pair.client.stream_state(stream_id) is StreamState.CLOSED
    assert_no_leaks(pair.client)
    assert_no_leaks(pair.server)


def test_invalid_target_is_refused_before_anything_is_sent() -> None:
    pair = SessionPair()
    with pytest.raises(LocalProtocolError, match="printable ASCII"):
        pair.client.open_stream("bad target")
    assert pair.client.messages_to_send() == []
    assert pair.client.open_stream("ok") == 1  # the failed call did not use up an id


def test_data_both_ways_in_order() -> None:
    pair = SessionPair()
    sid = pair.open_accepted()
    assert pair.client.send_data(sid, b"GET / HTTP/1.1\r\n\r\n") == 18
    assert pair.to_server() == [DataReceived(sid, b"GET / HTTP/1.1\r\n\r\n")]
    assert pair.server.buffered_bytes(sid) == 18
    pair.server.acknowledge(sid, 18)
    assert pair.server.buffered_bytes(sid) == 0
    pair.server.send_data(sid, b"HTTP/1.1 200 OK\r\n")
    pair.server.send_data(sid, bytearray(b"\r\nbody"))
    assert pair.to_client() == [
        DataReceived(sid, b"HTTP/1.1 200 OK\r\n"),
        DataReceived(sid, b"\r\nbody"),
    ]


def test_large_writes_are_split_into_max_payload_frames() -> None:
    # The sender cuts by the frame size the *receiver* advertised, not by its own.
    pair = SessionPair(server_settings=TunnelSettings(max_frame_payload=64 * KIB))
    sid = pair.open_accepted()
    payload = bytes(range(256)) * (200 * KIB // 256)
    assert pair.client.send_data(sid, memoryview(payload)) == 200 * KIB
    sizes = [len(m) - 12 for m in pair.in_flight(pair.client)]
    assert sizes == [64 * KIB, 64 * KIB, 64 * KIB, 8 * KIB]
    received = [e.data for e in pair.to_server() if isinstance(e, DataReceived)]
    assert b"".join(received) == payload
    assert pair.client.send_data(sid, b"") == 0


def test_data_frames_are_byte_identical_to_encode_frame() -> None:
    """The single-copy DATA encoder (``encode_data``) is the general encoder's twin."""
    for size in (1, 100, 64 * KIB, MAX_FRAME_PAYLOAD_HARD_CAP):
        payload = bytes([size % 251]) * size
        for view in (payload, memoryview(payload)):
            fast = encode_data(7, view, version=1)
            assert fast == encode_frame(Data(7, payload), version=1)
    for bad in (b"", bytes(MAX_FRAME_PAYLOAD_HARD_CAP + 1)):
        with pytest.raises(LocalProtocolError):
            encode_data(7, bad, version=1)


def test_client_half_close_then_server_keeps_sending() -> None:
    pair = SessionPair()
    sid = pair.open_accepted()
    pair.client.end_stream(sid)
    assert pair.to_server() == [StreamEnded(sid)]
    assert pair.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    assert pair.server.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(sid, b"late")
    pair.server.send_data(sid, b"response after the request ended")
    assert pair.to_client() == [DataReceived(sid, b"response after the request ended")]
    pair.server.end_stream(sid)
    assert pair.server.events() == [StreamClosed(sid)]
    assert pair.to_client() == [StreamEnded(sid), StreamClosed(sid)]
    assert_no_leaks(pair.client)
    assert_no_leaks(pair.server)


def test_server_half_close_then_client_keeps_sending() -> None:
    pair = SessionPair()
    sid = pair.open_accepted(opener=pair.server)
    pair.client.end_stream(sid)  # the acceptor ends first this time
    assert pair.to_server() == [StreamEnded(sid)]
    pair.server.send_data(sid, b"more")
    pair.server.end_stream(sid)
    assert pair.to_client() == [DataReceived(sid, b"more"), StreamEnded(sid), StreamClosed(sid)]
    assert pair.server.events() == [StreamClosed(sid)]


def test_reset_reaches_the_peer_and_crossing_frames_are_dropped() -> None:
    pair = SessionPair()
    sid = pair.open_accepted()
    pair.server.send_data(sid, b"in flight")  # crosses the RESET below
    pair.client.reset_stream(sid, ErrorCode.CANCEL, "kubectl went away")
    assert pair.client.events() == [StreamClosed(sid)]
    assert pair.to_client() == []  # late DATA for a forgotten stream: dropped, no error
    assert pair.to_server() == [
        StreamReset(sid, ErrorCode.CANCEL, "kubectl went away", by_peer=True),
        StreamClosed(sid),
    ]
    assert pair.client.state is pair.server.state is SessionState.OPEN
    pair.client.reset_stream(sid)  # idempotent
    pair.client.acknowledge(sid, 5)  # a racing acknowledgement is harmless
    with pytest.raises(StreamClosedError):
        pair.client.send_data(sid, b"x")
    assert_no_leaks(pair.client)
    assert_no_leaks(pair.server)


def test_api_on_unknown_streams() -> None:
    pair = SessionPair()
    with pytest.raises(LocalProtocolError, match="never opened"):
        pair.client.send_data(9, b"x")
    with pytest.raises(LocalProtocolError, match="never opened"):
        pair.client.end_stream(0)
    with pytest.raises(LocalProtocolError):
        pair.client.accept(1)
    pair.client.reject(1, ErrorCode.CANCEL)  # no-op: nothing to reject
    assert pair.client.send_capacity(1) == 0


def test_cannot_accept_own_stream_or_send_before_accept() -> None:
    """Without early data (a peer that predates it): no DATA before the ACCEPT."""
    pair = SessionPair(server_settings=TunnelSettings(early_data=False))
    sid = pair.client.open_stream("kubelet")
    with pytest.raises(LocalProtocolError):
        pair.client.accept(sid)
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(sid, b"early")
    assert pair.client.send_capacity(sid) == 0


# ---------------------------------------------------------------------------- flow control


def small_window_pair(window: int = 4 * KIB) -> SessionPair:
    return SessionPair(
        client_settings=TunnelSettings(initial_window=window),
        server_settings=TunnelSettings(initial_window=window),
    )


def test_sender_blocks_at_the_window_and_resumes_on_window_update() -> None:
    pair = small_window_pair()
    sid = pair.open_accepted()
    assert pair.client.send_capacity(sid) == 4 * KIB
    assert pair.client.send_data(sid, bytes(10 * KIB)) == 4 * KIB
    assert pair.client.send_capacity(sid) == 0
    assert pair.client.send_data(sid, b"more") == 0
    assert pair.to_server() == [DataReceived(sid, bytes(4 * KIB))]
    assert pair.server.buffered_bytes(sid) == 4 * KIB
    pair.server.acknowledge(sid, 4 * KIB)
    assert frames_of(list(pair.in_flight(pair.server))) == [WindowUpdate(sid, 4 * KIB)]
    assert pair.to_client() == [SendCapacityAvailable(sid)]
    assert pair.client.send_capacity(sid) == 4 * KIB


def test_window_updates_are_batched_at_half_the_window() -> None:
    pair = small_window_pair()
    sid = pair.open_accepted()
    pair.client.send_data(sid, bytes(KIB))
    pair.to_server()
    pair.server.acknowledge(sid, KIB)  # a quarter: keep batching
    assert pair.server.messages_to_send() == []
    pair.client.send_data(sid, bytes(KIB))
    pair.to_server()
    pair.server.acknowledge(sid, KIB)  # half the window consumed: hand it back
    assert frames_of(pair.server.messages_to_send()) == [WindowUpdate(sid, 2 * KIB)]


def test_a_blocked_reader_does_not_stall_other_streams() -> None:
    pair = small_window_pair()
    slow, fast = pair.open_accepted("slow"), pair.open_accepted("fast")
    assert pair.client.send_data(slow, bytes(8 * KIB)) == 4 * KIB  # never acknowledged
    pair.to_server()
    for _ in range(10):
        assert pair.client.send_data(fast, bytes(4 * KIB)) == 4 * KIB
        assert pair.to_server() == [DataReceived(fast, bytes(4 * KIB))]
        pair.server.acknowledge(fast, 4 * KIB)
        assert pair.to_client() == [SendCapacityAvailable(fast)]
    assert pair.client.send_capacity(slow) == 0
    assert pair.server.buffered_bytes(slow) == 4 * KIB


def test_a_peer_sending_beyond_its_credit_gets_the_stream_reset() -> None:
    pair = small_window_pair()
    sid, other = pair.open_accepted(), pair.open_accepted()
    pair.inject(pair.server, Data(sid, bytes(4 * KIB)))
    events = pair.inject(pair.server, Data(sid, b"!"))  # one byte beyond the credit
    assert events == [
        StreamReset(
            sid, ErrorCode.FLOW_CONTROL_ERROR,
            "peer sent 1 bytes with only 0 bytes of credit", by_peer=False,
        ),
        StreamClosed(sid),
    ]  # fmt: skip
    assert pair.server.buffered_bytes(sid) == 0
    assert pair.server.state is SessionState.OPEN  # only that stream paid
    assert pair.server.stream_state(other) is StreamState.OPEN
    assert pair.to_client() == [
        StreamReset(
            sid, ErrorCode.FLOW_CONTROL_ERROR,
            "peer sent 1 bytes with only 0 bytes of credit", by_peer=True,
        ),
        StreamClosed(sid),
    ]  # fmt: skip


def test_window_update_overflow_is_a_flow_control_error() -> None:
    pair = SessionPair()
    sid = pair.open_accepted()
    events = pair.inject(pair.client, WindowUpdate(sid, 2**31 - 1))
    assert isinstance(events[0], StreamReset)
    assert events[0].code is ErrorCode.FLOW_CONTROL_ERROR


def test_a_data_frame_larger_than_advertised_is_a_connection_error() -> None:
    pair = SessionPair(server_settings=TunnelSettings(max_frame_payload=1024))
    sid = pair.open_accepted()
    events = pair.inject(pair.server, Data(sid, bytes(1025)))
    assert events[-1] == SessionTerminated(ErrorCode.FRAME_SIZE_ERROR, "DATA payload too large")


def test_data_after_the_peers_fin_is_stream_closed() -> None:
    pair = SessionPair()
    sid = pair.open_accepted()
    pair.inject(pair.server, Fin(sid))
    events = pair.inject(pair.server, Data(sid, b"x"))
    assert isinstance(events[0], StreamReset)
    assert events[0].code is ErrorCode.STREAM_CLOSED


def test_ack_more_than_received_is_misuse() -> None:
    pair = SessionPair()
    sid = pair.open_accepted()
    with pytest.raises(LocalProtocolError, match="unacknowledged"):
        pair.server.acknowledge(sid, 1)


# ---------------------------------------------------------------------------- limits


def test_stream_cap_refuses_extra_opens_without_crashing() -> None:
    pair = SessionPair(server_settings=TunnelSettings(max_concurrent_streams=2))
    first, second = pair.open_accepted(), pair.open_accepted()
    assert not pair.client.can_open_stream
    with pytest.raises(LocalProtocolError, match="stream cap") as caught:
        pair.client.open_stream("third")
    assert caught.value.code is ErrorCode.REFUSED_STREAM
    assert pair.inject(pair.server, Open(5, "sneaky")) == []  # a peer ignoring the cap
    assert frames_of(pair.server.messages_to_send()) == [
        Reject(5, ErrorCode.REFUSED_STREAM, "too many concurrent streams")
    ]
    assert pair.server.open_streams_count == 2
    pair.client.reset_stream(first)
    pair.to_server()
    assert pair.client.can_open_stream
    del second


def test_open_parity_and_id_rules_are_connection_errors() -> None:
    pair = SessionPair()
    events = pair.inject(pair.client, Open(3, "odd-ids-are-the-clients"))
    assert events[-1] == SessionTerminated(
        ErrorCode.PROTOCOL_ERROR, "OPEN of stream 3: wrong parity for the peer"
    )
    final = frames_of(pair.client.messages_to_send())
    text = "OPEN of stream 3: wrong parity for the peer"
    assert final == [GoAway(0, ErrorCode.PROTOCOL_ERROR, text, final=True)]

    pair = SessionPair()
    pair.inject(pair.server, Open(5, "a"))
    events = pair.inject(pair.server, Open(3, "b"))
    assert events[-1] == SessionTerminated(
        ErrorCode.PROTOCOL_ERROR, "OPEN of stream 3: ids must increase"
    )


def test_frames_on_never_opened_streams_are_connection_errors() -> None:
    pair = SessionPair()
    events = pair.inject(pair.server, Data(7, b"x"))
    assert events == [
        SessionTerminated(ErrorCode.PROTOCOL_ERROR, "DATA on stream 7, never opened"),
    ]
    pair = SessionPair()
    events = pair.inject(pair.server, Accept(2))  # a server id the server never used
    assert isinstance(events[-1], SessionTerminated)


def test_wrong_header_version_is_a_connection_error() -> None:
    pair = SessionPair()
    sid = pair.open_accepted()
    events = pair.inject(pair.server, Data(sid, b"x"), version=2)
    assert isinstance(events[-1], SessionTerminated)
    assert events[-1].code is ErrorCode.PROTOCOL_ERROR


def test_a_connection_error_tells_the_peer_and_ends_every_stream_there() -> None:
    pair = SessionPair()
    sid = pair.open_accepted()
    pair.inject(pair.server, Data(99, b"x"))
    client_events = pair.to_client()
    text = "DATA on stream 99, never opened"
    assert client_events == [
        StreamReset(sid, ErrorCode.PROTOCOL_ERROR, text, by_peer=True),
        StreamClosed(sid),
        SessionTerminated(ErrorCode.PROTOCOL_ERROR, text),
    ]
    assert_no_leaks(pair.client)
    assert_no_leaks(pair.server)


def test_receive_after_termination_is_ignored() -> None:
    pair = SessionPair()
    pair.client.close()
    pair.client.events()
    pair.client.messages_to_send()
    pair.client.receive_message(b"garbage")
    assert pair.client.events() == []
    assert pair.client.messages_to_send() == []
    with pytest.raises(LocalProtocolError, match="terminated"):
        pair.client.open_stream("x")


def test_a_million_streams_do_not_grow_the_session() -> None:
    # Fewer than a million here for speed; what matters is that nothing per stream remains.
    pair = SessionPair()
    for _ in range(2000):
        sid = pair.open_accepted()
        pair.client.send_data(sid, b"ping")
        pair.client.end_stream(sid)
        pair.to_server()
        pair.server.acknowledge(sid, 4)
        pair.server.end_stream(sid)
        pair.exchange()
    assert_no_leaks(pair.client)
    assert_no_leaks(pair.server)
    assert pair.client.open_stream("next") == 4001


# ---------------------------------------------------------------------------- go-away, close


def test_go_away_drains_then_both_ends_terminate() -> None:
    pair = SessionPair()
    sid = pair.open_accepted()
    pair.server.go_away(ErrorCode.NO_ERROR, "replica shutting down")
    assert pair.server.state is SessionState.DRAINING
    assert pair.to_client() == [GoAwayReceived(sid, ErrorCode.NO_ERROR, "replica shutting down")]
    with pytest.raises(LocalProtocolError, match="draining"):
        pair.client.open_stream("new")
    with pytest.raises(LocalProtocolError, match="draining"):
        pair.server.open_stream("new")
    pair.client.send_data(sid, b"the live stream finishes")
    pair.client.end_stream(sid)
    assert pair.to_server() == [DataReceived(sid, b"the live stream finishes"), StreamEnded(sid)]
    pair.server.end_stream(sid)
    assert pair.server.events() == [
        StreamClosed(sid),
        SessionTerminated(ErrorCode.NO_ERROR, "drained"),
    ]
    assert pair.to_client() == [
        StreamEnded(sid),
        StreamClosed(sid),
        SessionTerminated(ErrorCode.NO_ERROR, "drained"),
    ]


def test_go_away_refuses_an_open_that_crossed_it() -> None:
    pair = SessionPair()
    keep = pair.open_accepted(opener=pair.server)
    crossing = pair.client.open_stream("crossing")  # not yet delivered
    pair.server.go_away()
    assert pair.to_client() == [
        GoAwayReceived(0, ErrorCode.NO_ERROR, ""),
        StreamRejected(crossing, ErrorCode.REFUSED_STREAM, "the peer is going away"),
        StreamClosed(crossing),
    ]
    assert pair.to_server() == []  # the server refuses the OPEN; the client already forgot it
    assert frames_of(list(pair.in_flight(pair.server))) == [
        Reject(crossing, ErrorCode.REFUSED_STREAM, "session is draining")
    ]
    assert pair.to_client() == []
    assert pair.server.open_streams_count == pair.client.open_streams_count == 1
    pair.server.reset_stream(keep)
    assert pair.to_client()[-1] == SessionTerminated(ErrorCode.NO_ERROR, "drained")


def test_close_ends_every_stream_on_both_ends() -> None:
    pair = SessionPair()
    one, two = pair.open_accepted(), pair.open_accepted(opener=pair.server)
    pair.client.close(ErrorCode.NO_ERROR, "agent stopping")
    assert pair.client.events() == [
        StreamReset(one, ErrorCode.CANCEL, "agent stopping", by_peer=False),
        StreamClosed(one),
        StreamReset(two, ErrorCode.CANCEL, "agent stopping", by_peer=False),
        StreamClosed(two),
        SessionTerminated(ErrorCode.NO_ERROR, "agent stopping"),
    ]
    assert pair.to_server() == [
        StreamReset(one, ErrorCode.CANCEL, "agent stopping", by_peer=True),
        StreamClosed(one),
        StreamReset(two, ErrorCode.CANCEL, "agent stopping", by_peer=True),
        StreamClosed(two),
        SessionTerminated(ErrorCode.NO_ERROR, "agent stopping"),
    ]
    pair.client.close()  # idempotent
    assert pair.client.events() == []
    assert_no_leaks(pair.client)
    assert_no_leaks(pair.server)


# ---------------------------------------------------------------------------- keepalive


def test_keepalive_pings_measure_rtt() -> None:
    pair = SessionPair(now=1000.0)
    assert pair.client.next_deadline() == 1015.0
    pair.client.handle_timeout(1015.0)
    opaque = frames_of(list(pair.in_flight(pair.client)))[0]
    assert isinstance(opaque, Ping)
    pair.now = 1015.5
    pair.to_server()
    pair.now = 1016.0
    assert pair.to_client() == [PongReceived(1.0, opaque.opaque)]
    assert pair.client.next_deadline() == 1030.0


def test_application_ping() -> None:
    pair = SessionPair()
    opaque = pair.server.ping(5.0)
    pair.now = 5.25
    pair.to_client()
    assert pair.to_server() == [PongReceived(0.25, opaque)]
    assert pair.to_server() == []


def test_silent_peer_is_declared_dead_after_the_timeout() -> None:
    pair = SessionPair()
    sid = pair.open_accepted()
    for now in (15.0, 30.0):
        assert pair.client.next_deadline() == now
        pair.client.handle_timeout(now)  # the pings are never delivered
    assert pair.client.next_deadline() == 45.0
    pair.client.handle_timeout(44.9)
    assert pair.client.events() == []
    pair.client.handle_timeout(45.0)
    assert pair.client.events() == [
        StreamReset(sid, ErrorCode.KEEPALIVE_TIMEOUT, "peer silent for 45.0 s", by_peer=False),
        StreamClosed(sid),
        SessionTerminated(ErrorCode.KEEPALIVE_TIMEOUT, "peer silent for 45.0 s"),
    ]
    assert pair.client.next_deadline() is None


def test_any_frame_keeps_the_session_alive_even_without_now() -> None:
    session = TunnelSession(Role.CLIENT, now=0.0)
    peer = TunnelSession(Role.SERVER, now=0.0)
    for message in peer.messages_to_send():
        session.receive_message(message)  # no ``now``: stamped at the next timer call
    session.handle_timeout(15.0)
    session.receive_message(encode_frame(Ping(b"\0" * 8), version=1))
    session.handle_timeout(40.0)  # the PING arrived between 15 and 40: alive at 40
    deadline = session.next_deadline()
    last = 0.0
    while deadline is not None:  # the glue's timer loop, with nothing more arriving
        session.handle_timeout(deadline)
        last, deadline = deadline, session.next_deadline()
    assert last == 40.0 + 45.0
    assert session.state is SessionState.TERMINATED


def test_outstanding_pings_are_bounded_and_unknown_pongs_ignored() -> None:
    pair = SessionPair()
    for i in range(20):
        pair.client.ping(float(i))
    assert len(pair.client._pings) == 8
    assert pair.inject(pair.client, Pong(b"\xff" * 8)) == []


def test_server_skips_its_ping_while_the_agent_keeps_pinging() -> None:
    pair = SessionPair(now=0.0)
    server_pings = 0
    for now in (15.0, 30.0, 45.0, 60.0):
        pair.now = now
        pair.client.handle_timeout(now)  # the agent pings on schedule
        pair.to_server()
        pair.server.handle_timeout(now + 0.5)  # the server's own ping is due
        server_pings += sum(
            isinstance(f, Ping) for f in frames_of(list(pair.in_flight(pair.server)))
        )
        pair.to_client()
    assert server_pings == 0, "the server answered pongs but sent no pings of its own"
    assert pair.server.state is SessionState.OPEN


def test_server_pings_a_quiet_agent() -> None:
    pair = SessionPair(now=0.0)
    pair.server.handle_timeout(15.0)
    assert any(isinstance(f, Ping) for f in frames_of(list(pair.in_flight(pair.server))))


def test_has_messages_to_send_says_when_the_writer_has_work() -> None:
    """The glue wakes its writer only on this flag: a read that returns no credit yet is free."""
    pair = SessionPair()
    sid = pair.open_accepted()
    assert not pair.client.has_messages_to_send
    assert not pair.server.has_messages_to_send
    pair.client.send_data(sid, b"x" * 1000)
    assert pair.client.has_messages_to_send
    pair.to_server()
    assert not pair.client.has_messages_to_send
    pair.server.acknowledge(sid, 1000)  # far below half the window: batched, nothing to send
    assert not pair.server.has_messages_to_send
    pair.server.reset_stream(sid)
    assert pair.server.has_messages_to_send
    assert pair.server.messages_to_send()
    assert not pair.server.has_messages_to_send
