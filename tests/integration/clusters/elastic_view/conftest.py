"""The console tests' Chromium and screenshot folder, shared with tests/integration/console."""

from tests.integration.console.conftest import browser, shots

__all__ = ["browser", "shots"]
