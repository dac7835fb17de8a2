"""Whether a failed attempt is tried again on another backend, and on which ones.

Pure: the driver calls ``decide`` after each failed attempt of one client request, with every
attempt so far, and either retries (``Balancer.pick(exclude=decision.exclude)``, not before
``decision.not_before``) or answers the client (the failed attempt's response, or 502/503/504).

Rules, in order; the first that applies decides:

1. Nothing may have reached the client: once a byte of a response is sent (the status line
   included), a retry would splice two responses. The driver holds the response head until
   it knows the status is not one to retry.
2. A status is retried only when it is in the rule's ``retry.codes``; otherwise that response
   goes to the client as it is.
3. The method must be idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, PUT, DELETE, TRACE),
   so that a request the dead backend may have acted on can be sent again. The one exception
   is a ``Connect`` failure, whatever the method: the request never reached any backend (the
   tunnel stream was refused, or the agent's dial failed before a byte of the request was
   written), so sending it once more is sending it once.
4. The request body must still be whole (``body_replayable``): the driver keeps what it sent
   (bounded) or did not read the body yet.
5. At most ``retry.attempts`` retries after the first try.
6. The retry must start (after ``retry.backoff``) before the request's deadline
   (``timeouts.request``).
7. Only backends not tried yet for this request are eligible (a backend that just failed is
   likely to fail again, and the agent already spreads one backend's endpoints); when none
   of the available ones is left, the client gets the failure.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from fleet_model.gateway.route import Retry

__all__ = ["IDEMPOTENT_METHODS", "Attempt", "Failure", "RetryDecision", "decide"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class Failure(StrEnum):
    CONNECT = "Connect"
    """The request never reached the backend (stream refused, dial failed before writing)."""
    RESET = "Reset"
    """The backend or its cluster went away after the request (or part of it) was sent."""
    TIMEOUT = "Timeout"
    """``timeouts.backendRequest`` passed without a response head."""
    STATUS = "Status"
    """A response head arrived (held back from the client) with ``status``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Attempt:
    backend: str
    failure: Failure
    at: float
    """When the attempt failed."""
    status: int | None = None
    """The response status, for ``Failure.STATUS``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryDecision:
    retry: bool
    reason: str
    """Why (for logs and the 502/503 body): one short sentence."""
    exclude: frozenset[str] = frozenset()
    """Backends the retry may not use (those tried)."""
    not_before: float | None = None
    """When the retry may start (the last failure plus ``backoff``)."""


def _no(reason: str) -> RetryDecision:
    return RetryDecision(retry=False, reason=reason)


def decide(  # noqa: PLR0911 - one return per rule of the module docstring, in its order
    *,
    method: str,
    policy: Retry,
    attempts: Sequence[Attempt],
    candidates: Collection[str],
    response_started: bool = False,
    body_replayable: bool = True,
    deadline: float | None = None,
) -> RetryDecision:
    """Retry the request after ``attempts[-1]`` failed, or not (the rules above).

    ``candidates``: backends that could take a request now (the rule's eligible backends:
    ``Balancer.effective_weights(...)`` keys). ``deadline``: the request's end by
    ``timeouts.request``, or None.
    """
    if not attempts:
        raise ValueError("decide needs the failed attempt")
    last = attempts[-1]
    if response_started:
        return _no("part of the response already reached the client")
    if last.failure is Failure.STATUS and last.status not in policy.codes:
        return _no(f"status {last.status} is not in the route's retry codes")
    if method.upper() not in IDEMPOTENT_METHODS and last.failure is not Failure.CONNECT:
        return _no(f"{method.upper()} is not idempotent and the request may have been received")
    if not body_replayable:
        return _no("the request body was already streamed and not kept")
    if len(attempts) > policy.attempts:
        return _no(f"{policy.attempts} retries spent")
    start = last.at + policy.backoff
    if deadline is not None and start >= deadline:
        return _no("the request's timeout would pass before a retry")
    tried = frozenset(attempt.backend for attempt in attempts)
    if not set(candidates) - tried:
        return _no("every available backend was tried")
    return RetryDecision(
        retry=True,
        reason=f"{last.failure.value.lower()} failure on {last.backend}",
        exclude=tried,
        not_before=start,
    )
