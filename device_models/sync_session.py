"""The twin sync session, sans-IO: one state machine for both ends of the ``twins`` stream.

Theory of operation (docs/twins.md, "The sync stream", has the message table):

1. The edge agent opens one ``twins`` stream per tunnel session; `SyncSession(Role.EDGE)`
   is its end, `SyncSession(Role.CLOUD)` the tunnel server's. A driver feeds the bytes it
   reads to `receive_data` and gets events back; it hands events to `send` and writes the
   bytes it gets back, in the order it got them. The session never blocks, sleeps or reads
   a clock: timeouts, retries and storage belong to the drivers (edge_agent/twin_link.py,
   tunnel_server/twins/sync.py).
2. Handshake. The edge speaks first: `Hello` (protocol version, its origin, its downlink
   window); the cloud answers `Welcome` (version, its origin). Nothing else may cross before.
   The cloud refuses another version, an origin that is not a string and a window outside
   1..`MAX_WINDOW`; the edge refuses a welcome of another version. The window in force is the
   smaller of the edge's and the cloud's own (`window`).
3. Uplink: the edge sends `Batch`es of outbox records (`batch_messages` splits a list under the
   message cap, ids increasing from 1); the cloud answers each with `BatchAck` (committed) or
   `BatchError` (not stored, retry). An answer naming no batch in flight is dropped: it can
   only be a stray, and the outbox retries whatever was not acknowledged. A batch holds a
   non-empty list of at most `max_batch_records` records. The edge may give up waiting
   (`abandon_batches`); a late answer to such a batch is dropped too.
4. Downlink: the cloud sends `Change`s and `Command`s (a device's move), each with an integer
   id, at most ``window`` in flight (sent, not yet acknowledged); `room` says how many more
   may go. The edge answers each with `Ack` whose result is one of `ACK_RESULTS`. An ack must
   name a change in flight; more than ``window`` in flight is the cloud's violation.
5. The end: `receive_data(b"")` is the peer's end of the stream. It is clean (`StreamEnded`)
   only after the handshake and between messages.
6. Errors: what the peer did wrong raises `RemoteProtocolError` (the driver resets the stream
   with its text); what our own side tried wrong raises `LocalProtocolError`. A session that
   raised either is broken and refuses further use. Framing and bounds are
   device_models.sync_wire's (a `WireError` while decoding becomes a `RemoteProtocolError`).

All transitions live in this file; the tables `_SENDS` and `_RECEIVES` list which message
each role may send and receive in each state.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeGuard

from device_models._sync import Role
from device_models.sync_wire import PROTOCOL_VERSION, Decoder, WireError, encode, encode_frame

__all__ = [
    "ACK_RESULTS",
    "MAX_WINDOW",
    "Ack",
    "Batch",
    "BatchAck",
    "BatchError",
    "Change",
    "Command",
    "Event",
    "Hello",
    "LocalProtocolError",
    "RemoteProtocolError",
    "StreamEnded",
    "SyncProtocolError",
    "SyncSession",
    "Welcome",
    "batch_messages",
]

MAX_WINDOW = 1024
"""Largest downlink window a hello may ask for."""

ACK_RESULTS = frozenset({"applied", "duplicate", "rejected", "failed", "retry"})

_BATCH_OVERHEAD = 64
"""Bytes of the ``batch`` envelope around the records, with room for the id."""


class SyncProtocolError(Exception):
    """The sync protocol was broken; the text says how (and goes into the stream's reset)."""


class LocalProtocolError(SyncProtocolError):
    """Our own side tried something the protocol does not allow (a bug, or a record too big)."""


class RemoteProtocolError(SyncProtocolError):
    """The peer broke the protocol; reset the stream with this text."""


# ---------------------------------------------------------------------- events


@dataclass(frozen=True, kw_only=True)
class Hello:
    origin: str
    window: int
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, kw_only=True)
class Welcome:
    origin: str
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, kw_only=True)
class Batch:
    id: int
    records: list[dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class BatchAck:
    id: int
    body: dict[str, Any] = field(default_factory=dict)
    """What the cloud says of the records (counts, dead letters), beside the id."""


@dataclass(frozen=True, kw_only=True)
class BatchError:
    id: int
    error: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Change:
    id: int
    body: dict[str, Any] = field(default_factory=dict)
    """The change's fields beside type and id (device, change)."""


@dataclass(frozen=True, kw_only=True)
class Command:
    id: int
    body: dict[str, Any] = field(default_factory=dict)
    """The command's fields beside type and id (device, command)."""


@dataclass(frozen=True, kw_only=True)
class Ack:
    id: int
    result: str
    body: dict[str, Any] = field(default_factory=dict)
    """The rest of the answer: version, or error and message."""


@dataclass(frozen=True)
class StreamEnded:
    """The peer ended the stream cleanly."""


Event = Hello | Welcome | Batch | BatchAck | BatchError | Change | Command | Ack | StreamEnded

_TYPES: dict[type[Event], str] = {
    Hello: "hello",
    Welcome: "welcome",
    Batch: "batch",
    BatchAck: "batch-ack",
    BatchError: "batch-error",
    Change: "change",
    Command: "command",
    Ack: "ack",
}


# ---------------------------------------------------------------------- states


class State(Enum):
    IDLE = "idle"  # edge: nothing sent yet
    AWAIT_WELCOME = "await-welcome"  # edge: hello sent
    AWAIT_HELLO = "await-hello"  # cloud: nothing received yet
    HELLO_RECEIVED = "hello-received"  # cloud: the welcome is ours to send
    OPEN = "open"
    CLOSED = "closed"  # the peer ended the stream
    BROKEN = "broken"  # a protocol error was raised


_SENDS: dict[tuple[Role, State], dict[str, State]] = {
    (Role.EDGE, State.IDLE): {"hello": State.AWAIT_WELCOME},
    (Role.EDGE, State.OPEN): {"batch": State.OPEN, "ack": State.OPEN},
    (Role.CLOUD, State.HELLO_RECEIVED): {"welcome": State.OPEN},
    (Role.CLOUD, State.OPEN): {
        "batch-ack": State.OPEN,
        "batch-error": State.OPEN,
        "change": State.OPEN,
        "command": State.OPEN,
    },
}

_RECEIVES: dict[tuple[Role, State], dict[str, State]] = {
    (Role.EDGE, State.AWAIT_WELCOME): {"welcome": State.OPEN},
    (Role.EDGE, State.OPEN): {
        "batch-ack": State.OPEN,
        "batch-error": State.OPEN,
        "change": State.OPEN,
        "command": State.OPEN,
    },
    (Role.CLOUD, State.AWAIT_HELLO): {"hello": State.HELLO_RECEIVED},
    (Role.CLOUD, State.OPEN): {"batch": State.OPEN, "ack": State.OPEN},
}

# What is wrong with a message that may not come yet, by the state the receiver is in.
_TOO_EARLY = {
    State.AWAIT_WELCOME: "the cloud did not answer the hello with a welcome",
    State.AWAIT_HELLO: "the first message must be a hello",
}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def batch_messages(
    records: list[dict[str, Any]], *, first_id: int, max_bytes: int
) -> list[tuple[int, bytes]]:
    """`records` as framed ``batch`` messages of at most `max_bytes` each, ids from `first_id`.

    A record too large for a message on its own raises LocalProtocolError (the twin limits
    keep every record far below the default cap).
    """
    encoded = [
        json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        for record in records
    ]
    frames: list[tuple[int, bytes]] = []
    group: list[bytes] = []
    size = 0

    def flush() -> None:
        batch_id = first_id + len(frames)
        body = b'{"type":"batch","id":%d,"records":[%s]}' % (batch_id, b",".join(group))
        frames.append((batch_id, encode_frame(body, max_bytes=max_bytes)))

    for data in encoded:
        if len(data) + _BATCH_OVERHEAD > max_bytes:
            raise LocalProtocolError(
                f"an outbox record of {len(data)} bytes exceeds the message cap"
            )
        if group and size + len(data) + 1 + _BATCH_OVERHEAD > max_bytes:
            flush()
            group, size = [], 0
        group.append(data)
        size += len(data) + 1
    if group:
        flush()
    return frames


# ---------------------------------------------------------------------- the session


class SyncSession:
    """One end of one ``twins`` stream; `role` says which."""

    def __init__(
        self,
        role: Role,
        *,
        max_message_bytes: int,
        max_depth: int,
        window: int,
        max_batch_records: int = 1024,
    ) -> None:
        """`window`: the edge's downlink window (sent in the hello) or the cloud's own ceiling.

        `max_batch_records` bounds what a cloud accepts in one batch.
        """
        self.role = role
        self.state = State.IDLE if role is Role.EDGE else State.AWAIT_HELLO
        self._max_bytes = max_message_bytes
        self._decoder = Decoder(max_bytes=max_message_bytes, max_depth=max_depth)
        self._max_batch_records = max_batch_records
        self.window = window
        """Downlink changes in flight at most; after the handshake, the one in force."""
        self.peer_origin = ""
        """The other end's origin, known once the handshake got to it."""
        self._next_batch = 1
        self._batches: set[int] = set()  # edge: sent, unanswered; cloud: received, unanswered
        self._downlink: Counter[int] = Counter()  # change/command ids sent, not yet acked

    # ------------------------------------------------------------------ queries

    @property
    def open(self) -> bool:
        return self.state is State.OPEN

    @property
    def in_flight(self) -> int:
        """Downlink changes and commands sent and not yet acknowledged."""
        return self._downlink.total()

    @property
    def room(self) -> int:
        """How many more changes the cloud may send now."""
        return max(0, self.window - self.in_flight)

    @property
    def batches_in_flight(self) -> frozenset[int]:
        return frozenset(self._batches)

    # ------------------------------------------------------------------ sending

    def send(self, event: Event) -> bytes:
        """The bytes of `event`, to write to the stream now; LocalProtocolError if not allowed."""
        if isinstance(event, StreamEnded):
            raise LocalProtocolError("end the stream in the driver, not through send")
        kind = _TYPES[type(event)]
        next_state = self._transition(_SENDS, kind, LocalProtocolError, f"cannot send {kind}")
        try:
            self._check_send(event)
            data = encode(_to_message(event), max_bytes=self._max_bytes)
        except WireError as error:
            self.state = State.BROKEN
            raise LocalProtocolError(str(error)) from None
        except LocalProtocolError:
            self.state = State.BROKEN
            raise
        self._sent(event)
        self.state = next_state
        return data

    def send_batches(self, records: list[dict[str, Any]]) -> list[tuple[int, bytes]]:
        """`records` as one or more `Batch`es under the message cap: (id, bytes) each."""
        self._transition(_SENDS, "batch", LocalProtocolError, "cannot send batch")
        frames = batch_messages(records, first_id=self._next_batch, max_bytes=self._max_bytes)
        for batch_id, _ in frames:
            self._batches.add(batch_id)
        self._next_batch += len(frames)
        return frames

    def abandon_batches(self, batch_ids: Iterable[int]) -> None:
        """The edge gave up waiting for these batches' answers; a late one is dropped."""
        self._batches.difference_update(batch_ids)

    def _check_send(self, event: Event) -> None:
        match event:
            case Hello(window=window) if not 1 <= window <= MAX_WINDOW:
                raise LocalProtocolError(f"window must be in 1..{MAX_WINDOW}")
            case Batch():
                raise LocalProtocolError("send batches with send_batches")
            case BatchAck(id=batch_id) | BatchError(id=batch_id) if batch_id not in self._batches:
                raise LocalProtocolError(f"batch {batch_id} is not waiting for an answer")
            case Change() | Command() if self.room <= 0:
                raise LocalProtocolError(f"{self.window} changes are in flight already")
            case Ack(id=row_id) if self._downlink[row_id] <= 0:
                raise LocalProtocolError(f"change {row_id} is not in flight")
            case Ack(result=result) if result not in ACK_RESULTS:
                raise LocalProtocolError(
                    f"ack result {result!r} is not one of {sorted(ACK_RESULTS)}"
                )
            case _:
                pass

    def _sent(self, event: Event) -> None:
        match event:
            case Hello(window=window):
                self.window = window
            case BatchAck(id=batch_id) | BatchError(id=batch_id):
                self._batches.discard(batch_id)
            case Change(id=row_id) | Command(id=row_id):
                self._downlink[row_id] += 1
            case Ack(id=row_id):
                self._release(row_id)
            case _:
                pass

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> list[Event]:
        """The events `data` completes (maybe none); b"" is the end of the stream.

        RemoteProtocolError when the peer broke the protocol.
        """
        if self.state is State.BROKEN:
            raise LocalProtocolError("the session is broken")
        if self.state is State.CLOSED:
            raise LocalProtocolError("the stream has ended")
        try:
            if not data:
                return [self._ended()]
            try:
                messages = self._decoder.feed(data)
            except WireError as error:
                raise RemoteProtocolError(str(error)) from None
            events = (self._received(message) for message in messages)
            return [event for event in events if event is not None]
        except RemoteProtocolError:
            self.state = State.BROKEN
            raise

    def _ended(self) -> StreamEnded:
        if self._decoder.buffered:
            raise RemoteProtocolError("the stream ended inside a message")
        if self.state in _TOO_EARLY:
            raise RemoteProtocolError(_TOO_EARLY[self.state])
        self.state = State.CLOSED
        return StreamEnded()

    def _received(self, message: dict[str, Any]) -> Event | None:
        kind: str = message["type"]
        early = _TOO_EARLY.get(self.state)
        next_state = self._transition(
            _RECEIVES, kind, RemoteProtocolError, early or f"unexpected message type {kind[:32]!r}"
        )
        event = self._parse(kind, message)
        self.state = next_state
        return event

    def _parse(self, kind: str, message: dict[str, Any]) -> Event | None:
        match kind:
            case "hello":
                return self._hello(message)
            case "welcome":
                return self._welcome(message)
            case "batch":
                return self._batch(message)
            case "batch-ack" | "batch-error":
                return self._batch_answer(kind, message)
            case "change" | "command":
                return self._downlink_message(kind, message)
            case _:  # "ack": the tables let nothing else through
                return self._ack(message)

    def _hello(self, message: dict[str, Any]) -> Hello:
        version = message.get("version")
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"protocol version {str(version)[:16]} is not supported (this cloud speaks "
                f"{PROTOCOL_VERSION})"
            )
        origin, window = message.get("origin"), message.get("window")
        if not isinstance(origin, str):
            raise RemoteProtocolError("hello needs the agent's origin")
        if not _is_int(window) or not 1 <= window <= MAX_WINDOW:
            raise RemoteProtocolError(f"window must be an integer in 1..{MAX_WINDOW}")
        self.peer_origin = origin
        self.window = min(window, self.window)
        return Hello(origin=origin, window=window, version=PROTOCOL_VERSION)

    def _welcome(self, message: dict[str, Any]) -> Welcome:
        version = message.get("version")
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"the cloud speaks version {version}")
        self.peer_origin = str(message.get("origin", ""))[:160]
        return Welcome(origin=self.peer_origin, version=PROTOCOL_VERSION)

    def _batch(self, message: dict[str, Any]) -> Batch:
        batch_id, records = message.get("id"), message.get("records")
        if not _is_int(batch_id):
            raise RemoteProtocolError("a batch needs an integer id")
        if not isinstance(records, list) or not records:
            raise RemoteProtocolError("a batch needs a non-empty list of records")
        if len(records) > self._max_batch_records:
            raise RemoteProtocolError(f"a batch holds at most {self._max_batch_records} records")
        self._batches.add(batch_id)
        return Batch(id=batch_id, records=records)

    def _batch_answer(self, kind: str, message: dict[str, Any]) -> Event | None:
        batch_id = message.get("id")
        if not _is_int(batch_id) or batch_id not in self._batches:
            return None  # a stray answer: dropped (rule 3)
        self._batches.discard(batch_id)
        if kind == "batch-error":
            error, text = message.get("error", ""), message.get("message", "")
            return BatchError(id=batch_id, error=str(error), message=str(text))
        body = {key: value for key, value in message.items() if key not in ("type", "id")}
        return BatchAck(id=batch_id, body=body)

    def _downlink_message(self, kind: str, message: dict[str, Any]) -> Change | Command:
        row_id = message.get("id")
        if not _is_int(row_id):
            raise RemoteProtocolError(f"a {kind} needs an integer id")
        if self.in_flight >= self.window:
            raise RemoteProtocolError(f"the cloud sent more than {self.window} changes in flight")
        self._downlink[row_id] += 1
        body = {key: value for key, value in message.items() if key not in ("type", "id")}
        return Command(id=row_id, body=body) if kind == "command" else Change(id=row_id, body=body)

    def _ack(self, message: dict[str, Any]) -> Ack:
        row_id, result = message.get("id"), message.get("result")
        if not _is_int(row_id) or self._downlink[row_id] <= 0:
            raise RemoteProtocolError("an ack must name a change in flight")
        if result not in ACK_RESULTS:
            raise RemoteProtocolError(
                "ack result must be applied, duplicate, rejected, failed or retry"
            )
        self._release(row_id)
        body = {key: value for key, value in message.items() if key not in ("type", "id", "result")}
        return Ack(id=row_id, result=result, body=body)

    # ------------------------------------------------------------------ helpers

    def _transition(
        self,
        table: dict[tuple[Role, State], dict[str, State]],
        kind: str,
        error: type[SyncProtocolError],
        text: str,
    ) -> State:
        if self.state is State.BROKEN:
            raise LocalProtocolError("the session is broken")
        allowed = table.get((self.role, self.state), {})
        if kind not in allowed:
            if error is LocalProtocolError:
                text = f"{text} as {self.role} in state {self.state.value}"
            raise error(text)
        return allowed[kind]

    def _release(self, row_id: int) -> None:
        self._downlink[row_id] -= 1
        if self._downlink[row_id] <= 0:
            del self._downlink[row_id]


def _to_message(event: Event) -> dict[str, Any]:
    kind = _TYPES[type(event)]
    match event:
        case Hello(origin=origin, window=window, version=version):
            return {"type": kind, "version": version, "origin": origin, "window": window}
        case Welcome(origin=origin, version=version):
            return {"type": kind, "version": version, "origin": origin}
        case BatchError(id=batch_id, error=error, message=text):
            return {"type": kind, "id": batch_id, "error": error, "message": text}
        case Ack(id=row_id, result=result, body=body):
            return {"type": kind, "id": row_id, "result": result, **body}
        case (
            BatchAck(id=item_id, body=body)
            | Change(id=item_id, body=body)
            | Command(id=item_id, body=body)
        ):
            return {"type": kind, "id": item_id, **body}
        case _:
            raise LocalProtocolError(f"cannot send {kind}")
