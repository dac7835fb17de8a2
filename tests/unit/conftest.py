"""Unit tests are sans-IO or loopback-only and quick: a short per-test timeout catches a hang.

The suite-wide ``timeout = 120`` in pyproject.toml is sized for integration tests that start a
kube-apiserver or a broker. A unit test that needs more than ``UNIT_TIMEOUT`` is stuck (an
awaited future nobody resolves, a lost wake-up), and should fail fast with a stack trace
rather than hold the run for two minutes. A test may still declare its own
``@pytest.mark.timeout(...)``; that one wins.
"""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT_TIMEOUT = 30.0
"""Seconds. The slowest unit tests (hypothesis runs, the sqlite twin store) take a few seconds
alone; 30 s leaves room for two cores shared with other test runs without hiding a hang."""

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's hooks see every collected item, not just its folder's: filter by path.
    for item in items:
        if item.path.is_relative_to(_HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))
