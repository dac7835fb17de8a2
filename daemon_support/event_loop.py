"""Which event loop the daemons run on: asyncio's own or uvloop.

Rules:

* ``run(main)`` is what both daemons call instead of ``asyncio.run``: same semantics (a fresh
  loop, ``main`` run to completion, leftover tasks cancelled, async generators and the
  default executor shut down), only the loop class differs.
* The choice comes from ``$EDGEFLEET_EVENT_LOOP``: ``asyncio``, ``uvloop`` or ``auto``; unset
  or empty is the caller's ``default``. ``auto`` takes uvloop when it imports and asyncio's
  loop when it does not (a slim install without the optional package still runs). ``uvloop``
  asked for and missing is an error at start, never a silent fallback.
* Both daemons default to ``asyncio`` for now; uvloop is opt-in. Why uvloop: the tunnel's
  data path is socket and TLS work for every frame, which uvloop does in C (libuv); it cut the
  agent's CPU per small request by about a third and the server's per GiB by about a fifth
  (docs/benchmarks.md, *Tunnel profile (issue 18)*). Why not by default yet: uvloop's TLS
  layer drops the bytes it holds when the peer closes while the application has paused
  reading (MagicStack/uvloop#661, open); a cluster-mode agent on uvloop lost the end of
  ``kubectl cp`` that way. The agent's pipe to its API server now uses
  ``tunnel_aio.tls_connect`` (asyncio's TLS layer on any loop), and
  tests/integration/clusters/test_streaming.py passes with the agent on uvloop; but the other
  TLS clients (aiohttp's, to the tunnel server and the kube cache's upstream) still use
  uvloop's TLS there, and the whole suite has not been run on uvloop. The server's elastic
  TLS read buffer (``tls_buffer.py``), which keeps idle agent sessions small, subclasses
  asyncio's TLS protocol, which uvloop does not use (it gives every TLS connection 256 KiB
  of its own).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("daemon_support.event_loop")

ENV = "EDGEFLEET_EVENT_LOOP"
"""Environment variable that picks the loop: ``asyncio``, ``uvloop`` or ``auto``."""
CHOICES = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


class EventLoopError(RuntimeError):
    """The loop named in ``$EDGEFLEET_EVENT_LOOP`` is unknown or not installed."""


def loop_factory(
    choice: str | None = None, *, default: str = "asyncio"
) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The name and factory of the loop ``choice`` (None: the environment's, else ``default``)."""
    wanted = (os.environ.get(ENV, "") if choice is None else choice).strip().lower() or default
    if wanted not in CHOICES:
        raise EventLoopError(f"{ENV}={wanted!r}: choose one of {', '.join(CHOICES)}")
    if wanted != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError as error:
            if wanted == "uvloop":
                raise EventLoopError(f"{ENV}=uvloop but uvloop is not installed") from error
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return "uvloop", factory
    return "asyncio", asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], *, choice: str | None = None, default: str = "asyncio") -> T:
    """``asyncio.run(main)`` on the loop ``choice``.

    ``choice`` None reads ``$EDGEFLEET_EVENT_LOOP``, and takes ``default`` when that is unset.
    """
    try:
        name, factory = loop_factory(choice, default=default)
    except EventLoopError:
        main.close()  # never awaited: close it, so no "never awaited" warning follows the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        log.debug("event loop: %s", name)
        return runner.run(main)


__all__ = ["CHOICES", "ENV", "EventLoopError", "loop_factory", "run"]
