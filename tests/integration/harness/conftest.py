"""Fixtures of the harness's own tests."""

from __future__ import annotations

from tests.harness.member import member_factory

__all__ = ["member_factory"]
