"""Desired requests on the twin sync stream, sans-IO: the edge asks, the cloud decides.

A command from Home Assistant is a change to *desired*, which belongs to the cloud. The agent
does not apply it: it sends a ``desired-request`` on its sync stream and the cloud answers
``desired-answer`` (accepted with the new desired ``$version``, or refused with a reason).
Rules (docs/twins.md, "The sync stream", has the message table):

1. Opt-in by the cloud. `RequestSyncSession(Role.CLOUD, features=FEATURES)` adds
   ``"features": ["desired-request"]`` to its ``welcome``; an agent sends a request only to a
   cloud that said so (`accepts_requests`). An older cloud's session treats an unknown message
   type as a protocol error and resets the stream, so an agent never tries one on it; an
   older agent ignores the unknown ``features`` field of a welcome. Nothing else changes:
   the protocol version stays, and so does every other message.
2. ``desired-request`` (edge -> cloud, only once open): ``id`` (integer 1..2**53), ``device``
   (a device id of the sending node), ``patch`` (a non-empty JSON object, at most
   `MAX_PATCH_BYTES` as compact JSON), ``source`` (one of `SOURCES`). At most
   ``max_pending`` requests wait for an answer per stream; the cloud refuses more as a protocol
   error, the edge's `send` raises LocalProtocolError (its driver refuses the command first).
3. ``desired-answer`` (cloud -> edge): ``id`` of a request in flight, ``result``
   ``accepted`` (with ``version``, the desired ``$version`` after it) or ``refused`` (with
   ``reason``, at most `MAX_REASON` characters). An answer naming no request in flight is
   dropped (a request the edge gave up on, `abandon_request`).
4. Received requests and answers do not come out of `receive_data` (its events are the base
   session's); they wait in the session for `take_requests`, in arrival order, which the
   driver calls after each `receive_data`.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from device_models._sync import Role
from device_models.sync_session import (
    Event,
    LocalProtocolError,
    RemoteProtocolError,
    State,
    SyncSession,
    Welcome,
)
from device_models.sync_wire import WireError, encode

__all__ = [
    "DESIRED_REQUEST",
    "FEATURES",
    "MAX_PATCH_BYTES",
    "MAX_PENDING",
    "MAX_REASON",
    "NOT_TAKEN",
    "SOURCES",
    "UNREACHABLE",
    "DesiredAnswer",
    "DesiredRequest",
    "RequestRefusedError",
    "RequestSyncSession",
    "check_patch",
]

DESIRED_REQUEST = "desired-request"
DESIRED_ANSWER = "desired-answer"
FEATURES = frozenset({DESIRED_REQUEST})
"""What this release's cloud advertises in its welcome."""
SOURCES = frozenset({"home-assistant"})
MAX_PATCH_BYTES = 4096
"""A command sets one property: 4 KiB holds the longest string a model allows (4096 chars of
ASCII) only barely, and any switch, number or select many times over."""
MAX_PENDING = 16
"""Requests in flight per stream: HA sends one per click; more waiting means a stuck cloud."""
MAX_REASON = 256
UNREACHABLE = "cloud unreachable"
"""`RequestRefusedError.reason` when there is no stream, or it broke under the request."""
NOT_TAKEN = "the cloud does not take commands (an older release)"
"""`RequestRefusedError.reason` when the cloud's welcome did not advertise requests."""
_MAX_ID = 2**53
_MAX_FEATURES = 16
_MAX_DEVICE = 64
_DEVICE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class DesiredRequest:
    id: int
    device: str
    patch: dict[str, Any]
    source: str


@dataclass(frozen=True)
class DesiredAnswer:
    id: int
    accepted: bool
    version: int | None = None
    reason: str = ""


Request = DesiredRequest | DesiredAnswer


class RequestRefusedError(Exception):
    """A desired request never got an answer from the cloud; `reason` says why.

    The edge's driver raises it: no stream, an older cloud, too many in flight, no answer in
    time.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_patch(patch: object) -> str | None:
    """Why `patch` cannot be a request's patch, or None."""
    if not isinstance(patch, dict) or not patch:
        return "the patch must be a non-empty JSON object"
    try:
        size = len(json.dumps(patch, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError):
        return "the patch is not JSON"
    if size > MAX_PATCH_BYTES:
        return f"the patch is {size} bytes; at most {MAX_PATCH_BYTES}"
    return None


def _valid_device(device: object) -> bool:
    return (
        isinstance(device, str)
        and 1 <= len(device) <= _MAX_DEVICE
        and device[0].isalnum()
        and device.isascii()
        and set(device) <= _DEVICE_CHARS
    )


def _valid_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_ID


@dataclass
class _Requests:
    max_pending: int
    pending: set[int] = field(default_factory=set)
    received: deque[Request] = field(default_factory=deque)


class RequestSyncSession(SyncSession):
    """`SyncSession` plus desired requests (rules above)."""

    def __init__(
        self,
        role: Role,
        *,
        features: frozenset[str] = frozenset(),
        max_pending: int = MAX_PENDING,
        max_message_bytes: int,
        max_depth: int,
        window: int,
        max_batch_records: int = 1024,
    ) -> None:
        super().__init__(
            role,
            max_message_bytes=max_message_bytes,
            max_depth=max_depth,
            window=window,
            max_batch_records=max_batch_records,
        )
        self.features = features
        """What this end advertises (the cloud's welcome carries it)."""
        self.peer_features: frozenset[str] = frozenset()
        """What the cloud's welcome advertised (edge)."""
        self._requests = _Requests(max_pending=max_pending)

    @property
    def accepts_requests(self) -> bool:
        """The cloud said it takes desired requests, and the stream is open (edge)."""
        return self.state is State.OPEN and DESIRED_REQUEST in self.peer_features

    @property
    def requests_room(self) -> int:
        return self._requests.max_pending - len(self._requests.pending)

    def take_requests(self) -> list[Request]:
        """Requests (cloud) or answers (edge) received since the last call, in order."""
        taken = list(self._requests.received)
        self._requests.received.clear()
        return taken

    def abandon_request(self, request_id: int) -> None:
        """The edge stopped waiting for this answer; a late one is dropped."""
        self._requests.pending.discard(request_id)

    # ------------------------------------------------------------------ sending

    def send(self, event: Event | Request) -> bytes:
        if isinstance(event, DesiredRequest | DesiredAnswer):
            return self._send_request(event)
        data = super().send(event)
        if isinstance(event, Welcome) and self.features:
            # The base encodes version and origin only; the same welcome with our features.
            message = {
                "type": "welcome",
                "version": event.version,
                "origin": event.origin,
                "features": sorted(self.features),
            }
            data = self._encode(message)
        return data

    def _send_request(self, event: Request) -> bytes:
        if self.state is not State.OPEN:
            raise LocalProtocolError(f"cannot send a desired request in state {self.state.value}")
        pending = self._requests.pending
        if isinstance(event, DesiredRequest):
            if self.role is not Role.EDGE or DESIRED_REQUEST not in self.peer_features:
                raise LocalProtocolError("the cloud does not take desired requests")
            problem = check_patch(event.patch) or _request_problem(event)
            if problem is not None:
                raise LocalProtocolError(problem)
            if event.id in pending or len(pending) >= self._requests.max_pending:
                raise LocalProtocolError(f"{len(pending)} desired requests are in flight already")
            message: dict[str, Any] = {
                "type": DESIRED_REQUEST,
                "id": event.id,
                "device": event.device,
                "patch": event.patch,
                "source": event.source,
            }
            data = self._encode(message)
            pending.add(event.id)
            return data
        if self.role is not Role.CLOUD or event.id not in pending:
            raise LocalProtocolError(f"desired request {event.id} is not waiting for an answer")
        message = {"type": DESIRED_ANSWER, "id": event.id}
        if event.accepted:
            message |= {"result": "accepted", "version": event.version}
        else:
            message |= {"result": "refused", "reason": event.reason[:MAX_REASON]}
        data = self._encode(message)
        pending.discard(event.id)
        return data

    def _encode(self, message: dict[str, Any]) -> bytes:
        try:
            return encode(message, max_bytes=self._max_bytes)
        except WireError as error:
            self.state = State.BROKEN
            raise LocalProtocolError(str(error)) from None

    # ------------------------------------------------------------------ receiving

    def _received(self, message: dict[str, Any]) -> Event | None:
        kind = message["type"]
        if kind == DESIRED_REQUEST and self.role is Role.CLOUD and self.state is State.OPEN:
            self._requests.received.append(self._request(message))
            return None
        if kind == DESIRED_ANSWER and self.role is Role.EDGE and self.state is State.OPEN:
            answer = self._answer(message)
            if answer is not None:
                self._requests.received.append(answer)
            return None
        return super()._received(message)  # anything else: the base's tables decide

    def _welcome(self, message: dict[str, Any]) -> Welcome:
        welcome = super()._welcome(message)
        features = message.get("features")
        if isinstance(features, list):
            self.peer_features = frozenset(
                name for name in features[:_MAX_FEATURES] if isinstance(name, str)
            )
        return welcome

    def _request(self, message: dict[str, Any]) -> DesiredRequest:
        request_id, device = message.get("id"), message.get("device")
        patch, source = message.get("patch"), message.get("source")
        if not _valid_id(request_id):
            raise RemoteProtocolError("a desired request needs an integer id in 1..2**53")
        pending = self._requests.pending
        if request_id in pending:
            raise RemoteProtocolError(f"desired request {request_id} is in flight already")
        if len(pending) >= self._requests.max_pending:
            raise RemoteProtocolError(
                f"more than {self._requests.max_pending} desired requests in flight"
            )
        if not _valid_device(device):
            raise RemoteProtocolError("a desired request needs a device id")
        if source not in SOURCES:
            raise RemoteProtocolError(f"desired request source must be one of {sorted(SOURCES)}")
        problem = check_patch(patch)
        if problem is not None:
            raise RemoteProtocolError(f"desired request {request_id}: {problem}")
        assert isinstance(request_id, int)  # noqa: S101 - checked above
        assert isinstance(device, str)  # noqa: S101 - checked above
        assert isinstance(patch, dict)  # noqa: S101 - checked above
        assert isinstance(source, str)  # noqa: S101 - checked above
        pending.add(request_id)
        return DesiredRequest(id=request_id, device=device, patch=patch, source=source)

    def _answer(self, message: dict[str, Any]) -> DesiredAnswer | None:
        request_id, result = message.get("id"), message.get("result")
        if not _valid_id(request_id) or request_id not in self._requests.pending:
            return None  # a stray: a request we gave up on (rule 3)
        assert isinstance(request_id, int)  # noqa: S101 - checked
        self._requests.pending.discard(request_id)
        if result == "accepted":
            version = message.get("version")
            valid = isinstance(version, int) and not isinstance(version, bool)
            return DesiredAnswer(id=request_id, accepted=True, version=version if valid else None)
        if result == "refused":
            reason = message.get("reason")
            text = reason[:MAX_REASON] if isinstance(reason, str) else "refused"
            return DesiredAnswer(id=request_id, accepted=False, reason=text)
        raise RemoteProtocolError("a desired answer's result must be accepted or refused")


def _request_problem(event: DesiredRequest) -> str | None:
    if not _valid_id(event.id):
        return "a desired request needs an integer id in 1..2**53"
    if not _valid_device(event.device):
        return "a desired request needs a device id"
    if event.source not in SOURCES:
        return f"desired request source must be one of {sorted(SOURCES)}"
    return None
