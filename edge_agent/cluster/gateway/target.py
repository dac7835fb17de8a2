"""Gateway target names and the allow-list (pure: no I/O).

Rules:

* The cloud's gateway opens one tunnel stream per backend connection, to the target
  ``service/<namespace>/<name>:<port>``: ``namespace`` and ``name`` are lowercase DNS-1123
  labels (``a-z``, ``0-9``, ``-``; starting and ending with a letter or digit; at most 63
  characters each), ``port`` the Service's port number in decimal (1-65535, no sign, no
  leading zero). Exactly this form: no spaces, no upper case, no trailing dot, no port name.
  ``parse_target`` answers a ``ServiceTarget`` or raises ``TargetError`` with what is wrong.
* The operator's allow-list (``[cluster.gateway] services``) holds patterns ``namespace/name``
  or ``namespace/*`` (any Service of that namespace). The namespace is never a wildcard: an
  allow-list says which namespaces the cloud may reach into, by name. A target whose Service
  no pattern matches is refused, so the cloud can never make the agent dial a Service the
  operator did not list (DESIGN §3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PREFIX = "service/"
"""Tunnel target prefix of the gateway's streams."""

MAX_PATTERNS = 256
"""Patterns in one allow-list: far more than a cluster exposes to a gateway by name; a longer
list is a mistake in the config, not a need."""

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
WILDCARD = "*"


class TargetError(ValueError):
    """A target name or an allow-list pattern that is not well formed; says what is wrong."""


def is_label(text: str) -> bool:
    """Whether ``text`` is a lowercase DNS-1123 label (a namespace or Service name)."""
    return _LABEL.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """One Service port the cloud asks for: ``service/<namespace>/<name>:<port>``."""

    namespace: str
    name: str
    port: int

    @property
    def service(self) -> str:
        """``namespace/name``: how logs, reasons, metrics and /status name the Service."""
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port}"

    @property
    def target(self) -> str:
        """The tunnel target name this was parsed from."""
        return f"{PREFIX}{self.namespace}/{self.name}:{self.port}"


_EXPECTED = "expected service/<namespace>/<name>:<port> (lowercase DNS names, port 1-65535)"


def parse_target(target: str) -> ServiceTarget:
    """The Service port ``target`` names; TargetError when it is not exactly that form."""
    if not target.startswith(PREFIX):
        raise TargetError(f"not a gateway target: {_EXPECTED}")
    rest = target[len(PREFIX) :]
    namespace, slash, name_port = rest.partition("/")
    name, colon, port = name_port.partition(":")
    if not slash or not colon:
        raise TargetError(_EXPECTED)
    if not is_label(namespace):
        raise TargetError(f"the namespace is not a lowercase DNS label: {_EXPECTED}")
    if not is_label(name):
        raise TargetError(f"the service name is not a lowercase DNS label: {_EXPECTED}")
    if _PORT.fullmatch(port) is None or int(port) > 65535:
        raise TargetError(f"the port is not a number 1-65535: {_EXPECTED}")
    return ServiceTarget(namespace=namespace, name=name, port=int(port))


@dataclass(frozen=True, slots=True)
class ServicePattern:
    """One allow-list entry: a Service by name, or every Service (``*``) of a namespace."""

    namespace: str
    name: str
    """A DNS label, or ``*`` for any Service of ``namespace``."""

    def matches(self, namespace: str, name: str) -> bool:
        return self.namespace == namespace and self.name in (WILDCARD, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_pattern(text: str) -> ServicePattern:
    """``namespace/name`` or ``namespace/*``; TargetError says what is wrong."""
    namespace, slash, name = text.partition("/")
    if not slash or not is_label(namespace) or not (name == WILDCARD or is_label(name)):
        raise TargetError(
            f"{text!r} is not NAMESPACE/NAME or NAMESPACE/* (lowercase DNS labels; the "
            "namespace is always named)"
        )
    return ServicePattern(namespace=namespace, name=name)


class AllowList:
    """The Services the gateway may reach: ``allows(namespace, name)``."""

    def __init__(self, patterns: Iterable[str]) -> None:
        parsed = [parse_pattern(text) for text in patterns]
        if len(parsed) > MAX_PATTERNS:
            raise TargetError(f"at most {MAX_PATTERNS} patterns in an allow-list")
        self.patterns = tuple(dict.fromkeys(parsed))
        self._names = {(p.namespace, p.name) for p in self.patterns}
        self._wild = {p.namespace for p in self.patterns if p.name == WILDCARD}

    @property
    def namespaces(self) -> frozenset[str]:
        """Every namespace some pattern names."""
        return frozenset(p.namespace for p in self.patterns)

    def allows(self, namespace: str, name: str) -> bool:
        return namespace in self._wild or (namespace, name) in self._names

    def __bool__(self) -> bool:
        return bool(self.patterns)
