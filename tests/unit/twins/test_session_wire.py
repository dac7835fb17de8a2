"""The PUBLISH codec of `SessionWire`, checked against paho's own decoder, and fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.twins.session_wire import (
    Incoming,
    MalformedPublishError,
    decode_publish,
    encode_publish,
    split_packets,
)

V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311


def split(packet: bytes) -> tuple[int, bytes]:
    """The fixed header's first byte and the packet after its remaining length."""
    index, length, shift = 1, 0, 0
    while True:
        byte = packet[index]
        index += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    assert len(packet) - index == length, "the remaining length covers the rest exactly"
    return packet[0], packet[index:]


@pytest.mark.parametrize("v5", [True, False])
@pytest.mark.parametrize("size", [0, 1, 127, 200, 16_384, 70_000])
def test_an_answer_reads_back_through_paho(v5: bool, size: int) -> None:  # noqa: FBT001
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    topic = "edgefleet/devices/thermo-1/twin/result"
    header, rest = split(encode_publish(topic, payload, 513, retain=True, v5=v5))
    seen = paho_packet.decode_publish(header, rest, V5 if v5 else V311)
    assert (seen.topic, seen.payload, seen.mid, seen.qos, seen.retain, seen.dup) == (
        topic.encode(),
        payload,
        513,
        1,
        True,
        False,
    )
    if v5:
        assert seen.properties is not None
        assert seen.properties.json() == {}  # type: ignore[no-untyped-call]


def test_a_device_message_with_properties_is_read_as_paho_reads_it() -> None:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = [("k", "v" * 300)]
    properties.ContentType = "application/json"
    properties.MessageExpiryInterval = 60
    packed = properties.pack()  # type: ignore[no-untyped-call]
    assert len(packed) > 128, "a property length of two bytes"
    topic, payload = b"edgefleet/devices/d-1/twin/reported", b'{"rid":"1","patch":{}}'
    rest = len(topic).to_bytes(2, "big") + topic + (7).to_bytes(2, "big") + packed + payload
    header = 0x30 | 0x02  # QoS 1, not retained
    mine = decode_publish(header, rest, v5=True)
    theirs = paho_packet.decode_publish(header, rest, V5)
    assert mine == Incoming(topic.decode(), payload, 7, 1, False)  # noqa: FBT003
    assert (theirs.topic, theirs.payload, theirs.mid) == (topic, payload, 7)


def test_qos_0_has_no_packet_id_and_311_no_properties() -> None:
    rest = (3).to_bytes(2, "big") + b"a/b" + b"\x00payload"
    assert decode_publish(0x31, rest, v5=False) == Incoming("a/b", b"\x00payload", 0, 0, True)  # noqa: FBT003


@pytest.mark.parametrize(
    ("header", "rest", "v5", "reason"),
    [
        (0x32, b"\x00", False, "shorter than its topic length"),
        (0x32, b"\x00\x05ab", False, "topic longer than the packet"),
        (0x32, b"\x00\x01a\x00", False, "without its packet id"),
        (0x32, b"\x00\x01a\x00\x01", True, "property length malformed"),
        (0x32, b"\x00\x01a\x00\x01\xff\xff\xff\xff\x01", True, "property length malformed"),
        (0x32, b"\x00\x01a\x00\x01\x05ab", True, "properties longer than the packet"),
    ],
)
def test_a_malformed_publish_is_refused_with_its_reason(
    header: int,
    rest: bytes,
    v5: bool,  # noqa: FBT001
    reason: str,
) -> None:
    with pytest.raises(MalformedPublishError, match=reason):
        decode_publish(header, rest, v5=v5)


@given(
    topic=st.text(min_size=1, max_size=80).filter(lambda t: "\x00" not in t),
    payload=st.binary(max_size=600),
    mid=st.integers(1, 65535),
    retain=st.booleans(),
    v5=st.booleans(),
)
def test_what_is_encoded_decodes_to_itself(
    topic: str,
    payload: bytes,
    mid: int,
    retain: bool,  # noqa: FBT001
    v5: bool,  # noqa: FBT001
) -> None:
    header, rest = split(encode_publish(topic, payload, mid, retain=retain, v5=v5))
    assert decode_publish(header, rest, v5=v5) == Incoming(topic, payload, mid, 1, retain)


@given(header=st.integers(0x30, 0x3F), rest=st.binary(max_size=64), v5=st.booleans())
def test_any_bytes_decode_or_are_refused(header: int, rest: bytes, v5: bool) -> None:  # noqa: FBT001
    try:
        message = decode_publish(header, rest, v5=v5)
    except MalformedPublishError:
        return
    assert len(message.payload) <= len(rest)
    assert message.mid <= 0xFFFF


@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    cut=st.integers(0, 10_000),
)
def test_a_read_splits_into_the_whole_packets_it_holds(payloads: list[bytes], cut: int) -> None:
    packets = [
        encode_publish("t/x", p, i + 1, retain=False, v5=True) for i, p in enumerate(payloads)
    ]
    stream = b"".join(packets)
    cut = min(cut, len(stream))
    whole, used = split_packets(stream[:cut])
    ends = [sum(map(len, packets[: i + 1])) for i in range(len(packets))]
    done = [end for end in ends if end <= cut]
    assert used == (done[-1] if done else 0)
    assert [split(packet) for packet in packets[: len(done)]] == whole
    rest, more = split_packets(stream[used:])  # the next read brings the rest
    assert whole + rest == [split(packet) for packet in packets]
    assert used + more == len(stream)


def test_a_remaining_length_over_4_bytes_is_refused() -> None:
    with pytest.raises(MalformedPublishError, match="over 4 bytes"):
        split_packets(b"\x30\xff\xff\xff\xff\x01")
    assert split_packets(b"\x30\xff\xff") == ([], 0)  # the rest of the header comes later
