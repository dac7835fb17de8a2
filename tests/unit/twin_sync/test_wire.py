"""The sync stream's framing, one codec for both ends: round trips, caps, bad input."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_models import sync_session
from device_models import sync_wire as wire

CAP = 4096
FUZZ = settings(max_examples=200, deadline=None)


def cloud_decoder() -> wire.Decoder:
    return wire.Decoder(max_bytes=CAP, max_depth=8)


def edge_decoder() -> wire.Decoder:
    return wire.Decoder(max_bytes=CAP, max_depth=8)


def test_messages_cross_both_ways_byte_by_byte() -> None:
    messages = [{"type": "hello", "n": i, "text": "é" * i} for i in range(20)]
    data = b"".join(wire.encode(m, max_bytes=CAP) for m in messages)
    decoder = edge_decoder()
    got = [m for byte in data for m in decoder.feed(bytes([byte]))]
    assert got == messages
    back = b"".join(wire.encode(m, max_bytes=CAP) for m in messages)
    assert back == data
    assert cloud_decoder().feed(back) == messages


def test_a_length_over_the_cap_fails_before_the_body_is_buffered() -> None:
    for decoder in (cloud_decoder(), edge_decoder()):
        with pytest.raises(ValueError, match="not within"):
            decoder.feed(struct.pack(">I", CAP + 1))
        assert decoder.buffered == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b"[1, 2]", "object"),
        (b'{"no": "type"}', "type"),
        (b'{"type": 1}', "type"),
        (b'{"type": "x", "v": NaN}', "NaN"),
        (b'{"type": "x", "v": ' + b"[" * 20 + b"]" * 20 + b"}", "deeper"),
        (b"{", "JSON"),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    frame = struct.pack(">I", len(body)) + body
    for decoder in (cloud_decoder(), edge_decoder()):
        with pytest.raises(ValueError, match=reason):
            decoder.feed(frame)


def test_encoding_refuses_a_message_over_the_cap() -> None:
    with pytest.raises(wire.WireError):
        wire.encode({"type": "x", "pad": "y" * CAP}, max_bytes=CAP)
    with pytest.raises(wire.WireError):
        wire.encode({"type": "x", "pad": "y" * CAP}, max_bytes=CAP)


def test_big_batches_are_split_under_the_cap_and_keep_their_order() -> None:
    records = [{"kind": "twin-change", "outboxId": i, "pad": "z" * 300} for i in range(1, 60)]
    frames = [f for _, f in sync_session.batch_messages(records, first_id=7, max_bytes=CAP)]
    assert len(frames) > 1
    decoder = cloud_decoder()
    messages = [m for frame in frames for m in decoder.feed(frame)]
    assert [m["id"] for m in messages] == list(range(7, 7 + len(frames)))
    assert [r for m in messages for r in m["records"]] == records
    assert all(len(frame) - 4 <= CAP for frame in frames)


def test_a_record_larger_than_a_message_is_refused() -> None:
    with pytest.raises(sync_session.LocalProtocolError, match="exceeds the message cap"):
        sync_session.batch_messages([{"pad": "z" * CAP}], first_id=1, max_bytes=CAP)


@FUZZ
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=40))
def test_any_bytes_in_any_chunks_fail_only_with_a_wire_error(data: bytes, step: int) -> None:
    for decoder in (cloud_decoder(), edge_decoder()):
        try:
            for start in range(0, len(data), step):
                for message in decoder.feed(data[start : start + step]):
                    assert isinstance(message["type"], str)
        except wire.WireError:
            pass  # the only failure allowed; anything else propagates and fails the test


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=20,
    )
)
def test_any_json_value_round_trips_or_is_refused(value: object) -> None:
    message = {"type": "x", "value": value}
    try:
        frame = wire.encode(message, max_bytes=CAP)
    except wire.WireError:
        return
    depth = _depth(message)
    if depth > 8:
        with pytest.raises(wire.WireError, match="deeper"):
            edge_decoder().feed(frame)
        return
    assert edge_decoder().feed(frame) == [json.loads(json.dumps(message))]


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0
