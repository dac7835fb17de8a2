"""The head the gateway forwards: hop-by-hop fields out, forwarded fields in (``headers.py``)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from tunnel_server.fleet.gateway.headers import (
    FORWARDED,
    MAX_CHAIN,
    HeaderModifier,
    connection_tokens,
    forwarded_for,
    hop_by_hop,
    modify,
    safe_request_id,
    with_forwarded,
)
from tunnel_server.tunnel.http_over_stream import HOP_BY_HOP

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~ABCXYZ"
names = st.text(TOKEN_CHARS, min_size=1, max_size=20)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
fields = st.lists(st.tuples(names, values), max_size=12)


def _drop(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    gone = hop_by_hop(headers)
    return [(n, v) for n, v in headers if n.lower() not in gone]


def test_connection_names_fields_to_drop() -> None:
    headers = [
        ("Connection", "keep-alive, X-Hop"),
        ("Connection", " Upgrade ,,bad token"),
        ("X-Hop", "1"),
        ("X-Keep", "2"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Content-Length", "3"),
    ]
    assert connection_tokens(["keep-alive, X-Hop", " Upgrade ,,bad token"]) == {
        "keep-alive",
        "x-hop",
        "upgrade",
    }
    assert _drop(headers) == [("X-Keep", "2"), ("Content-Length", "3")]


def test_connection_cannot_unframe_the_message() -> None:
    headers = [("Connection", "Host, Content-Length, Content-Type"), ("Content-Length", "5")]
    assert hop_by_hop(headers) >= {"connection"}
    assert not hop_by_hop(headers) & {"host", "content-length", "content-type"}


@given(fields, st.lists(names, max_size=4))
def test_nothing_hop_by_hop_survives(headers: list[tuple[str, str]], named: list[str]) -> None:
    headers = [*headers, ("Connection", ", ".join(named))]
    kept = _drop(headers)
    kept_names = {n.lower() for n, _ in kept}
    assert not kept_names & HOP_BY_HOP
    assert not kept_names & (
        {n.lower() for n in named} - {"host", "content-length", "content-type"}
    )
    # what is not hop-by-hop stays, in order
    gone = hop_by_hop(headers)
    assert kept == [(n, v) for n, v in headers if n.lower() not in gone]


@given(fields, st.lists(values, max_size=3), st.ip_addresses().map(str))
def test_forwarded_fields_are_ours_and_single(
    headers: list[tuple[str, str]], chain: list[str], client: str
) -> None:
    incoming = [*headers, *(("X-Forwarded-For", c) for c in chain)]
    out = with_forwarded(
        incoming, incoming=incoming, client=client, proto="https", host="web.test", request_id="r1"
    )
    for name in FORWARDED:
        assert [n.lower() for n, _ in out].count(name) == 1
    got = {n.lower(): v for n, v in out if n.lower() in FORWARDED}
    assert got["x-forwarded-for"].endswith(client)
    assert got["x-forwarded-proto"] == "https"
    assert got["x-forwarded-host"] == "web.test"
    assert got["x-request-id"] == "r1"
    others = [(n, v) for n, v in incoming if n.lower() not in FORWARDED]
    assert out[: len(others)] == others


def test_forwarded_for_appends_the_peer() -> None:
    assert forwarded_for([], "127.0.0.1") == "127.0.0.1"
    assert forwarded_for(["10.0.0.1, 10.0.0.2", " 10.0.0.3 "], "::1") == (
        "10.0.0.1, 10.0.0.2, 10.0.0.3, ::1"
    )


@given(st.lists(values, max_size=400))
def test_forwarded_for_is_bounded(chain: list[str]) -> None:
    value = forwarded_for(chain, "192.0.2.1")
    assert len(value) <= MAX_CHAIN + len(", 192.0.2.1")
    assert value.endswith("192.0.2.1")


@given(st.text(max_size=200))
def test_request_id_kept_only_when_safe(value: str) -> None:
    kept = safe_request_id(value)
    assert kept is None or kept == value
    assert (kept is not None) == bool(re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", value))


def test_request_id_examples() -> None:
    assert safe_request_id("abc-123:x.y_z") == "abc-123:x.y_z"
    assert safe_request_id("two words") is None
    assert safe_request_id("x" * 129) is None
    assert safe_request_id(None) is None
    assert safe_request_id("") is None


def test_modifier_sets_adds_removes_but_not_framing_or_ours() -> None:
    headers = [
        ("Host", "web.test"),
        ("X-Env", "prod"),
        ("X-Drop", "1"),
        ("Content-Length", "4"),
        ("Connection", "close"),
    ]
    modifier = HeaderModifier(
        set=(("X-Env", "canary"), ("Host", "evil"), ("X-Forwarded-For", "1.2.3.4")),
        add=(("X-Tag", "a"), ("Transfer-Encoding", "chunked")),
        remove=("x-drop", "content-length", "connection"),
    )
    assert modify(headers, modifier) == [
        ("Host", "web.test"),
        ("Content-Length", "4"),
        ("Connection", "close"),
        ("X-Env", "canary"),
        ("X-Tag", "a"),
    ]


@given(fields, fields, fields, st.lists(names, max_size=4))
def test_modifier_never_touches_guarded_fields(
    headers: list[tuple[str, str]],
    sets: list[tuple[str, str]],
    adds: list[tuple[str, str]],
    removes: list[str],
) -> None:
    guarded = HOP_BY_HOP | FORWARDED | {"host", "content-length", "content-type"}
    out = modify(headers, HeaderModifier(set=tuple(sets), add=tuple(adds), remove=tuple(removes)))
    assert [f for f in out if f[0].lower() in guarded] == [
        f for f in headers if f[0].lower() in guarded
    ]
    for name, value in sets:
        if name.lower() not in guarded:
            assert (name, value) in out
