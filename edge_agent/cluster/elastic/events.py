"""``EventRecorder``: Kubernetes Events (core/v1) that say what the elastic part did and why.

The autoscaler's driver (and later the ResourcePolicy controller) calls
``await recorder.emit(obj, type="Warning", reason="ProviderFailed", message=...)`` with the
involved object as the API server returns it (``apiVersion``/``kind``/``metadata``).

Rules:

* One Event object per (involved object's kind, namespace, name and uid, type, reason,
  message), as client-go's ``EventCorrelator`` keys them. The first emit of a key POSTs a new
  Event to ``/api/v1/namespaces/NS/events``: NS is the object's namespace, ``default`` for a
  cluster-scoped object (Node, NodePool), as client-go's recorder does. ``source.component``
  is the recorder's component (``edgefleet-elastic``); ``count`` 1; ``firstTimestamp`` =
  ``lastTimestamp`` = now.
* A repeat bumps ``count`` and ``lastTimestamp`` of that object with a merge PATCH; it never
  makes a new object. A repeat less than ``repeat_write_seconds`` after the key's last write
  is only counted in memory and goes out with the next write (a condition reported on every
  step costs one PATCH per interval, not one per step; the last few repeats of a burst may
  never be written, as with client-go's spam filter). A PATCH answered 404 (the API server
  dropped the Event after its ``--event-ttl``, an hour by default) POSTs a new one.
* Bounded: at most ``max_tracked`` keys are remembered (least recently emitted forgotten
  first; a forgotten key's next emit is a new Event). Writes (POST or PATCH) take a token of
  a bucket of ``burst`` tokens refilled at ``writes_per_second``; an emit that finds it empty
  is dropped (counted in ``dropped``, logged at debug), never queued. Each write is bounded by
  ``write_timeout_seconds``. Messages are cut to ``MAX_MESSAGE`` characters, control
  characters replaced.
* ``emit`` never raises for the API server's failures (logged, counted in ``failed``); it
  raises ValueError for what is the caller's mistake (a type other than Normal/Warning, a
  reason that is not CamelCase). Emits run one at a time (a lock), so two repeats of one key
  never race to create two objects.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from edge_agent.cluster.member_api import MemberApi, MemberApiError
from fleet_model.times import format_time

__all__ = [
    "COMPONENT",
    "MAX_MESSAGE",
    "EventKey",
    "EventRecorder",
    "EventSettings",
    "TokenBucket",
    "event_body",
    "event_key",
    "event_namespace",
    "involved_object",
]

log = logging.getLogger("edge_agent.cluster.elastic.events")

COMPONENT = "edgefleet-elastic"
"""``source.component`` of every Event the elastic part writes (``kubectl get events``)."""
MAX_MESSAGE = 1024
"""Characters of a message kept: events.k8s.io caps a note at 1 kB; kubectl shows one line."""
MAX_REASON = 128
"""Characters of a reason (events.k8s.io's limit)."""
_REASON = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_NAME_HEAD = 253 - 17
"""Characters of the involved object's name in the Event's name (plus '.' and 16 hex digits)."""
_TYPES = frozenset({"Normal", "Warning"})


@dataclass(frozen=True, kw_only=True)
class EventSettings:
    """Bounds of one ``EventRecorder``; each field says its unit and why its default."""

    max_tracked: int = 4096
    """Keys (object, type, reason, message) remembered for aggregation: client-go's LRU holds
    4,096 too. A key forgotten only costs a new Event object on its next emit."""

    repeat_write_seconds: float = 30.0
    """Seconds after a key's last write during which a repeat is only counted in memory: a pod
    that fits nowhere is reported on every autoscaler step, and one PATCH per half minute
    says as much as one per step."""

    burst: int = 25
    """Writes (POST or PATCH) allowed at once: client-go's recorder burst. A scale-up of 50
    nodes reports a few pool events and some pods, not hundreds."""

    writes_per_second: float = 5.0
    """Tokens refilled per second after a burst: Events are for people, and the API server
    stores each one in etcd for an hour."""

    write_timeout_seconds: float = 5.0
    """Seconds one write may take: an API server that hangs must not hold the caller (emits
    run one at a time) for the member client's 30 s request timeout."""

    def __post_init__(self) -> None:
        if self.max_tracked < 1:
            raise ValueError(f"max_tracked must be at least 1, not {self.max_tracked}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")
        if not 0 <= self.repeat_write_seconds < math.inf:
            raise ValueError(f"repeat_write_seconds must be >= 0, not {self.repeat_write_seconds}")
        for name, value in (
            ("writes_per_second", self.writes_per_second),
            ("write_timeout_seconds", self.write_timeout_seconds),
        ):
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number, not {value}")


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; times are passed in (sans-IO)."""

    def __init__(self, *, burst: int, rate: float, now: float) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        """Take one token at ``now`` if there is one."""
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
        self._at = max(self._at, now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


# ---------------------------------------------------------------- pure parts


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def involved_object(obj: Mapping[str, Any]) -> dict[str, str]:
    """The ``involvedObject`` reference to ``obj``; ValueError without kind or name.

    No ``resourceVersion``: one Event aggregates repeats over many versions of its object.
    """
    meta = _dict(obj.get("metadata"))
    ref = {
        "apiVersion": _text(obj.get("apiVersion")),
        "kind": _text(obj.get("kind")),
        "name": _text(meta.get("name")),
        "namespace": _text(meta.get("namespace")),
        "uid": _text(meta.get("uid")),
    }
    if not ref["kind"] or not ref["name"]:
        raise ValueError("an Event's object needs a kind and metadata.name")
    return {key: value[:253] for key, value in ref.items() if value}


def event_namespace(ref: Mapping[str, str]) -> str:
    """Where an Event about ``ref`` lives: its namespace, ``default`` for cluster-scoped ones."""
    return ref.get("namespace") or "default"


EventKey = tuple[str, str, str, str, str, str, str]
"""(kind, namespace, name, uid, type, reason, message) of an Event."""


def event_key(ref: Mapping[str, str], *, type_: str, reason: str, message: str) -> EventKey:
    return (
        ref.get("kind", ""),
        ref.get("namespace", ""),
        ref.get("name", ""),
        ref.get("uid", ""),
        type_,
        reason,
        message,
    )


def clip(message: str) -> str:
    """``message`` fit for an Event: control characters replaced, at most MAX_MESSAGE long."""
    text = _CONTROL.sub("?", message)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def event_body(
    ref: Mapping[str, str],
    *,
    type_: str,
    reason: str,
    message: str,
    component: str,
    now: float,
    suffix: str,
) -> dict[str, Any]:
    """A new core/v1 Event about ``ref`` (``suffix`` makes its name unique)."""
    stamp = format_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{ref['name'][:_NAME_HEAD]}.{suffix}",
            "namespace": event_namespace(ref),
        },
        "involvedObject": dict(ref),
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
    }


def check_reason(type_: str, reason: str) -> None:
    """ValueError unless ``type_`` is Normal/Warning and ``reason`` is CamelCase."""
    if type_ not in _TYPES:
        raise ValueError(f"an Event's type is Normal or Warning, not {type_!r}")
    if not 0 < len(reason) <= MAX_REASON or not _REASON.match(reason):
        raise ValueError(f"an Event's reason is CamelCase of at most {MAX_REASON}: {reason!r}")


# ---------------------------------------------------------------- the recorder


@dataclass(kw_only=True, slots=True)
class _Written:
    """One Event object the recorder wrote and may bump."""

    namespace: str
    name: str
    count: int
    """The count the object should say (repeats counted in memory included)."""
    written_count: int
    written_at: float
    """Monotonic time of the last write."""


class EventRecorder:
    """Writes and aggregates Events (see the module's rules); ``emit`` is all a caller needs."""

    def __init__(
        self,
        api: MemberApi,
        *,
        component: str = COMPONENT,
        settings: EventSettings | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._component = component
        self.settings = settings or EventSettings()
        self._clock = clock
        self._monotonic = monotonic
        self._bucket = TokenBucket(
            burst=self.settings.burst, rate=self.settings.writes_per_second, now=monotonic()
        )
        self._seen: OrderedDict[EventKey, _Written] = OrderedDict()
        self._lock = asyncio.Lock()
        self.created = 0
        """Events POSTed."""
        self.bumped = 0
        """Repeats written by PATCH."""
        self.counted = 0
        """Repeats only counted in memory (within ``repeat_write_seconds`` of a write)."""
        self.dropped = 0
        """Emits dropped by the rate limit."""
        self.failed = 0
        """Writes the API server refused or did not answer."""

    async def emit(
        self,
        obj: Mapping[str, Any],
        *,
        type: str,  # noqa: A002 - the Event's field name; the interface the callers share
        reason: str,
        message: str,
    ) -> None:
        """Record that ``reason`` happened to ``obj`` (see the module's rules)."""
        check_reason(type, reason)
        try:
            ref = involved_object(obj)
        except ValueError as error:
            log.warning("event %s not written: %s", reason, error)
            self.failed += 1
            return
        text = clip(message)
        key = event_key(ref, type_=type, reason=reason, message=text)
        async with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                self._seen.move_to_end(key)
                seen.count += 1
                if self._monotonic() - seen.written_at < self.settings.repeat_write_seconds:
                    self.counted += 1
                    return
                if not self._take(reason):
                    return
                if await self._bump(seen, ref):
                    return
                del self._seen[key]  # gone from the API server: a new object below
            elif not self._take(reason):
                return
            await self._create(key, ref, type_=type, reason=reason, message=text)

    def _take(self, reason: str) -> bool:
        if self._bucket.take(self._monotonic()):
            return True
        self.dropped += 1
        log.debug("event %s dropped: more than the rate limit allows", reason)
        return False

    async def _write(self, method: str, path: str, body: object, content_type: str) -> int | None:
        """The answer's status, or None when there was none (logged)."""
        try:
            async with asyncio.timeout(self.settings.write_timeout_seconds):
                status, answer = await self._api.request(
                    method, path, body=body, content_type=content_type
                )
        except TimeoutError:
            log.warning(
                "%s %s: no answer within %s s", method, path, self.settings.write_timeout_seconds
            )
            self.failed += 1
            return None
        except MemberApiError as error:
            log.warning("event not written: %s", error)
            self.failed += 1
            return None
        if not 200 <= status < 300 and status != 404:
            message = _text(_dict(answer).get("message"))[:300]
            log.warning("%s %s: HTTP %s: %s", method, path, status, message)
            self.failed += 1
        return status

    async def _create(
        self, key: EventKey, ref: Mapping[str, str], *, type_: str, reason: str, message: str
    ) -> None:
        body = event_body(
            ref,
            type_=type_,
            reason=reason,
            message=message,
            component=self._component,
            now=self._clock(),
            suffix=secrets.token_hex(8),
        )
        namespace = body["metadata"]["namespace"]
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events"
        status = await self._write("POST", path, body, "application/json")
        if status is None or not 200 <= status < 300:
            return
        self.created += 1
        self._seen[key] = _Written(
            namespace=namespace,
            name=body["metadata"]["name"],
            count=1,
            written_count=1,
            written_at=self._monotonic(),
        )
        while len(self._seen) > self.settings.max_tracked:
            self._seen.popitem(last=False)
        log.debug("event %s %s on %s %s", type_, reason, ref["kind"], ref["name"])

    async def _bump(self, seen: _Written, ref: Mapping[str, str]) -> bool:
        """PATCH the repeat count; False when the Event is gone (make a new one)."""
        path = (
            f"/api/v1/namespaces/{quote(seen.namespace, safe='')}/events/"
            f"{quote(seen.name, safe='')}"
        )
        patch = {"count": seen.count, "lastTimestamp": format_time(self._clock())}
        status = await self._write("PATCH", path, patch, "application/merge-patch+json")
        if status == 404:
            log.debug(
                "event %s of %s %s expired; writing a new one", seen.name, ref["kind"], ref["name"]
            )
            return False
        if status is not None and 200 <= status < 300:
            self.bumped += 1
            seen.written_count = seen.count
            seen.written_at = self._monotonic()
        return True
