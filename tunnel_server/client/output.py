"""Output of the remote CLI: table (default), wide, json or yaml.

A table by default, ``-o wide`` (more columns), ``-o json`` (exactly the API's JSON; a list
followed to its end) and ``-o yaml`` (the same as YAML).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

FORMATS = ("table", "wide", "json", "yaml")

Getter = Callable[[dict[str, Any]], object]


@dataclass(frozen=True)
class Column:
    header: str
    field: str | Getter
    wide: bool = False
    """Only in ``-o wide``."""

    def value(self, item: dict[str, Any]) -> str:
        raw = self.field(item) if callable(self.field) else item.get(self.field)
        return cell(raw)


def cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    text = str(value)
    # A server's text on a terminal: one line, no control characters.
    return "".join(ch if ch.isprintable() else " " for ch in text)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines) + "\n"


def show(
    document: object, fmt: str, columns: Sequence[Column], items: list[Any] | None = None
) -> None:
    """Print ``document`` (what the API answered) in the format asked.

    ``items`` are the table's rows (default:
    ``document["items"]`` for a list, else the document itself as one row).
    """
    if fmt == "json":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    if fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
        return
    if items is None:
        if isinstance(document, dict) and isinstance(document.get("items"), list):
            items = document["items"]
        else:
            items = [document]
    shown = [c for c in columns if fmt == "wide" or not c.wide]
    rows = [[c.value(item) for c in shown] for item in items if isinstance(item, dict)]
    sys.stdout.write(table([c.header for c in shown], rows))


def show_document(document: object, fmt: str) -> None:
    """A document with no table form (a twin, a model): YAML unless JSON is asked."""
    if fmt == "json":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))


def say(message: str) -> None:
    """A line for the operator, off stdout (stdout is the command's output)."""
    sys.stderr.write(message + "\n")
