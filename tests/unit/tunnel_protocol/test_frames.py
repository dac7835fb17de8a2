"""Frame layout: exact bytes for each type, strict decoding, and a hypothesis round-trip."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.tunnel_protocol.strategies import frames, plausible_messages, raw_message
from tunnel_protocol import (
    HEADER_SIZE,
    MAX_FRAME_PAYLOAD_HARD_CAP,
    MAX_TARGET_LENGTH,
    MAX_TEXT_LENGTH,
    Accept,
    Data,
    ErrorCode,
    Fin,
    Frame,
    FrameType,
    GoAway,
    Hello,
    LocalProtocolError,
    Open,
    Ping,
    Pong,
    Reject,
    RemoteProtocolError,
    Reset,
    WindowUpdate,
    decode_frame,
    encode_data,
    encode_frame,
)
from tunnel_protocol.frames import (
    MAX_FRAMES_PER_MESSAGE,
    MAX_STREAM_ID,
    MAX_WINDOW,
    split_frames,
    truncate_text,
)

raw = raw_message


def test_header_is_twelve_bytes_big_endian() -> None:
    message = encode_frame(Data(0x01020304, b"hi"), version=1)
    assert HEADER_SIZE == 12
    assert message == bytes([1, 5, 0, 0, 1, 2, 3, 4, 0, 0, 0, 2]) + b"hi"


@pytest.mark.parametrize(
    ("frame", "payload"),
    [
        (
            Hello((1, 2), 65536, 262144, 1024),
            bytes([2, 0, 1, 0, 2]) + struct.pack("!III", 65536, 262144, 1024),
        ),
        (Open(1, "kubelet"), b"kubelet"),
        (Accept(2), b""),
        (Reject(3, ErrorCode.TARGET_NOT_ALLOWED, "no"), b"\x00\x0bno"),
        (Data(4, b"\x00\xff"), b"\x00\xff"),
        (WindowUpdate(5, 70000), struct.pack("!I", 70000)),
        (Fin(6), b""),
        (Reset(7, ErrorCode.CANCEL, "bye"), b"\x00\x07bye"),
        (Ping(b"12345678"), b"12345678"),
        (Pong(b"12345678"), b"12345678"),
        (GoAway(9, ErrorCode.NO_ERROR, "drain"), struct.pack("!IH", 9, 0) + b"drain"),
    ],
)
def test_payload_layout_and_round_trip(frame: Frame, payload: bytes) -> None:
    message = encode_frame(frame, version=1)
    assert message[HEADER_SIZE:] == payload
    assert message[1] == frame.frame_type
    assert decode_frame(message) == (1, frame)


def test_go_away_final_is_a_flag() -> None:
    message = encode_frame(GoAway(0, ErrorCode.PROTOCOL_ERROR, "bad", final=True), version=0)
    assert message[2:4] == b"\x00\x01"
    assert decode_frame(message)[1] == GoAway(0, ErrorCode.PROTOCOL_ERROR, "bad", final=True)


def test_hello_ignores_extension_bytes_of_later_versions() -> None:
    payload = Hello((1,), 65536, 1024, 10).payload() + b"future settings"
    assert decode_frame(raw(0, FrameType.HELLO, 0, 0, payload))[1] == Hello((1,), 65536, 1024, 10)


def test_unknown_error_code_reads_as_internal_error() -> None:
    message = raw(1, FrameType.RESET, 0, 1, b"\xff\xfftext")
    assert decode_frame(message)[1] == Reset(1, ErrorCode.INTERNAL_ERROR, "text")


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        (b"", ErrorCode.FRAME_SIZE_ERROR, "shorter than a header"),
        (raw(1, FrameType.DATA, 0, 1, b"x")[:-1], ErrorCode.FRAME_SIZE_ERROR, "length field"),
        (raw(1, FrameType.DATA, 0, 1, b"x") + b"y", ErrorCode.FRAME_SIZE_ERROR, "length field"),
        (raw(1, 0x0C, 0, 1, b""), ErrorCode.PROTOCOL_ERROR, "unknown frame type"),
        (raw(1, 0x00, 0, 1, b""), ErrorCode.PROTOCOL_ERROR, "unknown frame type"),
        (raw(1, FrameType.DATA, 1, 1, b"x"), ErrorCode.PROTOCOL_ERROR, "unknown flags"),
        (raw(1, FrameType.DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR, "needs a stream id"),
        (raw(1, FrameType.PING, 0, 1, b"12345678"), ErrorCode.PROTOCOL_ERROR, "stream id 0"),
        (raw(1, FrameType.DATA, 0, 1, b""), ErrorCode.FRAME_SIZE_ERROR, "empty"),
        (raw(1, FrameType.PING, 0, 0, b"1234567"), ErrorCode.FRAME_SIZE_ERROR, "8 bytes"),
        (raw(1, FrameType.ACCEPT, 0, 1, b"x"), ErrorCode.FRAME_SIZE_ERROR, "no payload"),
        (raw(1, FrameType.FIN, 0, 1, b"x"), ErrorCode.FRAME_SIZE_ERROR, "no payload"),
        (raw(1, FrameType.WINDOW_UPDATE, 0, 1, b"\0\0\0\0"), ErrorCode.PROTOCOL_ERROR, "1..2"),
        (raw(1, FrameType.WINDOW_UPDATE, 0, 1, b"\0\0\1"), ErrorCode.FRAME_SIZE_ERROR, "size"),
        (raw(1, FrameType.RESET, 0, 1, b"\0"), ErrorCode.FRAME_SIZE_ERROR, "truncated"),
        (raw(1, FrameType.RESET, 0, 1, b"\0\1\xff"), ErrorCode.PROTOCOL_ERROR, "UTF-8"),
        (raw(1, FrameType.OPEN, 0, 1, b""), ErrorCode.PROTOCOL_ERROR, "printable ASCII"),
        (raw(1, FrameType.OPEN, 0, 1, b"a b"), ErrorCode.PROTOCOL_ERROR, "printable ASCII"),
        (raw(1, FrameType.OPEN, 0, 1, b"\xc3\xa9"), ErrorCode.PROTOCOL_ERROR, "not ASCII"),
        (raw(1, FrameType.GO_AWAY, 0, 0, b"\0\0\0"), ErrorCode.FRAME_SIZE_ERROR, "truncated"),
        (raw(1, FrameType.GO_AWAY, 2, 0, b"\0" * 6), ErrorCode.PROTOCOL_ERROR, "unknown flags"),
        (raw(0, FrameType.HELLO, 0, 0, b""), ErrorCode.FRAME_SIZE_ERROR, "HELLO size"),
        (raw(0, FrameType.HELLO, 0, 0, b"\x01\x00"), ErrorCode.FRAME_SIZE_ERROR, "truncated"),
        (raw(0, FrameType.HELLO, 0, 0, b"\x00" * 20), ErrorCode.FRAME_SIZE_ERROR, "truncated"),
    ],
)
def test_decoder_rejects_malformed_messages(message: bytes, code: ErrorCode, words: str) -> None:
    with pytest.raises(RemoteProtocolError, match=words) as caught:
        decode_frame(message)
    assert caught.value.code is code


def test_data_larger_than_the_receivers_limit_is_a_frame_size_error() -> None:
    message = encode_frame(Data(1, b"x" * 2000), version=1)
    assert decode_frame(message, max_data_payload=2000)[1] == Data(1, b"x" * 2000)
    with pytest.raises(RemoteProtocolError) as caught:
        decode_frame(message, max_data_payload=1999)
    assert caught.value.code is ErrorCode.FRAME_SIZE_ERROR


def test_no_frame_may_exceed_the_hard_cap_whatever_its_type() -> None:
    payload = b"\0\0\0\0\0\0" + b"x" * MAX_FRAME_PAYLOAD_HARD_CAP
    with pytest.raises(RemoteProtocolError, match="too large"):
        decode_frame(raw(1, FrameType.GO_AWAY, 0, 0, payload))


@pytest.mark.parametrize(
    "build",
    [
        lambda: Open(0, "x"),
        lambda: Open(MAX_STREAM_ID + 1, "x"),
        lambda: Open(1, "x" * (MAX_TARGET_LENGTH + 1)),
        lambda: Open(1, "tab\there"),
        lambda: Data(1, b""),
        lambda: Reset(1, ErrorCode.CANCEL, "x" * (MAX_TEXT_LENGTH + 1)),
        lambda: WindowUpdate(1, MAX_WINDOW + 1),
        lambda: Hello((), 65536, 1, 1),
        lambda: Hello((1, 1), 65536, 1, 1),
        lambda: Hello((0,), 65536, 1, 1),
        lambda: Hello((1,), 100, 1, 1),
        lambda: Hello((1,), 65536, 0, 1),
        lambda: GoAway(-1, ErrorCode.NO_ERROR, ""),
    ],
)
def test_invalid_frames_cannot_be_built(build: Callable[[], Frame]) -> None:
    with pytest.raises(LocalProtocolError):
        build()


def test_truncate_text_keeps_whole_characters() -> None:
    text = "é" * MAX_TEXT_LENGTH  # two bytes each in UTF-8
    cut = truncate_text(text)
    assert cut == "é" * (MAX_TEXT_LENGTH // 2)
    assert truncate_text("short") == "short"


# ---------------------------------------------------------------------------- hypothesis


@settings(deadline=None, max_examples=200)
@given(frame=frames(), version=st.integers(0, 255))
def test_encode_decode_round_trip(frame: Frame, version: int) -> None:
    message = encode_frame(frame, version=version)
    assert len(message) == HEADER_SIZE + len(frame.payload())
    assert decode_frame(message) == (version, frame)


@settings(deadline=None, max_examples=200)
@given(
    stream_id=st.integers(1, MAX_STREAM_ID),
    payload=st.binary(min_size=1, max_size=4096),
    start=st.integers(0, 64),
    version=st.integers(0, 255),
)
def test_the_data_fast_path_encodes_what_encode_frame_does(
    stream_id: int, payload: bytes, start: int, version: int
) -> None:
    # The session hands ``encode_data`` a slice of a memoryview of the application's buffer.
    buffer = memoryview(bytes(start) + payload)[start:]
    message = encode_data(stream_id, buffer, version=version)
    assert message == encode_frame(Data(stream_id, payload), version=version)
    assert decode_frame(message) == (version, Data(stream_id, payload))


@settings(deadline=None, max_examples=200)
@given(message=st.binary(max_size=64))
def test_decoder_raises_only_remote_protocol_error(message: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_frame(message)


@settings(deadline=None, max_examples=200)
@given(message=plausible_messages)
def test_decoder_with_plausible_headers_raises_only_remote_protocol_error(message: bytes) -> None:
    try:
        version, frame = decode_frame(message)
    except RemoteProtocolError:
        return
    # Whatever was accepted is a valid frame again (unknown codes and HELLO extensions are
    # normalised away, so compare frames, not bytes).
    assert decode_frame(encode_frame(frame, version=version)) == (version, frame)


def test_several_frames_in_one_message_are_split_back() -> None:
    frames: list[Frame] = [Ping(b"12345678"), Data(3, b"hello"), Fin(3), WindowUpdate(3, 99)]
    message = b"".join(encode_frame(f, version=1) for f in frames)
    assert [decode_frame(piece)[1] for piece in split_frames(message)] == frames


@pytest.mark.parametrize("cut", [1, 11, 13, 20])
def test_a_frame_running_past_the_message_is_refused(cut: int) -> None:
    message = encode_frame(Data(3, b"x" * 8), version=1) + encode_frame(Fin(3), version=1)
    with pytest.raises(RemoteProtocolError) as caught:
        split_frames(message[:-cut] if cut < 12 else message[: len(message) - 12 + (cut - 12)])
    assert caught.value.code is ErrorCode.FRAME_SIZE_ERROR


def test_frames_per_message_are_bounded() -> None:
    message = encode_frame(Fin(3), version=1) * (MAX_FRAMES_PER_MESSAGE + 1)
    with pytest.raises(RemoteProtocolError, match="more than"):
        split_frames(message)
