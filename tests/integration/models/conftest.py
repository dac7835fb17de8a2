"""The twins end-to-end system (real server, real agent, real mosquitto), for device models."""

from __future__ import annotations

from tests.integration.twins_e2e.conftest import system

__all__ = ["system"]
