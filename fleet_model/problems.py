"""What every fleet parser shares: the error that lists each problem, and the name rule."""

from __future__ import annotations

import re

__all__ = ["MAX_NAME", "SpecError", "escape", "is_name"]

MAX_NAME = 253
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class SpecError(ValueError):
    """A document that cannot be taken: every problem, each as (JSON pointer, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path or '/'}: {message}" for path, message in problems))
        self.problems = problems


def is_name(value: object) -> bool:
    """A DNS-1123 subdomain (what Kubernetes allows for most object names)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and bool(_NAME.match(value))


def escape(token: str) -> str:
    """``token`` as one JSON pointer segment (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")
