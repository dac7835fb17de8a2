"""The gateway's own request heads and plain answers agree with h11, and refuse what it refused."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_server.fleet.gateway.wire import UnsendableError, parse_plain_response, request_head

LIMIT = 64 * 1024


def _h11_events(head: bytes) -> list[h11.Event]:
    server = h11.Connection(h11.SERVER)
    server.receive_data(head)
    events: list[h11.Event] = []
    while isinstance(event := server.next_event(), h11.Event):
        events.append(event)
    return events


def test_the_head_written_is_what_h11_reads() -> None:
    fields = [("Host", "web.example"), ("X-Tab", "a\tb"), ("Empty", ""), ("Connection", "close")]
    head = request_head("GET", "/a%2Fb?q=1", fields)
    assert head.endswith(b"\r\n\r\n")
    request = _h11_events(head)[0]
    assert isinstance(request, h11.Request)
    assert request.method == b"GET"
    assert request.target == b"/a%2Fb?q=1"
    assert [(n.decode(), v.decode()) for n, v in request.headers.raw_items()] == fields


@pytest.mark.parametrize(
    ("method", "target", "field"),
    [
        ("GET", "/", ("X-Bad", "a\r\nInjected: yes")),
        ("GET", "/", ("X-Bad", "a\nb")),
        ("GET", "/", ("X-Bad", "nul\x00")),
        ("GET", "/", ("X-Bad", " leading")),
        ("GET", "/", ("X-Bad", "trailing ")),
        ("GET", "/", ("X-Bad", "caf\u00e9")),
        ("GET", "/", ("Bad Name", "v")),
        ("GET", "/", ("Bad:Name", "v")),
        ("GET", "/", ("", "v")),
        ("GET", "/a b", ("X", "v")),
        ("GET", "/\u00e9", ("X", "v")),
        ("GE T", "/", ("X", "v")),
    ],
)
def test_what_cannot_be_sent_is_refused(method: str, target: str, field: tuple[str, str]) -> None:
    with pytest.raises(UnsendableError):
        request_head(method, target, [("Host", "h"), field])


def test_a_plain_answer_is_parsed() -> None:
    buffer = (
        b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A:  b \r\nSet-Cookie: x\r\n\r\nabcEXTRA"
    )
    plain = parse_plain_response(buffer, method="POST", limit=LIMIT)
    assert plain is not None
    assert (plain.status, plain.reason, plain.length) == (201, "Created", 3)
    assert plain.fields == [("Content-Length", "3"), ("X-A", "b"), ("Set-Cookie", "x")]
    assert buffer[plain.size : plain.size + plain.length] == b"abc"


@pytest.mark.parametrize(
    ("head", "method", "length"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", "GET", 0),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET", 0),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", "HEAD", 0),
        (b"HTTP/1.0 200\r\nContent-Length: 5, 5\r\n\r\n", "GET", 5),
    ],
)
def test_bodies_without_bytes_and_repeated_lengths(head: bytes, method: str, length: int) -> None:
    plain = parse_plain_response(head, method=method, limit=LIMIT)
    assert plain is not None
    assert plain.length == length


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # until close
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/2 200 OK\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 3\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n",  # not all arrived
    ],
)
def test_anything_else_is_left_to_h11(head: bytes) -> None:
    assert parse_plain_response(head, method="GET", limit=LIMIT) is None


def test_a_head_past_the_limit_is_left_to_h11() -> None:
    head = b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100 + b"\r\nContent-Length: 0\r\n\r\n"
    assert parse_plain_response(head, method="GET", limit=64) is None


_LINES = st.sampled_from(
    [
        b"X-A: 1",
        b"Content-Length: 2",
        b"Content-Length: 3",
        b"Bad Name: x",
        b" folded",
        b"X:",
        b"Transfer-Encoding: chunked",
        b"X: \x00",
        b"X: caf\xe9",
        b"Connection: close",
        b"Y:\tz\t",
    ]
)


@given(
    st.lists(_LINES, max_size=5).map(lambda lines: b"".join(line + b"\r\n" for line in lines)),
    st.binary(max_size=40),
    st.sampled_from(["GET", "HEAD", "POST"]),
)
def test_whatever_is_parsed_h11_reads_the_same(fields: bytes, tail: bytes, method: str) -> None:
    data = fields + b"\r\n" + tail
    _check_against_h11(data, method)


@given(st.binary(max_size=300), st.sampled_from(["GET", "HEAD", "POST"]))
def test_random_bytes_never_break_the_parser(data: bytes, method: str) -> None:
    _check_against_h11(data, method)


def _check_against_h11(data: bytes, method: str) -> None:
    buffer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + data
    plain = parse_plain_response(buffer, method=method, limit=LIMIT)
    if plain is None:
        return
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "h")]))
    client.send(h11.EndOfMessage())
    client.receive_data(buffer[: plain.size] + b"x" * plain.length)  # the body, whole
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == plain.status
    got = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in response.headers.raw_items()]
    assert got == plain.fields
    body = b""
    while isinstance(event := client.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)
    assert len(body) == plain.length
