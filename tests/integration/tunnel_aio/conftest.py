"""Every test of the tunnel's asyncio driver runs twice: on asyncio's loop and on uvloop.

The daemons can be switched to uvloop (``daemon_support/event_loop.py``), so the driver and
the socket pipe must behave the same on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config,  # noqa: ARG001 - the hook's signature
    item: pytest.Item,  # noqa: ARG001
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
