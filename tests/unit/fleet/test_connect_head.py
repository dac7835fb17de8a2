"""The CONNECT head parser: what kube-apiserver sends is served, anything else is a HeadError."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_server.fleet.connect_head import (
    ConnectTarget,
    HeadError,
    parse_authority,
    parse_connect_head,
    split_head,
)

APISERVER_HEAD = b"CONNECT edge-1:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
"""Byte for byte what egress_selector.go's tunnelHTTPConnect writes."""


def test_what_kube_apiserver_sends() -> None:
    head, rest = split_head(APISERVER_HEAD + b"\x16\x03\x01", max_bytes=8192) or (b"", b"")
    assert head == APISERVER_HEAD
    assert rest == b"\x16\x03\x01"  # a TLS ClientHello sent early stays for the relay
    assert parse_connect_head(head) == ConnectTarget(host="edge-1", port=10250)


@pytest.mark.parametrize(
    ("authority", "host", "port"),
    [
        (b"10.0.0.7:10250", "10.0.0.7", 10250),
        (b"[fd00::0:7]:10250", "fd00::7", 10250),
        (b"Edge-1.Example.COM.:1", "edge-1.example.com", 1),
        (b"node_1:65535", "node_1", 65535),
    ],
)
def test_hosts_are_normalized(authority: bytes, host: str, port: int) -> None:
    assert parse_authority(authority) == ConnectTarget(host=host, port=port)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 405),
        (b"connect edge:10250 HTTP/1.1\r\n\r\n", 405),
        (b"CONNECT edge:10250\r\n\r\n", 400),
        (b"CONNECT  edge:10250 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT edge:10250 HTTP/2.0\r\n\r\n", 400),
        (b"CONNECT edge HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT edge:0 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT edge:65536 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT edge:+80 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT fd00::1:10250 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT [edge]:10250 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT user@edge:10250 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT http://edge:10250/ HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT edge:10250 HTTP/1.1\r\n folded\r\n\r\n", 400),
        (b"CONNECT edge:10250 HTTP/1.1\r\nNo colon\r\n\r\n", 400),
        (b"CONNECT edge:10250 HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (b"CONNECT \xc3\xa9dge:10250 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT edge:10250 HTTP/1.1\r\n" + b"X: y\r\n" * 65 + b"\r\n", 400),
    ],
)
def test_bad_heads_are_refused_with_a_status(head: bytes, status: int) -> None:
    with pytest.raises(HeadError) as refused:
        parse_connect_head(head)
    assert refused.value.status == status
    assert refused.value.reason


def test_a_head_without_its_end_is_refused_at_the_limit() -> None:
    assert split_head(b"CONNECT edge:10250 HTTP/1.1\r\n", max_bytes=64) is None
    with pytest.raises(HeadError) as refused:
        split_head(b"CONNECT " + b"a" * 100, max_bytes=64)
    assert refused.value.status == 400
    # The end beyond the limit does not count either: nothing past max_bytes is parsed.
    with pytest.raises(HeadError):
        split_head(b"X" * 64 + b"\r\n\r\n", max_bytes=64)


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_NAMES = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_HOSTS = st.one_of(
    _NAMES,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a.exploded}]"),
)


@given(host=_HOSTS, port=st.integers(1, 65535), split_at=st.integers(0, 200))
def test_any_valid_target_round_trips_in_any_pieces(host: str, port: int, split_at: int) -> None:
    """Fed in two pieces, as TCP may deliver it, the head parses to the same normalized target."""
    data = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    first = data[:split_at]
    if split_at < len(data):
        assert split_head(first, max_bytes=8192) is None
    found = split_head(data, max_bytes=8192)
    assert found is not None
    target = parse_connect_head(found[0])
    expected = host.lower()
    if host.startswith("["):
        expected = str(ipaddress.IPv6Address(host[1:-1]))
    assert target == ConnectTarget(host=expected, port=port)


@given(st.binary(max_size=600), st.integers(16, 512))
def test_arbitrary_bytes_never_escape_as_anything_but_head_error(data: bytes, limit: int) -> None:
    status = 0
    try:
        found = split_head(data, max_bytes=limit)
        if found is not None:
            assert len(found[0]) <= limit
            parse_connect_head(found[0])
    except HeadError as refused:
        status = refused.status
    assert status in (0, 400, 405)


@given(
    method=st.sampled_from([b"CONNECT", b"GET", b"connect", b"C\x00NNECT"]),
    authority=st.binary(max_size=40),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"http/1.1", b""]),
    headers=st.lists(st.binary(max_size=30), max_size=5),
)
def test_mutated_request_lines_either_parse_or_refuse(
    method: bytes, authority: bytes, version: bytes, headers: list[bytes]
) -> None:
    head = (
        b" ".join([method, authority, version]) + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
    )
    try:
        target = parse_connect_head(head + b"\r\n")
    except HeadError:
        return
    assert method == b"CONNECT"
    assert 0 < target.port < 65536
    assert target.host == target.host.lower()
