"""One tunnel session: the multiplexer both ends run over one WebSocket. Sans-IO.

The glue code owns the WebSocket and the clock, and drives a session like this::

    session = TunnelSession(Role.CLIENT, now=loop.time())
    # for every binary WebSocket message:
    session.receive_message(data, now=loop.time())
    for event in session.events(): ...                  # route to stream tasks
    for message in session.messages_to_send(): await ws.send_bytes(message)
    # and at session.next_deadline():
    session.handle_timeout(loop.time())

API calls (``open_stream``, ``send_data``...) queue messages and may queue events too, so the
glue drains both after every call, not only after ``receive_message``.

Failure policy: ``receive_message`` never raises. Bad bytes that break a *stream* rule reset
that stream (RESET to the peer, ``StreamReset`` + ``StreamClosed`` here). Bad bytes that break a
*connection* rule queue a final GO_AWAY, end every stream, and emit ``SessionTerminated``; the
error is kept in ``session.error``. API misuse raises ``LocalProtocolError`` and changes
nothing. Streams are forgotten when they close, and late frames for forgotten streams are
dropped, so memory depends on the number of live streams, never on the session's age.

Work is bounded too: the stream cap bounds the streams the peer holds at once, and the budget
of ``stream_budget.py`` bounds the streams it may open for nothing (OPEN then RESET, or opens
we refuse): an OPEN while that budget is overdrawn is a connection error, ENHANCE_YOUR_CALM.
Frames we owe the peer as answers (PONG for its PING, REJECT for an OPEN while we drain) are
bounded by ``MAX_QUEUED_REPLIES``: more of them waiting for the glue to take them means the peer
sends faster than it reads (the HTTP/2 "ping flood", CVE-2019-9512), and is ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

import enum

from tunnel_protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    StreamClosedError,
)
from tunnel_protocol.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    HandshakeComplete,
    PeerSettings,
    PongReceived,
    SendCapacityAvailable,
    SessionTerminated,
    StreamAccepted,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
)
from tunnel_protocol.flow_control import ReceiveWindow, SendCredit
from tunnel_protocol.frames import (
    EXTENSION_EARLY_DATA,
    MAX_STREAM_ID,
    PING_PAYLOAD_SIZE,
    UNNEGOTIATED_VERSION,
    Accept,
    Data,
    Fin,
    Frame,
    GoAway,
    Hello,
    Open,
    Ping,
    Pong,
    Reject,
    Reset,
    WindowUpdate,
    decode_frame,
    encode_data,
    encode_frame,
    split_frames,
    truncate_text,
)
from tunnel_protocol.settings import TunnelSettings
from tunnel_protocol.stream_budget import StreamBudget
from tunnel_protocol.stream_state import (
    UNANSWERED,
    StreamInput,
    StreamState,
    StreamStateMachine,
)

__all__ = ["MAX_OUTSTANDING_PINGS", "MAX_QUEUED_REPLIES", "Role", "SessionState", "TunnelSession"]

MAX_OUTSTANDING_PINGS = 8
"""Unanswered PINGs we remember; older ones are forgotten so a silent peer costs no memory."""

MAX_QUEUED_REPLIES = 10_000
"""Answers (PONG, REJECT while draining) queued since the glue last took the messages to send.
The glue takes them whenever its writer is free, so only a peer that keeps sending while it
does not read our answers (the writer is stuck behind a full socket) piles them up; without a
cap each of its 17-byte PINGs would cost us memory for ever. 10,000 is Go's HTTP/2 limit on
queued control frames: far above any legitimate burst, ~170 KiB of answers at most."""


_OPENING_LOCAL = frozenset({StreamState.OPENING_LOCAL, StreamState.OPENING_LOCAL_ENDED})


class Role(enum.Enum):
    """Which end of the tunnel this is; it fixes the parity of the stream ids we allocate."""

    CLIENT = "client"
    """The edge agent, which dials out: odd stream ids."""
    SERVER = "server"
    """The cloud tunnel server: even stream ids."""

    @property
    def first_stream_id(self) -> int:
        return 1 if self is Role.CLIENT else 2


class SessionState(enum.Enum):
    HANDSHAKING = "HANDSHAKING"
    """Our HELLO is queued; the peer's has not arrived. No stream operations yet."""
    OPEN = "OPEN"
    """Streams may be opened both ways."""
    DRAINING = "DRAINING"
    """A GO_AWAY went one way or the other: no new streams, live ones finish."""
    TERMINATED = "TERMINATED"
    """Over: nothing is accepted or sent any more."""


class _Stream:
    __slots__ = ("credit", "machine", "productive", "stream_id", "window")

    def __init__(
        self, stream_id: int, send_credit: int, receive_window: int, *, early_data: bool
    ) -> None:
        self.stream_id = stream_id
        self.machine = StreamStateMachine(early_data=early_data)
        self.credit = SendCredit(send_credit)
        self.window = ReceiveWindow(receive_window)
        self.productive = False
        """DATA crossed the stream either way after ACCEPT (early data counts once the
        stream is accepted, never on a refused one), or both ends closed it with FIN."""


class TunnelSession:
    """One end of a multiplexed tunnel session. See the module docstring for how to drive it."""

    def __init__(self, role: Role, *, now: float, settings: TunnelSettings | None = None) -> None:
        self._role = role
        self._settings = settings or TunnelSettings()
        self._state = SessionState.HANDSHAKING
        self._version: int | None = None
        self._peer: PeerSettings | None = None
        self._early_data = False
        self._error: RemoteProtocolError | None = None
        self._streams: dict[int, _Stream] = {}
        self._local_count = 0
        self._next_local_id = role.first_stream_id
        self._highest_peer_id = 0
        self._go_away_sent = False
        self._go_away_received = False
        self._drain_code = ErrorCode.NO_ERROR
        self._outbox: list[bytes] = []
        self._queued_replies = 0
        self._events: list[Event] = []
        self._clock = now
        self._started_at = now
        self._last_received = now
        self._received_since_tick = False
        self._last_ping_sent = now
        self._pings: dict[bytes, float] = {}
        self._ping_counter = 0
        self._budget = StreamBudget(
            burst=self._settings.unproductive_stream_burst,
            rate=self._settings.unproductive_stream_rate,
            now=now,
        )
        self._send(self._hello())

    # ------------------------------------------------------------------ properties

    @property
    def role(self) -> Role:
        return self._role

    @property
    def settings(self) -> TunnelSettings:
        return self._settings

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def version(self) -> int | None:
        """The negotiated protocol version, once the handshake is complete."""
        return self._version

    @property
    def peer_settings(self) -> PeerSettings | None:
        return self._peer

    @property
    def early_data(self) -> bool:
        """Whether both HELLOs offered early data.

        Then ``send_data`` and ``end_stream`` may follow ``open_stream`` before the peer
        accepts, and the peer may do the same to us.
        """
        return self._early_data

    @property
    def error(self) -> RemoteProtocolError | None:
        """The peer's violation that terminated the session, if one did."""
        return self._error

    @property
    def open_streams_count(self) -> int:
        """Live streams (any state but CLOSED), both directions: a leak check for glue code."""
        return len(self._streams)

    @property
    def total_buffered_bytes(self) -> int:
        """Bytes handed to the application in ``DataReceived`` and not yet acknowledged."""
        return sum(stream.window.unacknowledged for stream in self._streams.values())

    @property
    def can_open_stream(self) -> bool:
        """Whether ``open_stream`` would succeed now.

        That is: handshake done, not draining, under the peer's stream cap.
        """
        return (
            self._state is SessionState.OPEN
            and self._peer is not None
            and self._local_count < self._peer.max_concurrent_streams
            and self._next_local_id <= MAX_STREAM_ID
        )

    def stream_state(self, stream_id: int) -> StreamState:
        """State of a stream; CLOSED for a forgotten one, IDLE for one never opened."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream.machine.state
        return StreamState.IDLE if self._is_idle(stream_id) else StreamState.CLOSED

    def buffered_bytes(self, stream_id: int) -> int:
        """Bytes received on the stream and not yet acknowledged (0 once it is closed)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.window.unacknowledged

    def send_capacity(self, stream_id: int) -> int:
        """Bytes ``send_data`` would accept now (0 if the stream cannot send)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.machine.can_send:
            return 0
        return stream.credit.available

    # ------------------------------------------------------------------ driver API

    def events(self) -> list[Event]:
        """Take the events that happened since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    @property
    def has_messages_to_send(self) -> bool:
        """Whether ``messages_to_send`` would return anything: the glue's cue to wake its writer."""
        return bool(self._outbox)

    def messages_to_send(self) -> list[bytes]:
        """Take the queued WebSocket binary messages, in the order they must be sent."""
        messages, self._outbox = self._outbox, []
        self._queued_replies = 0
        return messages

    def next_deadline(self) -> float | None:
        """When ``handle_timeout`` must next be called (caller's monotonic clock), or None."""
        if self._state is SessionState.TERMINATED:
            return None
        if self._state is SessionState.HANDSHAKING:
            return self._started_at + self._settings.handshake_timeout
        return min(
            self._last_ping_sent + self._settings.ping_interval,
            self._last_received + self._settings.ping_timeout,
        )

    def handle_timeout(self, now: float) -> None:
        """Run the timers: handshake timeout, keepalive PING, keepalive timeout."""
        if self._state is SessionState.TERMINATED:
            return
        self._tick(now)
        if self._state is SessionState.HANDSHAKING:
            if now >= self._started_at + self._settings.handshake_timeout:
                self._terminate(ErrorCode.HANDSHAKE_TIMEOUT, "no HELLO from the peer in time")
        elif now >= self._last_received + self._settings.ping_timeout:
            silence = now - self._last_received
            self._terminate(ErrorCode.KEEPALIVE_TIMEOUT, f"peer silent for {silence:.1f} s")
        elif now >= self._last_ping_sent + self._settings.ping_interval:
            if (
                self._role is Role.SERVER
                and now < self._last_received + self._settings.ping_interval
            ):
                # The agent pings on its own schedule (it wants the RTT and keeps its NAT
                # mapping alive); having heard from it recently, the server need not add a
                # ping of its own. With thousands of idle agents this halves keepalive work.
                self._last_ping_sent = now
            else:
                self._send_ping(now)

    def receive_message(self, data: bytes, *, now: float | None = None) -> None:
        """Process one WebSocket binary message from the peer. Never raises.

        Pass ``now`` (monotonic seconds) for exact RTTs and liveness; without it the session
        uses the time of the next ``handle_timeout`` call, which is coarser but safe.
        """
        if self._state is SessionState.TERMINATED:
            return
        if now is None:
            self._received_since_tick = True
        else:
            self._tick(now)
            self._last_received = self._clock
        try:
            for piece in split_frames(data):
                version, frame = decode_frame(
                    piece, max_data_payload=self._settings.max_frame_payload
                )
                self._check_version(version, frame)
                self._dispatch(frame)
                if self.state is SessionState.TERMINATED:
                    break  # a GO_AWAY FINAL (or a violation) ends the session mid-message
        except RemoteProtocolError as exc:
            self._error = exc
            self._terminate(exc.code, str(exc))

    # ------------------------------------------------------------------ stream API

    def open_stream(self, target: str) -> int:
        """Ask the peer for a stream to ``target``; return its id.

        Wait for ``StreamAccepted`` (or ``StreamRejected``) before sending data, unless
        ``early_data``: then ``send_data`` (within the initial credit) and ``end_stream`` may
        follow at once; a ``StreamRejected`` then means the peer dropped those bytes unread.
        """
        self._require_running()
        if self._state is SessionState.DRAINING:
            raise LocalProtocolError("session is draining", code=ErrorCode.REFUSED_STREAM)
        if not self.can_open_stream:
            raise LocalProtocolError(
                "the peer's stream cap is reached or stream ids are exhausted",
                code=ErrorCode.REFUSED_STREAM,
            )
        stream_id = self._next_local_id
        frame = Open(stream_id, target)  # validates the target before any state changes
        stream = self._new_stream(stream_id)
        stream.machine.process(StreamInput.SEND_OPEN)
        self._next_local_id += 2
        self._local_count += 1
        self._send(frame)
        return stream_id

    def accept(self, stream_id: int) -> None:
        stream = self._local_stream(stream_id)
        stream.machine.process(StreamInput.SEND_ACCEPT)
        self._send(Accept(stream_id))
        window = stream.window
        if window.remaining < window.size:
            # Early data came with the OPEN: it crosses an accepted stream now, so it counts
            # as productive; credit for what the application already read goes back now.
            stream.productive = True
            increment = window.acknowledge(0)
            if increment and stream.machine.can_receive:
                self._send(WindowUpdate(stream_id, increment))

    def reject(self, stream_id: int, code: ErrorCode, text: str = "") -> None:
        """Refuse a stream the peer opened. A no-op if the stream is already gone."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.machine.process(StreamInput.SEND_REJECT)
        self._send(Reject(stream_id, code, truncate_text(text)))
        self._forget(stream)

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Send as much of ``data`` as the peer's credit allows; return how many bytes it took.

        On a short count, wait for ``SendCapacityAvailable`` and send the rest then.
        """
        stream = self._local_stream(stream_id)
        stream.machine.process(StreamInput.SEND_DATA)
        view = memoryview(data)
        taken = min(len(view), stream.credit.available)
        if not taken:
            return 0
        stream.credit.consume(taken)
        stream.productive = True
        # The hot path of bulk transfers: each frame is built with one copy of its slice of
        # ``data`` (no ``bytes`` slice, no frame object, no header + payload concatenation).
        version = self._version if self._version is not None else UNNEGOTIATED_VERSION
        size = self._peer.max_frame_payload if self._peer is not None else taken
        outbox = self._outbox
        for start in range(0, taken, size):
            outbox.append(
                encode_data(stream_id, view[start : min(start + size, taken)], version=version)
            )
        return taken

    def acknowledge(self, stream_id: int, n: int) -> None:
        """The application consumed ``n`` received bytes: give that credit back, batched.

        A no-op on a closed stream, since a reset may race the application.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.machine.state in UNANSWERED:
            # Early data read before we answered: no WINDOW_UPDATE may precede the ACCEPT,
            # so the credit waits (``accept`` sends it; a REJECT drops it with the stream).
            stream.window.acknowledge(n, defer=True)
            return
        increment = stream.window.acknowledge(n)
        if increment and stream.machine.can_receive:
            stream.machine.process(StreamInput.SEND_WINDOW_UPDATE)
            self._send(WindowUpdate(stream_id, increment))

    def end_stream(self, stream_id: int) -> None:
        """Half-close: send FIN. We keep receiving until the peer ends too."""
        stream = self._local_stream(stream_id)
        new_state = stream.machine.process(StreamInput.SEND_FIN)
        self._send(Fin(stream_id))
        if new_state is StreamState.CLOSED:
            stream.productive = True  # both ends finished: a stream that did its job
            self._forget(stream)

    def reset_stream(
        self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL, text: str = ""
    ) -> None:
        """Abort the stream both ways. A no-op if it is already gone."""
        stream = self._streams.get(stream_id)
        if stream is None or self._state is SessionState.TERMINATED:
            return
        stream.machine.process(StreamInput.SEND_RESET)
        self._send(Reset(stream_id, code, truncate_text(text)))
        self._forget(stream)

    # ------------------------------------------------------------------ session API

    def ping(self, now: float) -> bytes:
        """Send a PING; a ``PongReceived`` with the same opaque bytes reports the RTT."""
        self._require_running()
        self._tick(now)
        return self._send_ping(now)

    def go_away(self, code: ErrorCode = ErrorCode.NO_ERROR, text: str = "") -> None:
        """Drain: refuse new streams both ways, let live ones finish, then terminate."""
        self._require_running()
        if self._go_away_sent:
            return
        self._go_away_sent = True
        self._send(GoAway(self._highest_peer_id, code, truncate_text(text)))
        self._start_draining(code)

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, text: str = "closed") -> None:
        """Terminate now: tell the peer (final GO_AWAY) and end every stream.

        Idempotent; also what the glue calls when the WebSocket is lost.
        """
        if self._state is not SessionState.TERMINATED:
            self._terminate(code, text)

    # ------------------------------------------------------------------ receiving

    def _check_version(self, version: int, frame: Frame) -> None:
        expected: set[int | None]
        if isinstance(frame, Hello):
            expected = {UNNEGOTIATED_VERSION}
        elif isinstance(frame, GoAway):
            expected = {UNNEGOTIATED_VERSION, self._version}
        elif self._version is None:
            raise RemoteProtocolError(f"{frame.frame_type.name} before HELLO")
        else:
            expected = {self._version}
        if version not in expected:
            raise RemoteProtocolError(f"frame version {version}, expected one of {expected}")

    def _dispatch(self, frame: Frame) -> None:
        match frame:
            case Hello():
                self._on_hello(frame)
            case Ping():
                self._reply(Pong(frame.opaque))
            case Pong():
                self._on_pong(frame)
            case GoAway():
                self._on_go_away(frame)
            case Open():
                self._on_open(frame)
            case _:
                self._on_stream_frame(frame)

    def _on_hello(self, frame: Hello) -> None:
        if self._state is not SessionState.HANDSHAKING:
            raise RemoteProtocolError("second HELLO")
        common = set(frame.versions) & set(self._settings.supported_versions)
        if not common:
            raise RemoteProtocolError(
                f"no common protocol version: we speak {sorted(self._settings.supported_versions)}"
                f", the peer speaks {sorted(frame.versions)}",
                code=ErrorCode.VERSION_MISMATCH,
            )
        self._version = max(common)
        self._peer = PeerSettings(
            versions=frame.versions,
            max_frame_payload=frame.max_frame_payload,
            initial_window=frame.initial_window,
            max_concurrent_streams=frame.max_concurrent_streams,
            extensions=frame.extensions,
        )
        self._early_data = self._settings.early_data and EXTENSION_EARLY_DATA in frame.extensions
        self._state = SessionState.OPEN
        self._last_ping_sent = self._clock
        self._events.append(HandshakeComplete(self._version, self._peer, self._early_data))

    def _on_pong(self, frame: Pong) -> None:
        sent_at = self._pings.pop(frame.opaque, None)
        if sent_at is not None:  # an unknown PONG is a late answer to a forgotten PING
            self._events.append(PongReceived(max(0.0, self._clock - sent_at), frame.opaque))

    def _on_go_away(self, frame: GoAway) -> None:
        if frame.final or self._state is SessionState.HANDSHAKING:
            self._terminate(frame.code, frame.text, by_peer=True)
            return
        self._events.append(GoAwayReceived(frame.last_stream_id, frame.code, frame.text))
        if self._go_away_received:
            return
        self._go_away_received = True
        self._refuse_unprocessed(frame.last_stream_id)
        self._start_draining(frame.code)

    def _refuse_unprocessed(self, last_stream_id: int) -> None:
        """Our streams above the peer's last id were never seen by it: end them as refused."""
        refused = [
            stream
            for stream in self._streams.values()
            if stream.stream_id > last_stream_id
            and self._is_local_id(stream.stream_id)
            and stream.machine.state in _OPENING_LOCAL
        ]
        for stream in refused:
            text = "the peer is going away"
            self._events.append(StreamRejected(stream.stream_id, ErrorCode.REFUSED_STREAM, text))
            self._forget(stream, check_drained=False)

    def _on_open(self, frame: Open) -> None:
        stream_id = frame.stream_id
        if self._is_local_id(stream_id):
            raise RemoteProtocolError(f"OPEN of stream {stream_id}: wrong parity for the peer")
        if stream_id <= self._highest_peer_id:
            raise RemoteProtocolError(f"OPEN of stream {stream_id}: ids must increase")
        self._check_budget()  # before the id counts as processed: the GO_AWAY excludes it
        self._highest_peer_id = stream_id
        if self._state is SessionState.DRAINING:
            self._reply(Reject(stream_id, ErrorCode.REFUSED_STREAM, "session is draining"))
            return
        peer_count = len(self._streams) - self._local_count
        if peer_count >= self._settings.max_concurrent_streams:
            self._budget.charge(self._clock)  # a correct peer checks the cap before opening
            self._send(Reject(stream_id, ErrorCode.REFUSED_STREAM, "too many concurrent streams"))
            return
        stream = self._new_stream(stream_id)
        stream.machine.process(StreamInput.RECV_OPEN)
        self._events.append(StreamOpened(stream_id, frame.target))

    def _check_budget(self) -> None:
        """The rapid-reset rule: no new stream for a peer that overdrew its budget."""
        budget = self._budget
        if budget.overdrawn(self._clock):
            elapsed = self._clock - self._started_at
            raise RemoteProtocolError(
                f"stream flood: the peer opened {budget.spent} streams that were reset or"
                f" refused before carrying data in {elapsed:.1f} s (allowed: {budget.burst}"
                f" at once, {budget.rate:g} per second, plus one per stream that carried data)",
                code=ErrorCode.ENHANCE_YOUR_CALM,
            )

    def _on_stream_frame(self, frame: Accept | Reject | Data | WindowUpdate | Fin | Reset) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            if self._is_idle(frame.stream_id):
                name = frame.frame_type.name
                raise RemoteProtocolError(f"{name} on stream {frame.stream_id}, never opened")
            return  # a late frame for a stream we already closed: normal after a RESET
        try:
            self._apply(stream, frame)
        except RemoteProtocolError as exc:  # a stream-level violation costs only the stream
            self._reset_by_us(stream, exc.code, str(exc))  # ... and counts as unproductive

    def _apply(
        self, stream: _Stream, frame: Accept | Reject | Data | WindowUpdate | Fin | Reset
    ) -> None:
        match frame:
            case Accept():
                stream.machine.process(StreamInput.RECV_ACCEPT)
                self._events.append(StreamAccepted(stream.stream_id))
            case Reject():
                stream.machine.process(StreamInput.RECV_REJECT)
                self._events.append(StreamRejected(stream.stream_id, frame.code, frame.text))
                self._forget(stream)
            case Data():
                self._on_data(stream, frame)
            case WindowUpdate():
                self._on_window_update(stream, frame)
            case Fin():
                new_state = stream.machine.process(StreamInput.RECV_FIN)
                self._events.append(StreamEnded(stream.stream_id))
                if new_state is StreamState.CLOSED:
                    stream.productive = True
                    self._forget(stream)
            case Reset():
                stream.machine.process(StreamInput.RECV_RESET)
                event = StreamReset(stream.stream_id, frame.code, frame.text, by_peer=True)
                self._events.append(event)
                self._forget(stream)

    def _on_data(self, stream: _Stream, frame: Data) -> None:
        state = stream.machine.process(StreamInput.RECV_DATA)
        stream.window.receive(len(frame.data))
        if state is not StreamState.OPENING_REMOTE:  # early data counts once accepted
            stream.productive = True
        self._events.append(DataReceived(stream.stream_id, frame.data))

    def _on_window_update(self, stream: _Stream, frame: WindowUpdate) -> None:
        stream.machine.process(StreamInput.RECV_WINDOW_UPDATE)
        was_blocked = stream.credit.available == 0
        stream.credit.grant(frame.increment)
        if was_blocked and stream.machine.can_send:
            self._events.append(SendCapacityAvailable(stream.stream_id))

    # ------------------------------------------------------------------ helpers

    def _hello(self) -> Hello:
        return Hello(
            versions=self._settings.supported_versions,
            max_frame_payload=self._settings.max_frame_payload,
            initial_window=self._settings.initial_window,
            max_concurrent_streams=self._settings.max_concurrent_streams,
            extensions=frozenset({EXTENSION_EARLY_DATA})
            if self._settings.early_data
            else frozenset(),
        )

    def _send(self, frame: Frame) -> None:
        version = self._version if self._version is not None else UNNEGOTIATED_VERSION
        if isinstance(frame, Hello):
            version = UNNEGOTIATED_VERSION
        self._outbox.append(encode_frame(frame, version=version))

    def _reply(self, frame: Pong | Reject) -> None:
        """Queue an answer the peer's frame asked for, within ``MAX_QUEUED_REPLIES``."""
        if self._queued_replies >= MAX_QUEUED_REPLIES:
            raise RemoteProtocolError(
                f"reply flood: the peer asked for more than {MAX_QUEUED_REPLIES} answers"
                f" ({frame.frame_type.name}) without reading the ones we queued",
                code=ErrorCode.ENHANCE_YOUR_CALM,
            )
        self._queued_replies += 1
        self._send(frame)

    def _send_ping(self, now: float) -> bytes:
        self._ping_counter += 1
        opaque = self._ping_counter.to_bytes(PING_PAYLOAD_SIZE, "big")
        if len(self._pings) >= MAX_OUTSTANDING_PINGS:
            del self._pings[next(iter(self._pings))]  # dicts keep insertion order: the oldest
        self._pings[opaque] = now
        self._last_ping_sent = now
        self._send(Ping(opaque))
        return opaque

    def _tick(self, now: float) -> None:
        # The caller's clock is monotonic, but keep ours so even if calls interleave oddly.
        self._clock = max(self._clock, now)
        if self._received_since_tick:
            self._received_since_tick = False
            self._last_received = self._clock

    def _is_local_id(self, stream_id: int) -> bool:
        return stream_id % 2 == self._role.first_stream_id % 2

    def _is_idle(self, stream_id: int) -> bool:
        """True if no stream ever had this id (ids only grow, so no set of old ids is kept)."""
        if self._is_local_id(stream_id):
            return stream_id >= self._next_local_id
        return stream_id > self._highest_peer_id

    def _new_stream(self, stream_id: int) -> _Stream:
        if self._peer is None:  # pragma: no cover - guarded by the callers' state checks
            raise LocalProtocolError("handshake not complete")
        stream = _Stream(
            stream_id,
            self._peer.initial_window,
            self._settings.initial_window,
            early_data=self._early_data,
        )
        self._streams[stream_id] = stream
        return stream

    def _local_stream(self, stream_id: int) -> _Stream:
        """The live stream for an API call, or the right error for a gone or unknown one."""
        self._require_running()
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if stream_id <= 0 or self._is_idle(stream_id):
            raise LocalProtocolError(f"stream {stream_id} was never opened")
        raise StreamClosedError(stream_id)

    def _require_running(self) -> None:
        if self._state is SessionState.HANDSHAKING:
            raise LocalProtocolError("the handshake is not complete (wait for HandshakeComplete)")
        if self._state is SessionState.TERMINATED:
            raise LocalProtocolError("the session is terminated")

    def _reset_by_us(self, stream: _Stream, code: ErrorCode, text: str) -> None:
        """Reset a stream whose peer broke a stream rule (unproductive whatever it carried)."""
        stream.machine.process(StreamInput.SEND_RESET)
        self._send(Reset(stream.stream_id, code, truncate_text(text)))
        self._events.append(StreamReset(stream.stream_id, code, text, by_peer=False))
        stream.productive = False
        self._forget(stream)

    def _forget(self, stream: _Stream, *, check_drained: bool = True) -> None:
        del self._streams[stream.stream_id]
        if self._is_local_id(stream.stream_id):
            self._local_count -= 1
        elif stream.productive:  # the peer's streams feed the budget of stream_budget.py
            self._budget.refund(self._clock)
        else:
            self._budget.charge(self._clock)
        self._events.append(StreamClosed(stream.stream_id))
        if check_drained:
            self._maybe_drained()

    def _start_draining(self, code: ErrorCode) -> None:
        if self._state is SessionState.OPEN:
            self._state = SessionState.DRAINING
            self._drain_code = code
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self._state is SessionState.DRAINING and not self._streams:
            # Both ends see the last stream close and stop on their own: nothing more to send.
            self._terminate(self._drain_code, "drained", notify_peer=False)

    def _terminate(
        self, code: ErrorCode, text: str, *, by_peer: bool = False, notify_peer: bool = True
    ) -> None:
        if notify_peer and not by_peer:
            self._send(GoAway(self._highest_peer_id, code, truncate_text(text), final=True))
        self._state = SessionState.TERMINATED
        stream_code = ErrorCode.CANCEL if code is ErrorCode.NO_ERROR else code
        for stream in self._streams.values():
            self._events.append(StreamReset(stream.stream_id, stream_code, text, by_peer=by_peer))
            self._events.append(StreamClosed(stream.stream_id))
        self._streams.clear()
        self._local_count = 0
        self._pings.clear()
        self._events.append(SessionTerminated(code, text))
