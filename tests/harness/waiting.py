"""Wait for a condition, never for a fixed time.

Every test that needs something to happen "soon" (an agent connects, a node turns offline, a
twin converges) calls ``eventually`` (blocking code) or ``eventually_async`` (inside the event
loop) instead of writing its own loop. Both poll a probe until a check holds, and on timeout
fail with one message that names what was awaited and the last value seen, so a red test says
what did not happen rather than just "timed out".

The deadline is a safety net, not a claim about speed: performance lives in ``scripts/bench``.
Pick ``within`` generously (the suite runs on two busy cores); a test passes as soon as the
condition holds, so a long deadline costs nothing when all is well.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_WITHIN = 30.0
"""Seconds: long enough for a daemon to restart and reconnect on two busy cores."""

DEFAULT_EVERY = 0.05
"""Seconds between probes: quick to notice, cheap for the loopback services we poll."""


class NotSeen(AssertionError):  # noqa: N818 - reads as what happened: the condition was not seen
    """The awaited condition did not hold before the deadline.

    The message says what was awaited and shows the last value the probe returned (or the last
    error it raised).
    """


def _truthy(value: object) -> bool:
    return bool(value)


_NOTHING: object = object()


def _failure(what: str, within: float, last: object, error: Exception | None) -> NotSeen:
    seen = "no value" if last is _NOTHING else repr(last)
    raised = f"; the last probe raised {error!r}" if error is not None else ""
    return NotSeen(f"{what}: not seen within {within} s; last value: {seen}{raised}")


def eventually(
    probe: Callable[[], T],
    check: Callable[[T], bool] = _truthy,
    *,
    what: str,
    within: float = DEFAULT_WITHIN,
    every: float = DEFAULT_EVERY,
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """Call ``probe`` until ``check`` holds for its value; that value.

    Exceptions of the types in ``ignore`` count as "not yet" (a service still starting refuses
    connections); any other exception ends the wait at once, so a crashed process is reported
    as the crash, not as a timeout.
    """
    deadline = time.monotonic() + within
    last: object = _NOTHING
    error: Exception | None = None
    while True:
        try:
            value = probe()
        except ignore as caught:
            error = caught
        else:
            last, error = value, None
            if check(value):
                return value
        if time.monotonic() >= deadline:
            raise _failure(what, within, last, error)
        time.sleep(every)


async def eventually_async(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool] = _truthy,
    *,
    what: str,
    within: float = DEFAULT_WITHIN,
    every: float = DEFAULT_EVERY,
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """``eventually`` for the event loop: ``probe`` is awaited, the pause yields to the loop."""
    deadline = time.monotonic() + within
    last: object = _NOTHING
    error: Exception | None = None
    while True:
        try:
            value = await probe()
        except ignore as caught:
            error = caught
        else:
            last, error = value, None
            if check(value):
                return value
        if time.monotonic() >= deadline:
            raise _failure(what, within, last, error)
        await asyncio.sleep(every)
