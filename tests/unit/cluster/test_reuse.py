"""Which requests may use a kept connection, and when an answer leaves it reusable."""

from __future__ import annotations

import h11
import pytest

from edge_agent.cluster.reuse import AnswerTracker, keep_alive_request, poolable


def _request(method: str, *headers: tuple[str, str]) -> h11.Request:
    return h11.Request(method=method, target="/x", headers=[("Host", "h"), *headers])


@pytest.mark.parametrize(
    ("request_", "rest", "pooled"),
    [
        (_request("GET", ("Connection", "close")), b"", True),
        (_request("HEAD"), b"", True),
        (_request("GET"), b"early body bytes", False),
        (_request("POST", ("Content-Length", "2")), b"", False),
        (_request("DELETE"), b"", False),
        (_request("GET", ("Content-Length", "0")), b"", False),
        (_request("GET", ("Connection", "Upgrade"), ("Upgrade", "websocket")), b"", False),
    ],
)
def test_poolable(request_: h11.Request, rest: bytes, *, pooled: bool) -> None:
    assert poolable(request_, rest) is pooled


def test_keep_alive_drops_connection_close() -> None:
    kept = keep_alive_request(_request("GET", ("Connection", "close"), ("Accept", "a")))
    assert [n for n, _ in kept.headers] == [b"host", b"accept"]


def _answer(tracker: AnswerTracker, *chunks: bytes) -> AnswerTracker:
    for chunk in chunks:
        tracker.feed(chunk)
    return tracker


def test_a_content_length_answer_completes_and_is_reusable() -> None:
    tracker = _answer(
        AnswerTracker(_request("GET")), b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", b"cd"
    )
    assert tracker.complete
    assert tracker.reusable


def test_a_chunked_answer_completes_at_its_last_chunk() -> None:
    tracker = AnswerTracker(_request("GET"))
    tracker.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
    assert not tracker.complete
    tracker.feed(b"0\r\n\r\n")
    assert tracker.reusable


def test_connection_close_or_junk_is_not_reusable() -> None:
    closing = _answer(
        AnswerTracker(_request("GET")),
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert closing.complete
    assert not closing.reusable
    junk = _answer(AnswerTracker(_request("GET")), b"NOT HTTP AT ALL\r\n\r\n")
    assert junk.broken
    assert not junk.reusable
    extra = _answer(
        AnswerTracker(_request("GET")), b"HTTP/1.1 204 No Content\r\n\r\n", b"more bytes"
    )
    assert not extra.reusable


def test_a_head_answer_has_no_body() -> None:
    tracker = _answer(
        AnswerTracker(_request("HEAD")), b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    )
    assert tracker.reusable
