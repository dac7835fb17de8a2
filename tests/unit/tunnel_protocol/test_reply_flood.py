"""The ping-flood defence: a peer that asks for answers faster than it reads them is cut off.

Scripts over an in-memory pair. "The glue takes the messages" is ``messages_to_send()``:
the asyncio writer calls it whenever it is free, so a peer that reads our answers keeps the
count of queued replies near zero, while one that does not read leaves the writer stuck
and the answers piling up in the session.
"""

from __future__ import annotations

from tests.unit.tunnel_protocol.helpers import SessionPair, assert_no_leaks
from tunnel_protocol import (
    ErrorCode,
    GoAway,
    Open,
    Ping,
    Pong,
    Reject,
    SessionState,
    SessionTerminated,
    decode_frame,
    encode_frame,
    split_frames,
)
from tunnel_protocol.session import MAX_QUEUED_REPLIES

PINGS_PER_MESSAGE = 2000


def ping_messages(count: int) -> list[bytes]:
    """``count`` PINGs packed into WebSocket messages the way a flooding peer would send them."""
    frames = [encode_frame(Ping(n.to_bytes(8, "big")), version=1) for n in range(count)]
    return [
        b"".join(frames[start : start + PINGS_PER_MESSAGE])
        for start in range(0, count, PINGS_PER_MESSAGE)
    ]


def test_a_peer_that_pings_without_reading_is_told_to_calm_down() -> None:
    pair = SessionPair()
    for message in ping_messages(MAX_QUEUED_REPLIES + 1):
        pair.server.receive_message(message, now=0.0)
    events = pair.server.events()
    assert len(events) == 1
    terminated = events[0]
    assert isinstance(terminated, SessionTerminated)
    assert terminated.code is ErrorCode.ENHANCE_YOUR_CALM
    assert terminated.text == (
        f"reply flood: the peer asked for more than {MAX_QUEUED_REPLIES} answers (PONG)"
        " without reading the ones we queued"
    )
    assert pair.server.state is SessionState.TERMINATED
    frames = [decode_frame(f)[1] for m in pair.server.messages_to_send() for f in split_frames(m)]
    assert frames[:-1] == [Pong(n.to_bytes(8, "big")) for n in range(MAX_QUEUED_REPLIES)]
    assert frames[-1] == GoAway(0, ErrorCode.ENHANCE_YOUR_CALM, terminated.text, final=True)
    assert_no_leaks(pair.server)


def test_a_peer_that_reads_its_answers_may_ping_as_much_as_it_likes() -> None:
    pair = SessionPair()
    answered = 0
    for message in ping_messages(3 * MAX_QUEUED_REPLIES):
        pair.server.receive_message(message, now=0.0)
        answered += sum(len(list(split_frames(m))) for m in pair.server.messages_to_send())
    assert pair.server.events() == []
    assert pair.server.state is SessionState.OPEN
    assert answered == 3 * MAX_QUEUED_REPLIES


def test_the_cap_counts_answers_queued_since_the_glue_last_took_them() -> None:
    pair = SessionPair()
    (almost,) = ping_messages(PINGS_PER_MESSAGE)
    for _ in range(MAX_QUEUED_REPLIES // PINGS_PER_MESSAGE):
        pair.server.receive_message(almost, now=0.0)
    assert pair.server.state is SessionState.OPEN  # exactly at the cap: not over it
    pair.server.messages_to_send()
    pair.server.receive_message(almost, now=0.0)  # taken in between: counting starts again
    assert pair.server.state is SessionState.OPEN
    assert pair.server.events() == []


def test_opens_refused_while_draining_count_as_answers_too() -> None:
    pair = SessionPair()
    pair.open_accepted()  # a live stream keeps the session draining instead of ending it
    pair.server.go_away(ErrorCode.NO_ERROR, "restarting")
    pair.server.messages_to_send()
    opens = [encode_frame(Open(sid, "kubelet"), version=1) for sid in range(3, 2 * 12_000, 2)]
    for start in range(0, len(opens), PINGS_PER_MESSAGE):
        pair.server.receive_message(b"".join(opens[start : start + PINGS_PER_MESSAGE]), now=0.0)
        if pair.server.state is SessionState.TERMINATED:
            break
    events = pair.server.events()
    assert isinstance(events[-1], SessionTerminated)
    assert events[-1].code is ErrorCode.ENHANCE_YOUR_CALM
    assert "answers (REJECT)" in events[-1].text
    frames = [decode_frame(f)[1] for m in pair.server.messages_to_send() for f in split_frames(m)]
    assert frames[0] == Reject(3, ErrorCode.REFUSED_STREAM, "session is draining")
    assert len(frames) == MAX_QUEUED_REPLIES + 1  # the answers, then the final GO_AWAY
    assert_no_leaks(pair.server)
