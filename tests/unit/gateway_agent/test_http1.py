"""The agent's HTTP/1.1 framing: where requests and answers end, and when a connection is kept."""

from __future__ import annotations

import contextlib

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cluster.gateway.http1 import (
    MAX_HEAD,
    BodyFramer,
    Framing,
    FramingError,
    parse_request,
    parse_response,
    split_head,
)


def _head(data: bytes) -> bytes:
    size = split_head(data)
    assert size is not None
    return data[:size]


def test_the_gateways_request_loses_connection_close_and_nothing_else() -> None:
    raw = b"GET /a?b=1 HTTP/1.1\r\nHost: web\r\nX-Id: 7\r\nConnection: close\r\n\r\n"
    head = parse_request(_head(raw))
    assert head.for_backend == b"GET /a?b=1 HTTP/1.1\r\nHost: web\r\nX-Id: 7\r\n\r\n"
    assert head.framing is Framing.NONE
    assert head.replayable
    assert not head.upgrade


def test_request_bodies_by_length_and_chunked() -> None:
    post = parse_request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
    assert (post.framing, post.length, post.replayable) == (Framing.LENGTH, 12, False)
    put = parse_request(b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert (put.framing, put.replayable) == (Framing.CHUNKED, False)
    with pytest.raises(FramingError):
        parse_request(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n")
    with pytest.raises(FramingError):
        parse_request(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")


def test_an_upgrade_keeps_its_head_untouched() -> None:
    raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    head = parse_request(raw)
    assert head.upgrade
    assert head.for_backend == raw


@pytest.mark.parametrize(
    ("raw", "method", "framing", "keep"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"GET", Framing.LENGTH, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"HEAD", Framing.NONE, True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"GET", Framing.NONE, True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET", Framing.CHUNKED, True),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"GET", Framing.UNTIL_CLOSE, False),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            b"GET",
            Framing.LENGTH,
            False,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", b"GET", Framing.LENGTH, False),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            b"GET",
            Framing.CHUNKED,
            False,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", b"GET", Framing.UNTIL_CLOSE, False),
    ],
)
def test_response_framing_and_keep_alive(
    raw: bytes, method: bytes, framing: Framing, *, keep: bool
) -> None:
    head = parse_response(raw, method)
    assert (head.framing, head.keep_alive) == (framing, keep)


def test_interim_answers() -> None:
    assert parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", b"POST").interim
    assert not parse_response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"GET").interim


def test_heads_are_bounded() -> None:
    assert split_head(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    with pytest.raises(FramingError):
        split_head(b"x" * (MAX_HEAD + 1))


def test_a_chunked_body_ends_after_its_trailers_and_not_before() -> None:
    body = b"3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    framer = BodyFramer(Framing.CHUNKED)
    assert framer.feed(body + b"NEXT") == len(body)
    assert framer.done
    for cut in range(len(body)):
        split = BodyFramer(Framing.CHUNKED)
        first = split.feed(body[:cut])
        assert first == cut
        assert not split.done
        assert split.feed(body[cut:]) == len(body) - cut
        assert split.done


def test_a_malformed_chunked_body_is_refused() -> None:
    with pytest.raises(FramingError):
        BodyFramer(Framing.CHUNKED).feed(b"zz\r\n")
    with pytest.raises(FramingError):
        BodyFramer(Framing.CHUNKED).feed(b"1\r\nab\r\n")
    with pytest.raises(FramingError):
        BodyFramer(Framing.CHUNKED).feed(b"1" * 5000)


def test_a_length_body_takes_exactly_its_length() -> None:
    framer = BodyFramer(Framing.LENGTH, 5)
    assert framer.feed(b"abc") == 3
    assert framer.feed(b"defg") == 2
    assert framer.done
    assert framer.feed(b"x") == 0


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=20),
)
def test_chunked_bodies_written_by_h11_end_where_h11_ends_them(
    chunks: list[bytes], cuts: list[int]
) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.next_event()
    conn.next_event()
    wire = conn.send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]))
    body = b"".join(conn.send(h11.Data(data=c)) for c in chunks) + conn.send(h11.EndOfMessage())
    assert parse_response(wire, b"GET").framing is Framing.CHUNKED
    framer = BodyFramer(Framing.CHUNKED)
    data, at, taken = body + b"after", 0, 0
    for cut in cuts * 10:
        if at >= len(data):
            break
        taken += framer.feed(data[at : at + cut])
        at += cut
    taken += framer.feed(data[at:])
    assert framer.done
    assert taken == len(body)


@given(st.binary(max_size=300))
def test_any_bytes_either_frame_or_raise_framing_error(data: bytes) -> None:
    for framing in (Framing.CHUNKED, Framing.LENGTH):
        framer = BodyFramer(framing, 7)
        with contextlib.suppress(FramingError):
            assert framer.feed(data) <= len(data)
    with contextlib.suppress(FramingError):
        parse_request(data + b"\r\n\r\n")
    with contextlib.suppress(FramingError):
        parse_response(data + b"\r\n\r\n", b"GET")
