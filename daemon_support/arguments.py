"""Command-line parsing both daemons share: one error line, checked values, negative values.

A new user's mistake gets one line that says what was expected, and exit code 2 (usage), never
a traceback nor a screen of usage text. The value types here check their range, so a flag
never carries a value the daemon would choke on later (a port of 70000, a negative interval).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = [
    "LOG_LEVELS",
    "USAGE_EXIT",
    "Parser",
    "add_log_level",
    "duration",
    "host_port",
    "join_negative_values",
    "port",
    "seconds",
    "whole",
]

USAGE_EXIT = 2
"""Exit code of a usage or configuration error (argparse's own, and ``sysexits``' spirit)."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NEGATIVE = re.compile(r"-\.?\d")
"""A token that is a negative value (``-5``, ``-5s``, ``-.5``), not an option."""


class Parser(argparse.ArgumentParser):
    """argparse that answers a usage error with one line (and ``--help`` hint), exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(USAGE_EXIT)


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)",
    )


def _fmt(value: float) -> str:
    for unit in ("d", "h", "m"):
        if value >= _UNITS[unit] and value % _UNITS[unit] == 0:
            return f"{value / _UNITS[unit]:g}{unit}"
    return f"{value:g}s"


def duration(*, low: float, high: float) -> Callable[[str], float]:
    """``90``, ``90s``, ``15m``, ``1h`` or ``2d`` as seconds, from ``low`` to ``high``."""

    def parse(value: str) -> float:
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            msg = f"expected a duration such as 90s, 15m, 1h or 2d, got {value!r}"
            raise argparse.ArgumentTypeError(msg)
        total = float(match[1]) * _UNITS[match[2]]
        if not low <= total <= high:
            msg = f"must be from {_fmt(low)} to {_fmt(high)}, got {value!r}"
            raise argparse.ArgumentTypeError(msg)
        return total

    return parse


def seconds(*, low: float, high: float) -> Callable[[str], float]:
    """A number of seconds from ``low`` to ``high`` (no ``nan``, no ``inf``)."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            msg = f"expected a number of seconds such as 5 or 0.5, got {value!r}"
            raise argparse.ArgumentTypeError(msg)
        if not low <= number <= high:
            msg = f"must be from {low:g} to {high:g} seconds, got {value!r}"
            raise argparse.ArgumentTypeError(msg)
        return number

    return parse


def whole(*, low: int, high: int) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high``."""

    def parse(value: str) -> int:
        text = value.strip()
        if not re.fullmatch(r"-?\d{1,12}", text) or not low <= int(text) <= high:
            msg = f"expected a whole number from {low} to {high}, got {value!r}"
            raise argparse.ArgumentTypeError(msg)
        return int(text)

    return parse


port = whole(low=1, high=65535)
"""A TCP port, 1 to 65535."""


def host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) with a port from 1 to 65535."""
    host, sep, number = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not number.isdigit() or not 0 < int(number) < 65536:
        msg = f"expected HOST:PORT such as 127.0.0.1:1883, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return host, int(number)


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string, in this parser and its sub-commands, that takes one value."""
    found: set[str] = set()
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 - same
            for sub in action.choices.values():
                found |= _value_options(sub)
        elif action.option_strings and action.nargs is None:
            found.update(action.option_strings)
    return found


def join_negative_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``--opt -5s`` as ``--opt=-5s``, so a negative value reaches its type's range check.

    argparse takes any token starting with ``-`` for an option ("expected one argument"),
    which hides the real problem; joined, the value gets the option's own error message.
    """
    options = _value_options(parser)
    out: list[str] = []
    words = list(argv)
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            out += words[index:]
            break
        following = words[index + 1] if index + 1 < len(words) else ""
        if word in options and _NEGATIVE.match(following):
            out.append(f"{word}={following}")
            index += 2
            continue
        out.append(word)
        index += 1
    return out
