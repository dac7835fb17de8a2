"""What a misbehaving peer costs in the log: one line with the reason, never a traceback.

aiohttp logs a request it cannot parse (a bad header name, a header over 8 KB, a raw 0xff in
the target) with a full traceback on ``aiohttp.server``, before any authentication: anyone who
can reach the port could fill the disk with them. ``ServerLog`` is given to aiohttp as its
server logger (``web.Application(handler_args=...)``): a peer's fault (a malformed request, a
connection reset under a handler) becomes one INFO line on ``tunnel_server.http`` with the
reason, at most ``LineBudget.burst`` per ``LineBudget.window`` seconds, and a count of those
held back once the window rolls. Anything else (a bug of ours: a 500) keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("tunnel_server.http")

MAX_REASON = 200
"""Characters of the peer's error kept in the line: enough to see what was wrong."""


class LineBudget:
    """At most ``burst`` lines per ``window`` seconds; counts the lines it held back."""

    def __init__(
        self,
        *,
        burst: int = 20,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        """Lines per window: enough to see a pattern, few enough that a flood costs ~1 KB/s."""
        self.window = window
        """Seconds of one window."""
        self._clock = clock
        self._start = clock()
        self._used = 0
        self.held_back = 0
        """Lines refused in the current window, reported by the first line of the next one."""

    def take(self) -> int | None:
        """None: stay quiet. Else the count held back since the last line (0 usually)."""
        now = self._clock()
        if now - self._start >= self.window:
            self._start, self._used = now, 0
        if self._used >= self.burst:
            self.held_back += 1
            return None
        self._used += 1
        held, self.held_back = self.held_back, 0
        return held


def _exception(exc_info: object) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        error = exc_info[1]
        return error if isinstance(error, BaseException) else None
    if exc_info is True:
        return sys.exc_info()[1]
    return None


def is_peer_fault(error: BaseException) -> bool:
    """A malformed request, or the peer's connection gone: nothing a traceback would explain."""
    if isinstance(error, BaseExceptionGroup):
        return all(is_peer_fault(inner) for inner in error.exceptions)
    return isinstance(error, HttpProcessingError | ConnectionError)


def one_line(error: BaseException) -> str:
    """The error as one short printable line (aiohttp's messages span several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = text.encode("unicode_escape").decode("ascii")  # control bytes and non-ASCII escaped
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, with peers' faults turned into rate-limited single lines."""

    def __init__(self, budget: LineBudget | None = None) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.budget = budget or LineBudget()

    def log(
        self,
        level: int,
        msg: object,
        *args: object,
        exc_info: Any = None,  # noqa: ANN401 - logging's own loose type
        **kwargs: Any,  # noqa: ANN401 - logging's own keyword arguments
    ) -> None:
        error = _exception(exc_info)
        if level <= logging.DEBUG or error is None or not is_peer_fault(error):
            super().log(level, msg, *args, exc_info=exc_info, **kwargs)
            return
        held = self.budget.take()
        if held is None:
            return
        kv: dict[str, object] = {"what": str(msg) % args if args else str(msg)}
        kv["reason"] = one_line(error)
        if held:
            kv["held_back"] = held
        log.info("refused a request the peer got wrong", extra={"kv": kv})

    def process(self, msg: object, kwargs: MutableMapping[str, Any]) -> tuple[object, Any]:
        return msg, kwargs


__all__ = ["LineBudget", "ServerLog", "is_peer_fault", "one_line"]
