"""The pure parts of the member pool: which requests use it, and the head it sends."""

from __future__ import annotations

import h11
import pytest

from edge_agent.cluster.member_pool import body_parser, has_body, is_upgrade, member_request


def _request(*headers: tuple[str, str], method: str = "GET") -> h11.Request:
    return h11.Request(
        method=method, target="/api/v1/pods?watch=1", headers=[("Host", "x"), *headers]
    )


@pytest.mark.parametrize(
    ("headers", "upgrade"),
    [
        ((("Connection", "close"),), False),
        ((("Connection", "Upgrade"), ("Upgrade", "websocket")), True),
        ((("Upgrade", "SPDY/3.1"),), True),
        ((("Connection", "keep-alive, Upgrade"),), True),
    ],
)
def test_only_upgrades_keep_the_raw_pipe(
    headers: tuple[tuple[str, str], ...],
    upgrade: bool,  # noqa: FBT001 - a parametrize argument
) -> None:
    assert is_upgrade(_request(*headers)) is upgrade


def test_a_body_is_a_non_zero_length_or_chunked() -> None:
    assert not has_body(_request())
    assert not has_body(_request(("Content-Length", "0"), method="POST"))
    assert has_body(_request(("Content-Length", "3"), method="POST"))
    assert has_body(_request(("Transfer-Encoding", "chunked"), method="POST"))


def test_the_member_head_drops_credentials_and_close_and_keeps_impersonation() -> None:
    cloud = _request(
        ("Authorization", "Bearer the-callers"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Connection", "close"),
        ("Keep-Alive", "timeout=5"),
        ("Impersonate-User", "edgefleet:viewer"),
        ("Accept", "application/json"),
    )
    sent = member_request(cloud, host="10.0.0.1:6443", authorization="Bearer agents")
    assert sent.target == cloud.target
    assert list(sent.headers.raw_items()) == [
        (b"Host", b"10.0.0.1:6443"),
        (b"Impersonate-User", b"edgefleet:viewer"),
        (b"Accept", b"application/json"),
        (b"Authorization", b"Bearer agents"),
    ]
    assert b"Authorization" not in dict(
        member_request(cloud, host="h", authorization=None).headers.raw_items()
    )


def _body(parser: h11.Connection, more: bytes = b"") -> bytes:
    parser.receive_data(more)
    out = b""
    while True:
        event = parser.next_event()
        if isinstance(event, h11.Data):
            out += event.data
        elif isinstance(event, h11.EndOfMessage):
            return out
        else:
            raise TypeError(event)


def test_the_body_is_framed_from_the_bytes_past_the_head() -> None:
    fixed = _request(("Content-Length", "5"), method="PUT")
    assert _body(body_parser(fixed, b"he"), b"llo") == b"hello"
    chunked = _request(("Transfer-Encoding", "chunked"), method="POST")
    assert _body(body_parser(chunked, b"3\r\nabc\r\n"), b"0\r\n\r\n") == b"abc"
    assert _body(body_parser(_request(), b"")) == b""
    later = body_parser(fixed, b"")  # the body comes after the head, in another read
    assert later.next_event() is h11.NEED_DATA
    assert _body(later, b"hello") == b"hello"
