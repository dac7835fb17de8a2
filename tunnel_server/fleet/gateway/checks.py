"""Active health checks: one GET to a backend through the same tunnel path as a request.

Rules:

* A check is one tunnel stream to the backend's cluster agent (``backends.open_backend``, as
  for a client's request) carrying ``GET <healthCheck.path>`` with ``Connection: close``;
  only the response head is read, the stream is reset after it (a body is never wanted).
* Passed: a 2xx or 3xx answer within ``timeout`` seconds (open, write and head together).
  Failed: any other status, a refused stream, a broken one, or no head in time.
* The agent refuses a stream to a Service without ready endpoints (``TARGET_UNREACHABLE``,
  "no ready endpoints for ns/name:port"): that refusal is told apart (``no_endpoints``), so
  the router can mark the backend ``NoReadyEndpoints`` at once instead of waiting for the
  check's failure threshold.
* The response head is bounded (``MAX_HEAD`` bytes); a backend sending more fails the check.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11

from tunnel_aio import StreamError
from tunnel_protocol import ErrorCode
from tunnel_server.fleet.gateway.backends import Forward, Refused, open_backend

if TYPE_CHECKING:
    from tunnel_server.fleet.gateway.router import Backend
    from tunnel_server.store import Store
    from tunnel_server.tunnel.sessions import SessionRegistry

__all__ = ["CheckOutcome", "probe"]

MAX_HEAD = 16 * 1024
"""Bytes of a check's response head we parse: a health answer needs few."""
USER_AGENT = "edgefleet-gateway-check/1"


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckOutcome:
    ok: bool
    detail: str
    """Why it failed (or the status it passed with), for logs."""
    endpoints: bool | None = None
    """What the check says of the Service's ready endpoints: False when the agent refused
    the stream for want of one, True when an answer came back through one, else None."""


async def probe(
    backend: Backend,
    *,
    path: str,
    seconds: float,
    sessions: SessionRegistry,
    store: Store,
    forward: Forward | None = None,
) -> CheckOutcome:
    """Run one check of ``backend`` within ``seconds`` (module docstring).

    Never raises for the backend's faults: they are a failed check.
    """
    try:
        async with asyncio.timeout(seconds):
            return await _probe(
                backend,
                path=path,
                within=seconds,
                sessions=sessions,
                store=store,
                forward=forward,
            )
    except TimeoutError:
        return CheckOutcome(ok=False, detail=f"no answer within {seconds:g} s")


async def _probe(
    backend: Backend,
    *,
    path: str,
    within: float,
    sessions: SessionRegistry,
    store: Store,
    forward: Forward | None,
) -> CheckOutcome:
    try:
        stream = await open_backend(
            backend, sessions=sessions, store=store, within=within, forward=forward
        )
    except Refused as refused:
        return CheckOutcome(
            ok=False,
            detail=refused.detail,
            endpoints=False if "no ready endpoints" in refused.detail else None,
        )
    try:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        head = h11.Request(
            method="GET",
            target=path,
            headers=[
                ("Host", f"{backend.service}.{backend.namespace}.svc"),
                ("User-Agent", USER_AGENT),
                ("Connection", "close"),
            ],
        )
        await stream.write(conn.send(head) + conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.read()
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                ok = 200 <= event.status_code < 400
                return CheckOutcome(ok=ok, detail=f"status {event.status_code}", endpoints=True)
            if isinstance(event, h11.ConnectionClosed):
                return CheckOutcome(ok=False, detail="closed without answering")
            # 1xx: wait for the final answer
    except (StreamError, h11.ProtocolError) as error:
        return CheckOutcome(ok=False, detail=f"check failed: {error}")
    finally:
        stream.reset(ErrorCode.CANCEL, "check over")
