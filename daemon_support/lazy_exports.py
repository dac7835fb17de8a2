"""A package's public names loaded on first use (PEP 562), so a switched-off part costs nothing.

A package's ``__init__`` maps each public name to the module that defines it and sets
``__getattr__ = lazy_exports(__name__, WHERE)``; the first ``package.Name`` imports that module
and keeps the value in the package, so later lookups never come here again. Names not in the
map are an ``AttributeError`` as usual. Types for mypy stay in ``if TYPE_CHECKING:`` imports.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package``: ``name`` from the module ``where`` names."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> object:  # noqa: N807 - PEP 562's name
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
