"""Hypothesis strategies for frames, shared by the frame and the session fuzz tests."""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from tunnel_protocol import MAX_FRAME_PAYLOAD_HARD_CAP, ErrorCode, Frame, encode_frame
from tunnel_protocol.frames import (
    MAX_STREAM_ID,
    MAX_WINDOW,
    Accept,
    Data,
    Fin,
    GoAway,
    Hello,
    Open,
    Ping,
    Pong,
    Reject,
    Reset,
    WindowUpdate,
    truncate_text,
)

codes = st.sampled_from(ErrorCode)
texts = st.text(max_size=100).map(truncate_text)
targets = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255)
opaques = st.binary(min_size=8, max_size=8)


def frames(stream_ids: st.SearchStrategy[int] | None = None) -> st.SearchStrategy[Frame]:
    """Any valid frame; ``stream_ids`` narrows ids so fuzzing hits live streams."""
    ids = st.integers(1, MAX_STREAM_ID) if stream_ids is None else stream_ids
    return st.one_of(
        st.builds(
            Hello,
            st.lists(st.integers(1, 0xFFFF), min_size=1, max_size=32, unique=True).map(tuple),
            st.integers(1024, MAX_FRAME_PAYLOAD_HARD_CAP),
            st.integers(1, MAX_WINDOW),
            st.integers(0, MAX_WINDOW),
        ),
        st.builds(Open, ids, targets),
        st.builds(Accept, ids),
        st.builds(Reject, ids, codes, texts),
        st.builds(Data, ids, st.binary(min_size=1, max_size=300)),
        st.builds(WindowUpdate, ids, st.integers(1, MAX_WINDOW)),
        st.builds(Fin, ids),
        st.builds(Reset, ids, codes, texts),
        st.builds(Ping, opaques),
        st.builds(Pong, opaques),
        st.builds(GoAway, st.integers(0, MAX_STREAM_ID), codes, texts, final=st.booleans()),
    )


def raw_message(version: int, frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", version, frame_type, flags, stream_id, len(payload)) + payload


plausible_messages = st.builds(
    raw_message,
    st.integers(0, 2),
    st.integers(0, 12),
    st.sampled_from([0, 0, 0, 1, 2]),
    st.integers(0, 8),
    st.binary(max_size=40),
)
"""Headers that are nearly right with random payloads: reaches the per-type parsers."""


def messages(stream_ids: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    """What a hostile peer might send: noise, near-misses, and valid frames on live ids."""
    valid = st.builds(
        lambda frame, version: encode_frame(frame, version=version),
        frames(stream_ids),
        st.sampled_from([1, 1, 1, 0, 2]),
    )
    return st.one_of(st.binary(max_size=64), plausible_messages, valid, valid)
