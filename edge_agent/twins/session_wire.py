"""`SessionWire`: the per-message hot path of the agent's broker session, cheaper than aiomqtt's.

The agent's session is an `aiomqtt.Client` (connect, subscribe, will, TLS, reconnects); this
module replaces only what it costs per device message. py-spy of the twins bench showed the MQTT
client spending over half of the agent's CPU per report: a ``Properties`` object built for every
incoming PUBLISH and PUBACK (MQTT 5, even when the packet carries no property), an aiomqtt
``Message`` and ``Topic`` and a task plus ``asyncio.wait`` per message read, and per answer
published aiomqtt's wrapper (its pending-call bookkeeping, a warning log line past 10 calls in
flight, an ``Event`` and a ``wait_for`` task), plus paho's scan of every outgoing message on
every PUBACK (its in-flight window). Rules:

1. Incoming PUBLISH packets are decoded here ([MQTT-3.3.2], [MQTT-2.2.2]): topic, packet id,
   the MQTT 5 property block skipped by its length (the agent uses none of a device's
   properties; the broker sends no topic alias since the agent allows none), payload. They
   queue as `Incoming` in arrival order, at most `max_queued` (beyond, a message is dropped with
   a warning and stays unacknowledged until the next session, as with aiomqtt). QoS 2 never
   comes (the agent subscribes at QoS 1) and goes to paho's own handler if it does.
2. Acknowledgement stays manual: `ack` sends the PUBACKs of messages whose effect is committed,
   in the order given ([MQTT-4.6.0-2]).
3. Answers are encoded here (QoS 1, MQTT 5 without properties: the device contract,
   docs/mqtt.md, uses none) and queued for paho's socket writer, in order, with a packet id
   from paho's generator that no message in flight holds. Each is done (`publish` returns, or
   `publish_nowait` calls back, without a task of its own) at the broker's PUBACK, matched
   here (other PUBACKs, of aiomqtt's own publishes, go to paho). The window of answers in
   flight (`window`, ``max_inflight_answers``) is kept here in O(1), not by paho (which
   rescans every message in flight on every PUBACK). Over the window, answers wait in a
   FIFO, so the broker gets them in the order they were published. PUBACK reason codes are
   not looked at (aiomqtt did not either): a refused answer is not retried.
4. When the session ends every waiting answer fails with `aiomqtt.MqttError`, and `next`
   raises it too, with the broker's reason as its cause.
5. Reads and writes are batched: one ``recv`` of up to 256 KiB, every whole packet in it
   handled in order (paho reads a byte per ``recv`` for the fixed header and one packet per
   readable event); the answers and PUBACKs queued in one turn of the event loop go out in
   one ``send``, in the order queued (paho sends each packet on its own).
6. All of it needs paho 2.x's internals (``_handle_publish``, ``_handle_pubackcomp``,
   ``_in_packet``, ``_out_messages``); `install` checks they are there and returns False
   otherwise, and the caller then uses aiomqtt's own path (slower, same behaviour).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

__all__ = [
    "Done",
    "Incoming",
    "MalformedPublishError",
    "SessionWire",
    "decode_publish",
    "encode_publish",
    "split_packets",
]

log = logging.getLogger("edge_agent.twins.mqtt_service")

_PUBLISH = 0x30
_MAX_REMAINING = 268_435_455
_PUBACK_COMMAND = 0x40
_PUBACK_HEADER = b"\x40\x02"  # PUBACK, remaining length 2: success, no properties [MQTT-3.4.2]
_READ_SIZE = 256 * 1024
"""Bytes read from the socket at once: every whole packet in them is handled in one go."""
_NO_CONN = MQTTErrorCode.MQTT_ERR_NO_CONN
_CONN_LOST = MQTTErrorCode.MQTT_ERR_CONN_LOST
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_PAHO_INTERNALS = (
    "_handle_publish",
    "_handle_pubackcomp",
    "_in_packet",
    "_out_messages",
    "_packet_queue",
    "_mid_generate",
    "_sock",
    "_out_packet",
    "_packet_handle",
    "_loop_rc_handle",
    "_msgtime_mutex",
    "_last_bytes_received",
    "_call_socket_register_write",
    "_protocol",
)


Done = Callable[[BaseException | None], None]
"""What `SessionWire.publish_nowait` calls once: None when the broker holds the message."""


class Incoming(NamedTuple):
    """One PUBLISH from the broker (rule 1)."""

    topic: str
    payload: bytes
    mid: int
    """Packet identifier; 0 for QoS 0."""
    qos: int
    retain: bool


class MalformedPublishError(ValueError):
    """A packet that does not parse (the broker sent garbage: the session ends)."""


def decode_publish(header: int, packet: bytes | bytearray, *, v5: bool) -> Incoming:
    """Decode a PUBLISH packet's variable header and payload; MQTT 5 properties are skipped.

    `packet` is everything after the fixed header's remaining length.
    """
    qos = (header >> 1) & 0x03
    size = len(packet)
    if size < 2:
        raise MalformedPublishError("PUBLISH shorter than its topic length")
    end = 2 + ((packet[0] << 8) | packet[1])
    if end > size:
        raise MalformedPublishError("PUBLISH topic longer than the packet")
    raw_topic = bytes(packet[2:end])
    mid = 0
    if qos:
        if end + 2 > size:
            raise MalformedPublishError("PUBLISH without its packet id")
        mid = (packet[end] << 8) | packet[end + 1]
        end += 2
    if v5:
        length, shift = 0, 0
        while True:  # Variable Byte Integer [MQTT-1.5.5], at most 4 bytes
            if end >= size or shift > 21:
                raise MalformedPublishError("PUBLISH property length malformed")
            byte = packet[end]
            end += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        end += length
        if end > size:
            raise MalformedPublishError("PUBLISH properties longer than the packet")
    # Invalid UTF-8 in a topic is a protocol error [MQTT-1.5.4-1]; mosquitto never forwards
    # one. Decoded with replacement it matches no topic of ours and is only acknowledged.
    topic = raw_topic.decode("utf-8", "replace")
    return Incoming(topic, bytes(packet[end:]), mid, qos, bool(header & 0x01))


def encode_publish(topic: str, payload: bytes, mid: int, *, retain: bool, v5: bool) -> bytes:
    """A QoS 1 PUBLISH packet ([MQTT-3.3.1]); MQTT 5 with an empty property block."""
    name = topic.encode()
    head = len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big")
    if v5:
        head += b"\x00"
    remaining = len(head) + len(payload)
    if remaining > _MAX_REMAINING:
        raise ValueError(f"PUBLISH of {remaining} bytes is over MQTT's limit")
    length = bytearray()
    while True:  # Variable Byte Integer [MQTT-1.5.5]
        byte = remaining & 0x7F
        remaining >>= 7
        length.append(byte | 0x80 if remaining else byte)
        if not remaining:
            break
    return bytes((_PUBLISH | 0x02 | retain,)) + length + head + payload


def split_packets(buffer: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The whole MQTT packets at the start of `buffer` and how many bytes they take.

    Each is its fixed header's first byte and what follows its remaining length; a packet
    not all there yet is left for the next read.
    """
    packets: list[tuple[int, bytes]] = []
    start, size = 0, len(buffer)
    while size - start >= 2:  # the smallest fixed header
        length, shift, index = 0, 0, start + 1
        while True:  # Variable Byte Integer [MQTT-1.5.5], at most 4 bytes
            if index >= size:
                return packets, start  # the rest of the header comes later
            byte = buffer[index]
            index += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MalformedPublishError("remaining length over 4 bytes")
        if index + length > size:
            break
        packets.append((buffer[start], bytes(buffer[index : index + length])))
        start = index + length
    return packets, start


def _fresh_packet() -> dict[str, Any]:
    """Paho's state of a packet not begun."""
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(b""),
        "to_process": 0,
        "pos": 0,
    }


class SessionWire:
    """Device messages in and answers out for one `aiomqtt.Client` (the rules above).

    Make it right after the client, `install` before connecting (the broker may send queued
    session messages at once), `attach` once connected. Used from the event loop's thread only,
    like aiomqtt's paho callbacks.
    """

    def __init__(self, client: aiomqtt.Client, *, max_queued: int, window: int) -> None:
        self._client = client
        self._paho: Any = client._client  # noqa: SLF001 - rule 6
        self._max_queued = max(1, max_queued)
        self._window = max(1, window)
        self._queue: collections.deque[Incoming] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._acks: dict[int, Done] = {}
        self._held: collections.deque[tuple[str, bytes, bool, Done]] = collections.deque()
        self._in_flight = 0
        self._closed: BaseException | None = None
        self._dropped = 0
        self._read = bytearray()
        self._out: list[bytes] = []

    @property
    def in_flight(self) -> int:
        """Answers published and not acknowledged by the broker yet (at most `window`)."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Answers waiting for room in the window."""
        return len(self._held)

    # ------------------------------------------------------------------ set-up

    def install(self) -> bool:
        """Take over paho's PUBLISH and PUBACK handling; False if paho lacks the internals."""
        client = self._paho
        if not all(hasattr(client, name) for name in _PAHO_INTERNALS):
            log.warning("paho-mqtt internals changed: the broker session uses aiomqtt's path")
            return False
        self._v5 = client._protocol == paho.MQTTv5  # noqa: SLF001
        self._paho_publish_handler: Callable[[], MQTTErrorCode] = client._handle_publish  # noqa: SLF001
        self._paho_puback_handler: Callable[[str], MQTTErrorCode] = client._handle_pubackcomp  # noqa: SLF001
        self._aiomqtt_on_publish: Callable[..., None] = client.on_publish
        client._handle_publish = self._handle_publish  # noqa: SLF001
        client._handle_pubackcomp = self._handle_pubackcomp  # noqa: SLF001
        client.loop_read = self._loop_read  # what aiomqtt's reader callback calls
        return True

    def attach(self) -> None:
        """The client is connected: end this wire when its session ends (rule 4)."""
        self._client._disconnected.add_done_callback(self._on_disconnected)  # noqa: SLF001

    # ------------------------------------------------------------------ incoming

    def __len__(self) -> int:
        """Messages received and not taken yet."""
        return len(self._queue)

    def take(self) -> Incoming:
        """The oldest message received (only when ``len(self)``)."""
        return self._queue.popleft()

    async def next(self) -> Incoming:
        """The next message; raises `aiomqtt.MqttError` once the session ended."""
        while not self._queue:
            if self._closed is not None:
                raise aiomqtt.MqttError("Disconnected during message iteration") from (
                    self._closed.__cause__
                )
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def ack(self, messages: Iterable[Incoming]) -> None:
        """Acknowledge `messages` to the broker, in this order (rule 2)."""
        client = self._paho
        if self._closed is not None:
            return  # the next session gets them again
        if not client._manual_ack:  # noqa: SLF001 - paho acknowledged them already
            return
        out = self._out
        if not out:
            asyncio.get_running_loop().call_soon(self._flush)
        out.extend(
            _PUBACK_HEADER + message.mid.to_bytes(2, "big")
            for message in messages
            if message.qos == 1
        )

    def _handle_publish(self) -> MQTTErrorCode:
        packet = self._paho._in_packet  # noqa: SLF001
        header = packet["command"]
        if (header >> 1) & 0x03 == 2:  # QoS 2: never subscribed at; paho's
            return self._paho_publish_handler()
        try:
            message = decode_publish(header, packet["packet"], v5=self._v5)
        except MalformedPublishError as error:
            log.warning("malformed PUBLISH from the broker (%s); ending the session", error)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        if len(self._queue) >= self._max_queued:
            self._dropped += 1
            log.warning(
                "%s device messages queued; dropped one (it comes again next session)",
                len(self._queue),
            )
            return _SUCCESS
        self._queue.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return _SUCCESS

    # ------------------------------------------------------------------ outgoing

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish at QoS 1 and return once the broker acknowledged it (rule 3)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(error: BaseException | None) -> None:
            if future.done():
                return  # the caller stopped waiting (cancelled)
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self.publish_nowait(topic, payload, retain=retain, done=done)
        await future

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool, done: Done) -> None:
        """Publish at QoS 1 without a task or a future of its own (rule 3).

        `done` is called once: with None when the broker acknowledged the message, or with
        an `aiomqtt.MqttError` when it cannot be (the session ended) — possibly before this
        returns. It runs inside the wire's packet handling: it must not raise.
        """
        if self._closed is not None:
            failure = aiomqtt.MqttError("the broker session ended")
            failure.__cause__ = self._closed.__cause__
            done(failure)
        elif self._in_flight >= self._window:
            self._held.append((topic, payload, retain, done))
        else:
            self._send(topic, payload, retain, done)

    def _send(self, topic: str, payload: bytes, retain: bool, done: Done) -> None:  # noqa: FBT001 - internal
        client = self._paho
        if client._sock is None:  # noqa: SLF001 - what paho's publish checks
            done(aiomqtt.MqttCodeError(MQTTErrorCode.MQTT_ERR_NO_CONN, "Could not publish message"))
            return
        mid = client._mid_generate()  # noqa: SLF001 - shared with aiomqtt's publishes
        while mid in self._acks or mid in client._out_messages:  # noqa: SLF001
            mid = client._mid_generate()  # noqa: SLF001
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(encode_publish(topic, payload, mid, retain=retain, v5=self._v5))
        self._in_flight += 1
        self._acks[mid] = done

    def _handle_pubackcomp(self, cmd: str) -> MQTTErrorCode:
        client = self._paho
        packet = client._in_packet["packet"]  # noqa: SLF001
        if cmd != "PUBACK" or len(packet) < 2:
            return self._paho_puback_handler(cmd)
        mid = (packet[0] << 8) | packet[1]
        done = self._acks.pop(mid, None)
        if done is None:
            # One of aiomqtt's own publishes (availability, claims): paho's bookkeeping.
            return self._paho_puback_handler(cmd)
        self._in_flight -= 1
        done(None)
        while self._held and self._in_flight < self._window:
            self._send(*self._held.popleft())
        return _SUCCESS

    def _flush(self) -> None:
        """Hand what `_send` and `ack` queued since the last flush to the socket, in order.

        One write for all of them (paho writes each packet with its own ``send``); what the
        socket does not take at once paho writes when it is writable again.
        """
        out, self._out = self._out, []
        client = self._paho
        if not out or client._sock is None:  # noqa: SLF001 - the session ended: nothing to send
            return
        data = b"".join(out)
        client._out_packet.append(  # noqa: SLF001
            {
                "command": _PUBACK_COMMAND,  # neither a QoS 0 PUBLISH nor a DISCONNECT for paho
                "mid": 0,
                "qos": 1,
                "pos": 0,
                "to_process": len(data),
                "packet": data,
                "info": None,
            }
        )
        client.loop_write()

    def _loop_read(self, max_packets: int = 1) -> MQTTErrorCode:  # noqa: ARG002 - paho's signature
        """Read what the socket has; handle every whole packet in it (rule 5)."""
        client = self._paho
        data = self._receive()
        if isinstance(data, MQTTErrorCode):
            return data if data in (_SUCCESS, _NO_CONN) else self._lost(data)
        buffer = self._read
        buffer += data
        try:
            packets, used = split_packets(buffer)
        except MalformedPublishError as error:
            log.warning("malformed packet from the broker: %s", error)
            return self._lost(MQTTErrorCode.MQTT_ERR_PROTOCOL)
        del buffer[:used]
        rc = _SUCCESS
        for command, packet in packets:
            client._in_packet = {  # noqa: SLF001 - what paho's handlers read
                "command": command,
                "have_remaining": 1,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": len(packet),
                "packet": packet,
                "to_process": 0,
                "pos": 0,
            }
            try:
                rc = client._packet_handle()  # noqa: SLF001
            except MalformedPacket as error:
                log.warning("malformed packet from the broker: %s", error)
                rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
            if rc or client._sock is None:  # noqa: SLF001 - the session ended meanwhile
                break
        client._in_packet = _fresh_packet()  # noqa: SLF001
        return self._lost(rc) if rc else _SUCCESS

    def _receive(self) -> bytes | MQTTErrorCode:
        client = self._paho
        sock = client._sock  # noqa: SLF001
        if sock is None:
            return _NO_CONN
        try:
            data: bytes = sock.recv(_READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError):
            return _SUCCESS
        except ssl.SSLWantWriteError:
            client._call_socket_register_write()  # noqa: SLF001
            return _SUCCESS
        except OSError as error:
            log.debug("broker socket: %s", error)
            return _CONN_LOST
        if not data:
            return _CONN_LOST
        with client._msgtime_mutex:  # noqa: SLF001 - paho's keepalive looks at it
            client._last_bytes_received = paho.time_func()  # noqa: SLF001
        return data

    def _lost(self, rc: MQTTErrorCode) -> MQTTErrorCode:
        result: MQTTErrorCode = self._paho._loop_rc_handle(rc)  # noqa: SLF001 - closes, reports
        return result

    # ------------------------------------------------------------------ end

    def _on_disconnected(self, gone: asyncio.Future[None]) -> None:
        cause = None if gone.cancelled() else gone.exception()
        error = aiomqtt.MqttError("the broker session ended")
        error.__cause__ = cause
        self._closed = error
        pending = [*self._acks.values(), *(held[3] for held in self._held)]
        self._acks.clear()
        self._held.clear()
        for done in pending:
            failure = aiomqtt.MqttError("the broker session ended")
            failure.__cause__ = cause
            done(failure)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
