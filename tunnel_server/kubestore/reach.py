"""`Reach`: whether the Kubernetes API answers, as one store's calls and watches see it.

An API server that is down must not stall the server's event loop: the stores' writes are
synchronous calls made on it (the Store Protocols are synchronous), so a write that waited for
its timeout while the API is known to be down would hold every agent's keepalive, proxy and
session for that long. Rules:

- Any transport failure of a call, a list, a watch or a probe (refused, reset, a timeout:
  ``httpx2.TransportError``), and a 503 or 504 from the API server itself, marks the API
  unreachable. Any other answer, a 404 or 409 included, marks it reachable.
- While it is marked unreachable, ``check`` raises at once: a write fails in microseconds with
  an error that says so (``ApiUnreachableError``, which the REST API answers 503 with
  ``Retry-After``), instead of each write finding out by its own timeout.
- The store's watch thread probes the API every ``probe_interval`` while it is marked
  unreachable, and its lists mark it reachable again: the first write after the API returns
  goes through. Nothing here does I/O; the callers report what their calls saw.

Thread-safe: the watch thread reports, the event loop's writes check.
"""

from __future__ import annotations

import threading
import time

from tunnel_server.store import ApiUnreachableError, StoreError

__all__ = ["ApiUnreachableError", "Reach", "StoreUnavailableError"]


class StoreUnavailableError(StoreError, ApiUnreachableError):
    """A write of the control objects' store could not reach the Kubernetes API."""


class Reach:
    """Reachable or not since when, and the last failure's text."""

    def __init__(self, *, retry_after: float = 5.0) -> None:
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._error = ""

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, error: BaseException) -> None:
        """A call did not reach the API (only for errors that ``is_unreachable``)."""
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
            self._error = str(error) or type(error).__name__

    def answered(self) -> None:
        """A call got an answer from the API."""
        with self._lock:
            self._down_since = None
            self._error = ""

    def error(
        self, what: str, kind: type[ApiUnreachableError] = StoreUnavailableError
    ) -> ApiUnreachableError:
        """The error that says ``what`` cannot be done now, the API being unreachable."""
        with self._lock:
            since, error = self._down_since, self._error
        age = 0.0 if since is None else time.monotonic() - since
        return kind(
            f"the Kubernetes API (the store) has been unreachable for {age:.0f} s ({error}):"
            f" cannot {what} now; reads still answer from this replica's copy; try again once"
            " the API is back",
            retry_after=self.retry_after,
        )

    def check(self, what: str, kind: type[ApiUnreachableError] = StoreUnavailableError) -> None:
        """Raise ``kind`` at once while the API is marked unreachable."""
        if self._down_since is not None:
            raise self.error(what, kind)
