"""The twins end-to-end system (tests/integration/twins_e2e/conftest.py), reused as it is."""

from tests.integration.twins_e2e.conftest import system

__all__ = ["system"]
