"""MultiClusterRoute (``fleet.edgefleet.io/v1alpha1``): parsing, matching, precedence.

The object is Gateway API's ``HTTPRoute`` where a backend is ``cluster/namespace/service:port``
(docs/gateway.md)::

    apiVersion: fleet.edgefleet.io/v1alpha1
    kind: MultiClusterRoute
    metadata: {name: shop}
    spec:
      hostnames: [shop.example.com, "*.shop.example.com"]   # empty: every host
      healthCheck: {path: /healthz, intervalSeconds: 5}     # optional, active checks
      rules:
      - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "1"}]}]
        filters:
        - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-via, value: gw}]}}
        - {type: RequestMirror, requestMirror: {backendRef: {cluster: c, namespace: shop,
                                                name: web, port: 80}, percent: 5}}
        timeouts: {request: 10s, backendRequest: 2s}
        retry: {attempts: 2, codes: [502, 503], backoff: 100ms}
        sessionPersistence: {type: Cookie, sessionName: shop-session}
        backendRefs:
        - {cluster: zone-a, namespace: shop, name: web, port: 80, weight: 90}
        - {cluster: zone-b, namespace: shop, name: web, port: 80, weight: 10}

Rules:

* Parsing reports every problem at once (``SpecError``, JSON pointers under ``/spec``), at most
  ``MAX_PROBLEMS``; every list, string and number is bounded before it is walked (the bounds
  are the ``MAX_*`` constants, Gateway API's own where it has one). Unknown fields are problems.
* Paths: ``Exact`` (the whole path, case-sensitive) and ``PathPrefix`` (element-wise: ``/foo``
  matches ``/foo``, ``/foo/`` and ``/foo/bar``, never ``/foobar``; a trailing ``/`` in the value
  is ignored). Values start with ``/`` and hold no ``//``, ``/./``, ``/../``, ``%2f``, ``#``
  (Gateway API's CEL rules). ``RegularExpression`` (paths and header values) must match the
  whole path or value, in the subset of RE2 syntax ``fleet_model.gateway.regex`` takes (at
  most 256 characters; matched in linear time, never with Python's backtracking ``re``).
* Headers: names case-insensitive, values exact and case-sensitive; a header sent several times
  is matched on its values joined by ``,`` (RFC 9110 §5.3). Query parameters: exact,
  case-sensitive, the first value when repeated. ``method``: one of ``METHODS``. Everything in
  one match is ANDed; the matches of one rule are ORed; no matches means ``PathPrefix /``.
* Hostnames: lower-case DNS names, or ``*.`` + a name (matches one or more labels in front:
  ``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``, never
  ``example.com``). A route without hostnames matches every host.
* Precedence (``RouteTable.match``), exactly Gateway API's, first difference wins:

  1. the route whose matching hostname has the most characters of a non-wildcard hostname,
     then the most characters of a matching hostname (a route without hostnames last);
  2. an ``Exact`` path match, then a ``RegularExpression`` one (the longest pattern first;
     Gateway API leaves their place to implementations, this is Envoy Gateway's), then the
     ``PathPrefix`` with the most characters (as written);
  3. a match with a method; 4. the most header matches; 5. the most query-parameter matches;
  6. the oldest route (``metadata.creationTimestamp``); 7. the route name (fleet objects have
     no namespace, so Gateway API's ``{namespace}/{name}`` is the name alone);
  8. the first rule in list order, then the first match in that rule.

* Filters: ``RequestHeaderModifier`` and ``ResponseHeaderModifier`` (at most one of each per
  rule; ``remove`` first, then ``set`` replaces every value of a name, then ``add`` appends;
  hop-by-hop and framing headers may not be touched), ``RequestMirror`` (``percent`` 0..100
  of the rule's requests also go, response ignored, to one backend; at most ``MAX_MIRRORS``).
  Other Gateway API filters (redirects, rewrites, extensionRef) are refused for now.
* ``backendRefs``: 1..``MAX_BACKENDS``, each ``{cluster, namespace, name, port, weight}``
  (``group: ""`` and ``kind: Service`` may be written; nothing else); ``weight`` 0..1,000,000,
  default 1; the same backend twice in one rule is refused. A rule whose weights are all 0
  matches but has no backend (the gateway answers 503).
* Durations are Gateway API's (``1h``, ``500ms``, ``1m30s``: up to four number+unit groups)
  and at most ``MAX_DURATION_SECONDS``. ``timeouts.request`` (whole request) >=
  ``timeouts.backendRequest`` (one attempt) when both are set; ``0s`` disables one.
* ``retry``: ``attempts`` 0..``MAX_RETRY_ATTEMPTS`` retries after the first try (default
  ``DEFAULT_RETRY.attempts``), ``codes`` (400..599, which statuses are retried; connection
  failures always are), ``backoff`` (wait before each retry). A rule without ``retry`` gets
  ``DEFAULT_RETRY`` (one retry on another backend, connection failures only), which is what
  makes a cluster's death invisible to idempotent requests (fleet_model.gateway.retry).
* ``sessionPersistence``: ``type`` ``Cookie`` (default) or ``Header``, ``sessionName`` (the
  cookie or header whose value is hashed to a backend), ``absoluteTimeout`` (cookie Max-Age,
  ``cookieConfig.lifetimeType: Permanent`` only). ``idleTimeout`` is refused: affinity is a
  stateless hash (fleet_model.gateway.balancer), there is no session table to expire.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl

from fleet_model.gateway.regex import Regex, RegexError, compile_regex
from fleet_model.problems import SpecError, is_name
from fleet_model.times import parse_time

__all__ = [
    "API_VERSION",
    "DEFAULT_RETRY",
    "KIND",
    "MAX_BACKENDS",
    "MAX_HOSTNAMES",
    "MAX_MATCHES",
    "MAX_RULES",
    "MAX_WEIGHT",
    "METHODS",
    "BackendRef",
    "HeaderMatch",
    "HeaderModifier",
    "HealthCheck",
    "Mirror",
    "PathMatch",
    "PathType",
    "QueryMatch",
    "Request",
    "Retry",
    "Route",
    "RouteHit",
    "RouteMatch",
    "RouteRule",
    "RouteSpec",
    "RouteTable",
    "SessionPersistence",
    "SessionType",
    "Timeouts",
    "host_matches",
    "normalize_host",
    "parse_duration",
    "parse_route",
    "parse_spec",
]

API_VERSION = "fleet.edgefleet.io/v1alpha1"
KIND = "MultiClusterRoute"

MAX_HOSTNAMES = 16
"""Gateway API's bound on ``hostnames``."""
MAX_RULES = 16
"""Gateway API's bound on ``rules``."""
MAX_MATCHES = 8
"""Matches of one rule (Gateway API v1's bound): at most 128 entries per route to scan."""
MAX_HEADER_MATCHES = 16
MAX_QUERY_MATCHES = 16
MAX_FILTERS = 16
MAX_MIRRORS = 4
"""Each mirror copies the request once more: a few canaries, not a fan-out."""
MAX_BACKENDS = 16
MAX_MODIFIER_ITEMS = 16
"""Entries of each of ``set``, ``add`` and ``remove`` in one header modifier."""
MAX_WEIGHT = 1_000_000
"""Gateway API's bound on a backend's weight."""
MAX_PATH_CHARS = 1024
MAX_HEADER_NAME_CHARS = 256
MAX_HEADER_VALUE_CHARS = 4096
MAX_QUERY_NAME_CHARS = 256
MAX_QUERY_VALUE_CHARS = 1024
MAX_HOSTNAME_CHARS = 253
MAX_DNS_LABEL = 63
MAX_DURATION_SECONDS = 86_400
"""A day: longer than any request a gateway should hold open (WebSockets are not timed)."""
MAX_RETRY_ATTEMPTS = 5
"""Retries after the first try: beyond a few, retries multiply an outage's load."""
MAX_RETRY_CODES = 32
MAX_BACKOFF_SECONDS = 10.0
MAX_SESSION_NAME_CHARS = 128
MAX_QUERY_PAIRS = 256
"""Query parameters of a request looked at for matching (the first ones; the rest are ignored)."""
MAX_PROBLEMS = 64
"""Problems listed in one SpecError; a garbage document must not make a garbage-sized error."""
MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL = 1, 300
MIN_CHECK_TIMEOUT, MAX_CHECK_TIMEOUT = 1, 60
MAX_THRESHOLD = 10

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
"""Gateway API's HTTPMethod enum."""
PROTECTED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)
"""Hop-by-hop and framing headers (RFC 9110 §7.6.1): the data path owns them, filters may not."""

_CLIP = 64
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_PATH = re.compile(r"^/(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})*$")
_PATH_FORBIDDEN = ("//", "/./", "/../", "%2f", "%2F", "#")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

Problems = list[tuple[str, str]]


# ---------------------------------------------------------------- the spec


class PathType(StrEnum):
    EXACT = "Exact"
    PREFIX = "PathPrefix"
    REGEX = "RegularExpression"


_PATH_ORDER = {PathType.EXACT: 0, PathType.REGEX: 1, PathType.PREFIX: 2}


@dataclass(frozen=True, kw_only=True, slots=True)
class PathMatch:
    type: PathType = PathType.PREFIX
    value: str = "/"
    """As written (its length ranks prefixes); ``PathPrefix`` matching ignores a trailing /."""
    regex: Regex | None = field(default=None, compare=False, repr=False)
    """The compiled ``value`` of a ``RegularExpression`` match."""

    def matches(self, path: str) -> bool:
        if self.type is PathType.EXACT:
            return path == self.value
        if self.regex is not None:
            return self.regex.fullmatch(path)
        prefix = self.value.rstrip("/")
        if not prefix:
            return True
        return path == prefix or path.startswith(f"{prefix}/")


@dataclass(frozen=True, kw_only=True, slots=True)
class HeaderMatch:
    name: str
    """Lower-case (header names are case-insensitive)."""
    value: str
    regex: Regex | None = field(default=None, compare=False, repr=False)
    """``value`` compiled, for a ``RegularExpression`` match."""

    def matches(self, found: str | None) -> bool:
        if found is None:
            return False
        return self.regex.fullmatch(found) if self.regex is not None else found == self.value


@dataclass(frozen=True, kw_only=True, slots=True)
class QueryMatch:
    name: str
    value: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteMatch:
    path: PathMatch = field(default_factory=PathMatch)
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryMatch, ...] = ()
    method: str | None = None

    def matches(self, request: Request) -> bool:
        if self.method is not None and request.method != self.method:
            return False
        if not self.path.matches(request.path):
            return False
        for header in self.headers:
            if not header.matches(request.header(header.name)):
                return False
        return all(request.query_param(q.name) == q.value for q in self.query_params)

    def rank(self) -> tuple[int, int, int, int, int]:
        """Gateway API's criteria 2-5 as a sort key: smaller is matched first."""
        exact = self.path.type is PathType.EXACT
        return (
            _PATH_ORDER[self.path.type],
            0 if exact else -len(self.path.value),
            0 if self.method is not None else 1,
            -len(self.headers),
            -len(self.query_params),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    """(name as written, value): replaces every value of the name."""
    add: tuple[tuple[str, str], ...] = ()
    """(name as written, value): appended, existing values kept."""
    remove: tuple[str, ...] = ()
    """Lower-case names."""

    def apply(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` (name, value) pairs in order, modified: remove, then set, then add."""
        drop = set(self.remove) | {name.lower() for name, _ in self.set}
        out = [(name, value) for name, value in headers if name.lower() not in drop]
        out.extend(self.set)
        out.extend(self.add)
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class BackendRef:
    cluster: str
    namespace: str
    name: str
    """The Service's name in ``namespace`` of ``cluster``."""
    port: int
    """The Service's port (the agent resolves it to endpoint ports through EndpointSlices)."""
    weight: int = 1

    @property
    def key(self) -> str:
        """``cluster/namespace/name:port``: the backend's identity everywhere in the gateway."""
        return f"{self.cluster}/{self.namespace}/{self.name}:{self.port}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Mirror:
    backend: BackendRef
    percent: int = 100
    """Share of the rule's requests copied to ``backend``, 0..100."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Timeouts:
    request: float | None = None
    """Seconds for the whole request, retries included; None: the listener's default; 0: none."""
    backend_request: float | None = None
    """Seconds for one attempt on one backend; None: as ``request``; 0: none."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Retry:
    attempts: int = 1
    """Retries after the first try (0: never retry)."""
    codes: tuple[int, ...] = ()
    """Response statuses that are retried (connection failures always are)."""
    backoff: float = 0.0
    """Seconds to wait before each retry."""


DEFAULT_RETRY = Retry()
"""A rule without ``retry``: one retry on another backend after a connection failure."""


class SessionType(StrEnum):
    COOKIE = "Cookie"
    HEADER = "Header"


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionPersistence:
    type: SessionType = SessionType.COOKIE
    session_name: str = "edgefleet-session"
    """The cookie or header whose value is hashed to a backend."""
    absolute_timeout: float | None = None
    """Seconds: the cookie's Max-Age (Permanent lifetime); None: a session cookie."""

    def set_cookie(self, token: str) -> str:
        """The ``Set-Cookie`` value starting a session keyed by ``token`` (the driver's random)."""
        age = "" if self.absolute_timeout is None else f"; Max-Age={int(self.absolute_timeout)}"
        return f"{self.session_name}={token}; Path=/; HttpOnly{age}"


@dataclass(frozen=True, kw_only=True, slots=True)
class HealthCheck:
    path: str = "/"
    interval_seconds: int = 5
    timeout_seconds: int = 2
    unhealthy_threshold: int = 3
    """Consecutive failed checks that make a backend unhealthy."""
    healthy_threshold: int = 2
    """Consecutive passed checks that make it healthy again."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteRule:
    name: str | None = None
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    backends: tuple[BackendRef, ...] = ()
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    mirrors: tuple[Mirror, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: Retry = DEFAULT_RETRY
    session: SessionPersistence | None = None

    @property
    def weights(self) -> dict[str, int]:
        """Backend key → weight, in ``backendRefs`` order (what a Balancer is made from)."""
        return {backend.key: backend.weight for backend in self.backends}


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteSpec:
    hostnames: tuple[str, ...] = ()
    rules: tuple[RouteRule, ...] = ()
    health_check: HealthCheck | None = None

    def backends(self) -> dict[str, BackendRef]:
        """Every backend the route names (mirrors too), by key: what needs health tracking."""
        found: dict[str, BackendRef] = {}
        for rule in self.rules:
            for backend in (*rule.backends, *(mirror.backend for mirror in rule.mirrors)):
                found.setdefault(backend.key, backend)
        return found


@dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    name: str
    created: float
    """``metadata.creationTimestamp`` in seconds (0 when absent: a route not yet stored)."""
    spec: RouteSpec


# ---------------------------------------------------------------- parsing helpers


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _CLIP else f"{text[:_CLIP]}..."


def _unknown(value: Mapping[Any, Any], allowed: set[str], path: str) -> Problems:
    unknown = [key for key in value if key not in allowed]
    if not unknown:
        return []
    shown = ", ".join(_clip(key) for key in sorted(unknown[:5], key=str))
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return [(path, f"unknown fields: {shown}{more}")]


def _object(value: object, path: str, what: str, problems: Problems) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        problems.append((path, f"must be an object {what}"))
        return None
    return value


def _list(value: object, path: str, bound: int, problems: Problems) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append((path, "must be a list"))
        return []
    if len(value) > bound:
        problems.append((path, f"at most {bound} items (found {len(value)})"))
        return []
    return value


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded_int(value: object, low: int, high: int) -> bool:
    return _int(value) and low <= value <= high  # type: ignore[operator]


def _string(value: object, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit


def _fits(value: object, limit: int, pattern: re.Pattern[str]) -> bool:
    """A string of 1..limit characters that ``pattern`` matches (bounded before the regex)."""
    return isinstance(value, str) and 0 < len(value) <= limit and bool(pattern.match(value))


def parse_duration(text: object) -> float | None:
    """A Gateway API Duration (``1h``, ``1m30s``, ``250ms``) in seconds, or None if not one."""
    if not isinstance(text, str) or len(text) > 32 or not _DURATION.match(text):
        return None
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _duration(value: object, where: str, limit: float, problems: Problems) -> float | None:
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds is None:
        problems.append((where, "must be a duration such as 10s, 500ms or 1m30s"))
    elif seconds > limit:
        problems.append((where, f"at most {limit:g}s"))
        return None
    return seconds


def _hostname(value: object, where: str, problems: Problems) -> str | None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_HOSTNAME_CHARS:
        problems.append((where, f"must be a hostname of 1..{MAX_HOSTNAME_CHARS} characters"))
        return None
    if not _HOSTNAME.match(value):
        problems.append((where, f"{_clip(value)} is not a lower-case DNS name or *.name"))
        return None
    labels = value.split(".")
    if any(len(label) > MAX_DNS_LABEL for label in labels):
        problems.append((where, f"a DNS label has at most {MAX_DNS_LABEL} characters"))
        return None
    if all(label.isdigit() for label in labels if label != "*"):
        problems.append((where, "must be a name, not an IP address"))
        return None
    return value


def _hostnames(value: object, problems: Problems) -> tuple[str, ...]:
    out: list[str] = []
    for index, item in enumerate(_list(value, "/spec/hostnames", MAX_HOSTNAMES, problems)):
        where = f"/spec/hostnames/{index}"
        host = _hostname(item, where, problems)
        if host is None:
            continue
        if host in out:
            problems.append((where, f"{host!r} is listed twice"))
        else:
            out.append(host)
    return tuple(out)


# ---------------------------------------------------------------- matches


def _path(value: object, where: str, problems: Problems) -> PathMatch:  # noqa: PLR0911
    if value is None:
        return PathMatch()
    item = _object(value, where, "{type, value}", problems)
    if item is None:
        return PathMatch()
    problems.extend(_unknown(item, {"type", "value"}, where))
    kind, text = item.get("type", "PathPrefix"), item.get("value", "/")
    if kind not in set(PathType):
        problems.append((f"{where}/type", "must be Exact, PathPrefix or RegularExpression"))
        return PathMatch()
    if kind == PathType.REGEX:
        regex = _regex(text, f"{where}/value", problems)
        if regex is None:
            return PathMatch()
        return PathMatch(type=PathType.REGEX, value=regex.pattern, regex=regex)
    if not isinstance(text, str) or not 0 < len(text) <= MAX_PATH_CHARS or not _PATH.match(text):
        problems.append(
            (f"{where}/value", f"must be an absolute URL path of at most {MAX_PATH_CHARS} chars")
        )
        return PathMatch()
    if any(bad in text for bad in _PATH_FORBIDDEN) or text.endswith(("/..", "/.")):
        problems.append((f"{where}/value", "may not hold //, /./, /../, %2f or # nor end in /."))
        return PathMatch()
    return PathMatch(type=PathType(kind), value=text)


def _regex(value: object, where: str, problems: Problems) -> Regex | None:
    try:
        return compile_regex(value)
    except RegexError as error:
        problems.append((where, f"not a pattern this gateway takes: {error}"))
        return None


def _header_name(value: object, where: str, problems: Problems) -> str | None:
    if not _fits(value, MAX_HEADER_NAME_CHARS, _TOKEN):
        problems.append((where, f"must be an HTTP header name (token, 1..{MAX_HEADER_NAME_CHARS})"))
        return None
    assert isinstance(value, str)  # noqa: S101 - checked above
    return value


def _header_value(value: object, where: str, problems: Problems) -> str | None:
    if (
        not isinstance(value, str)
        or len(value) > MAX_HEADER_VALUE_CHARS
        or not _HEADER_VALUE.match(value)
    ):
        problems.append(
            (where, f"must be a header value: at most {MAX_HEADER_VALUE_CHARS} chars, no CR/LF")
        )
        return None
    return value


def _header_matches(value: object, where: str, problems: Problems) -> tuple[HeaderMatch, ...]:
    out: list[HeaderMatch] = []
    for index, item in enumerate(_list(value, where, MAX_HEADER_MATCHES, problems)):
        here = f"{where}/{index}"
        entry = _object(item, here, "{name, value, type}", problems)
        if entry is None:
            continue
        problems.extend(_unknown(entry, {"name", "value", "type"}, here))
        kind = entry.get("type", "Exact")
        if kind not in ("Exact", "RegularExpression"):
            problems.append((f"{here}/type", "must be Exact or RegularExpression"))
        name = _header_name(entry.get("name"), f"{here}/name", problems)
        text = _header_value(entry.get("value"), f"{here}/value", problems)
        regex = None
        if text is not None and kind == "RegularExpression":
            regex = _regex(text, f"{here}/value", problems)
            if regex is None:
                continue
        if name is None or text is None:
            continue
        if any(known.name == name.lower() for known in out):
            problems.append((f"{here}/name", f"{name!r} is matched twice (names ignore case)"))
            continue
        out.append(HeaderMatch(name=name.lower(), value=text, regex=regex))
    return tuple(out)


def _query_matches(value: object, where: str, problems: Problems) -> tuple[QueryMatch, ...]:
    out: list[QueryMatch] = []
    for index, item in enumerate(_list(value, where, MAX_QUERY_MATCHES, problems)):
        here = f"{where}/{index}"
        entry = _object(item, here, "{name, value, type}", problems)
        if entry is None:
            continue
        problems.extend(_unknown(entry, {"name", "value", "type"}, here))
        if entry.get("type", "Exact") != "Exact":
            problems.append((f"{here}/type", "must be Exact"))
        name, text = entry.get("name"), entry.get("value")
        if not _string(name, MAX_QUERY_NAME_CHARS):
            problems.append((f"{here}/name", f"must be a string of 1..{MAX_QUERY_NAME_CHARS}"))
            continue
        if not isinstance(text, str) or len(text) > MAX_QUERY_VALUE_CHARS:
            problems.append((f"{here}/value", f"must be a string of 0..{MAX_QUERY_VALUE_CHARS}"))
            continue
        assert isinstance(name, str)  # noqa: S101 - checked above
        if any(known.name == name for known in out):
            problems.append((f"{here}/name", f"{name!r} is matched twice"))
            continue
        out.append(QueryMatch(name=name, value=text))
    return tuple(out)


def _match(item: object, where: str, problems: Problems) -> RouteMatch | None:
    entry = _object(item, where, "{path, headers, queryParams, method}", problems)
    if entry is None:
        return None
    count = len(problems)
    problems.extend(_unknown(entry, {"path", "headers", "queryParams", "method"}, where))
    path = _path(entry.get("path"), f"{where}/path", problems)
    headers = _header_matches(entry.get("headers"), f"{where}/headers", problems)
    query = _query_matches(entry.get("queryParams"), f"{where}/queryParams", problems)
    method = entry.get("method")
    if method is not None and method not in METHODS:
        problems.append((f"{where}/method", f"must be one of {', '.join(METHODS)}"))
    if len(problems) > count:
        return None
    return RouteMatch(path=path, headers=headers, query_params=query, method=method)


def _matches(value: object, where: str, problems: Problems) -> tuple[RouteMatch, ...]:
    if value is None or value == []:
        return (RouteMatch(),)
    found = [
        _match(item, f"{where}/{index}", problems)
        for index, item in enumerate(_list(value, where, MAX_MATCHES, problems))
    ]
    return tuple(match for match in found if match is not None)


# ---------------------------------------------------------------- filters and backends


def _modifier(value: object, where: str, problems: Problems) -> HeaderModifier | None:
    entry = _object(value, where, "{set, add, remove}", problems)
    if entry is None:
        return None
    count = len(problems)
    problems.extend(_unknown(entry, {"set", "add", "remove"}, where))
    pairs: dict[str, tuple[tuple[str, str], ...]] = {}
    seen: set[str] = set()
    for verb in ("set", "add"):
        out: list[tuple[str, str]] = []
        for index, item in enumerate(
            _list(entry.get(verb), f"{where}/{verb}", MAX_MODIFIER_ITEMS, problems)
        ):
            here = f"{where}/{verb}/{index}"
            header = _object(item, here, "{name, value}", problems)
            if header is None:
                continue
            problems.extend(_unknown(header, {"name", "value"}, here))
            name = _header_name(header.get("name"), f"{here}/name", problems)
            text = _header_value(header.get("value"), f"{here}/value", problems)
            if name is None or text is None:
                continue
            _modifiable(name, f"{here}/name", seen, problems)
            out.append((name, text))
        pairs[verb] = tuple(out)
    removed: list[str] = []
    for index, item in enumerate(
        _list(entry.get("remove"), f"{where}/remove", MAX_MODIFIER_ITEMS, problems)
    ):
        name = _header_name(item, f"{where}/remove/{index}", problems)
        if name is not None:
            _modifiable(name, f"{where}/remove/{index}", seen, problems)
            removed.append(name.lower())
    if len(problems) > count:
        return None
    return HeaderModifier(set=pairs["set"], add=pairs["add"], remove=tuple(removed))


def _modifiable(name: str, where: str, seen: set[str], problems: Problems) -> None:
    lower = name.lower()
    if lower in PROTECTED_HEADERS:
        problems.append((where, f"{name!r} is a hop-by-hop or framing header: the gateway's"))
    elif lower in seen:
        problems.append((where, f"{name!r} appears twice in this modifier (names ignore case)"))
    seen.add(lower)


def _backend(
    item: object, where: str, problems: Problems, *, weighted: bool = True
) -> BackendRef | None:
    fields = "{cluster, namespace, name, port, weight}" if weighted else "{cluster, ...}"
    entry = _object(item, where, fields, problems)
    if entry is None:
        return None
    count = len(problems)
    allowed = {"cluster", "namespace", "name", "port", "group", "kind"}
    problems.extend(_unknown(entry, allowed | ({"weight"} if weighted else set()), where))
    cluster, namespace = entry.get("cluster"), entry.get("namespace")
    name, port, weight = entry.get("name"), entry.get("port"), entry.get("weight", 1)
    if not is_name(cluster):
        problems.append((f"{where}/cluster", "must be a cluster name (DNS-1123 subdomain)"))
    if not _fits(namespace, MAX_DNS_LABEL, _DNS_LABEL):
        problems.append((f"{where}/namespace", "must be a namespace name (DNS label)"))
    if not _fits(name, MAX_DNS_LABEL, _SERVICE_NAME):
        problems.append((f"{where}/name", "must be a Service name (DNS-1035 label)"))
    if not _bounded_int(port, 1, 65535):
        problems.append((f"{where}/port", "must be a port number 1..65535"))
    if weighted and not _bounded_int(weight, 0, MAX_WEIGHT):
        problems.append((f"{where}/weight", f"must be an integer 0..{MAX_WEIGHT}"))
    if entry.get("group", "") != "":
        problems.append((f"{where}/group", 'must be "" (the core API group)'))
    if entry.get("kind", "Service") != "Service":
        problems.append((f"{where}/kind", "must be Service"))
    if len(problems) > count:
        return None
    assert isinstance(port, int)  # noqa: S101 - checked above
    return BackendRef(
        cluster=str(cluster), namespace=str(namespace), name=str(name), port=port, weight=weight
    )


def _backends(value: object, where: str, problems: Problems) -> tuple[BackendRef, ...]:
    if not isinstance(value, list) or not value:
        problems.append((where, "must be a non-empty list of backends"))
        return ()
    out: list[BackendRef] = []
    for index, item in enumerate(_list(value, where, MAX_BACKENDS, problems)):
        backend = _backend(item, f"{where}/{index}", problems)
        if backend is None:
            continue
        if any(known.key == backend.key for known in out):
            problems.append((f"{where}/{index}", f"{backend.key} is listed twice in this rule"))
            continue
        out.append(backend)
    return tuple(out)


def _mirror(value: object, where: str, problems: Problems) -> Mirror | None:
    entry = _object(value, where, "{backendRef, percent}", problems)
    if entry is None:
        return None
    problems.extend(_unknown(entry, {"backendRef", "percent"}, where))
    backend = _backend(entry.get("backendRef"), f"{where}/backendRef", problems, weighted=False)
    percent = entry.get("percent", 100)
    if not _bounded_int(percent, 0, 100):
        problems.append((f"{where}/percent", "must be an integer 0..100"))
        return None
    return None if backend is None else Mirror(backend=backend, percent=percent)


_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
}


@dataclass(kw_only=True, slots=True)
class _Filters:
    request: HeaderModifier | None = None
    response: HeaderModifier | None = None
    mirrors: list[Mirror] = field(default_factory=list)


def _filters(value: object, where: str, problems: Problems) -> _Filters:
    out = _Filters()
    for index, item in enumerate(_list(value, where, MAX_FILTERS, problems)):
        here = f"{where}/{index}"
        entry = _object(item, here, "{type, ...}", problems)
        if entry is None:
            continue
        kind = entry.get("type")
        if kind not in _FILTER_FIELDS:
            problems.append((f"{here}/type", f"must be one of {', '.join(_FILTER_FIELDS)}"))
            continue
        key = _FILTER_FIELDS[kind]
        problems.extend(_unknown(entry, {"type", key}, here))
        body = entry.get(key)
        if kind == "RequestMirror":
            mirror = _mirror(body, f"{here}/{key}", problems)
            if len(out.mirrors) >= MAX_MIRRORS:
                problems.append((here, f"at most {MAX_MIRRORS} RequestMirror filters"))
            elif mirror is not None:
                out.mirrors.append(mirror)
            continue
        modifier = _modifier(body, f"{here}/{key}", problems)
        slot = "request" if kind == "RequestHeaderModifier" else "response"
        if getattr(out, slot) is not None:
            problems.append((here, f"at most one {kind} filter per rule"))
        else:
            setattr(out, slot, modifier)
    return out


# ---------------------------------------------------------------- timeouts, retry, session


def _timeouts(value: object, where: str, problems: Problems) -> Timeouts:
    if value is None:
        return Timeouts()
    entry = _object(value, where, "{request, backendRequest}", problems)
    if entry is None:
        return Timeouts()
    problems.extend(_unknown(entry, {"request", "backendRequest"}, where))
    request = _duration(entry.get("request"), f"{where}/request", MAX_DURATION_SECONDS, problems)
    backend = _duration(
        entry.get("backendRequest"), f"{where}/backendRequest", MAX_DURATION_SECONDS, problems
    )
    if request and backend and backend > request:
        problems.append((f"{where}/backendRequest", "must not be longer than request"))
    return Timeouts(request=request, backend_request=backend)


def _retry(value: object, where: str, problems: Problems) -> Retry:
    if value is None:
        return DEFAULT_RETRY
    entry = _object(value, where, "{attempts, codes, backoff}", problems)
    if entry is None:
        return DEFAULT_RETRY
    problems.extend(_unknown(entry, {"attempts", "codes", "backoff"}, where))
    attempts = entry.get("attempts", DEFAULT_RETRY.attempts)
    if not _bounded_int(attempts, 0, MAX_RETRY_ATTEMPTS):
        problems.append((f"{where}/attempts", f"must be an integer 0..{MAX_RETRY_ATTEMPTS}"))
        attempts = DEFAULT_RETRY.attempts
    codes: list[int] = []
    for index, code in enumerate(
        _list(entry.get("codes"), f"{where}/codes", MAX_RETRY_CODES, problems)
    ):
        if not _bounded_int(code, 400, 599):
            problems.append((f"{where}/codes/{index}", "must be an HTTP status 400..599"))
        elif code in codes:
            problems.append((f"{where}/codes/{index}", f"{code} is listed twice"))
        else:
            codes.append(code)
    backoff = _duration(entry.get("backoff"), f"{where}/backoff", MAX_BACKOFF_SECONDS, problems)
    return Retry(attempts=attempts, codes=tuple(codes), backoff=backoff or 0.0)


def _session(value: object, where: str, problems: Problems) -> SessionPersistence | None:
    if value is None:
        return None
    fields = {"type", "sessionName", "absoluteTimeout", "idleTimeout", "cookieConfig"}
    entry = _object(value, where, "{type, sessionName, absoluteTimeout, cookieConfig}", problems)
    if entry is None:
        return None
    count = len(problems)
    problems.extend(_unknown(entry, fields, where))
    kind, name = entry.get("type", "Cookie"), entry.get("sessionName", "edgefleet-session")
    if kind not in set(SessionType):
        problems.append((f"{where}/type", "must be Cookie or Header"))
    if not _fits(name, MAX_SESSION_NAME_CHARS, _TOKEN):
        problems.append((f"{where}/sessionName", "must be a cookie/header name (token)"))
    if entry.get("idleTimeout") is not None:
        problems.append((f"{where}/idleTimeout", "is not supported: affinity is a stateless hash"))
    timeout = _duration(
        entry.get("absoluteTimeout"), f"{where}/absoluteTimeout", 365 * 86_400, problems
    )
    lifetime = "Session"
    config = entry.get("cookieConfig")
    if config is not None:
        body = _object(config, f"{where}/cookieConfig", "{lifetimeType}", problems) or {}
        problems.extend(_unknown(body, {"lifetimeType"}, f"{where}/cookieConfig"))
        lifetime = body.get("lifetimeType", "Session")
        if lifetime not in ("Session", "Permanent"):
            problems.append((f"{where}/cookieConfig/lifetimeType", "must be Session or Permanent"))
    if timeout is not None and lifetime != "Permanent":
        problems.append(
            (f"{where}/absoluteTimeout", "needs cookieConfig.lifetimeType Permanent (a Max-Age)")
        )
    if len(problems) > count:
        return None
    return SessionPersistence(type=SessionType(kind), session_name=name, absolute_timeout=timeout)


def _health_check(value: object, problems: Problems) -> HealthCheck | None:
    where = "/spec/healthCheck"
    if value is None:
        return None
    fields = {"path", "intervalSeconds", "timeoutSeconds", "unhealthyThreshold", "healthyThreshold"}
    entry = _object(value, where, "{path, intervalSeconds, ...}", problems)
    if entry is None:
        return None
    count = len(problems)
    problems.extend(_unknown(entry, fields, where))
    found: Problems = []
    path = _path({"type": "Exact", "value": entry.get("path", "/")}, where, found).value
    # _path names the value ".../value"; here it is the check's "path" field.
    problems.extend((f"{where}/path", message) for _, message in found)
    bounds = {
        "intervalSeconds": (MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL, 5),
        "timeoutSeconds": (MIN_CHECK_TIMEOUT, MAX_CHECK_TIMEOUT, 2),
        "unhealthyThreshold": (1, MAX_THRESHOLD, 3),
        "healthyThreshold": (1, MAX_THRESHOLD, 2),
    }
    numbers: dict[str, int] = {}
    for key, (low, high, default) in bounds.items():
        number = entry.get(key, default)
        if not _bounded_int(number, low, high):
            problems.append((f"{where}/{key}", f"must be an integer {low}..{high}"))
        numbers[key] = number
    if len(problems) > count:
        return None
    if numbers["timeoutSeconds"] > numbers["intervalSeconds"]:
        problems.append((f"{where}/timeoutSeconds", "must not exceed intervalSeconds"))
        return None
    return HealthCheck(
        path=path,
        interval_seconds=numbers["intervalSeconds"],
        timeout_seconds=numbers["timeoutSeconds"],
        unhealthy_threshold=numbers["unhealthyThreshold"],
        healthy_threshold=numbers["healthyThreshold"],
    )


# ---------------------------------------------------------------- rules and spec


_RULE_FIELDS = {
    "name",
    "matches",
    "filters",
    "backendRefs",
    "timeouts",
    "retry",
    "sessionPersistence",
}


def _rule(item: object, index: int, names: set[str], problems: Problems) -> RouteRule | None:
    where = f"/spec/rules/{index}"
    entry = _object(item, where, "{matches, filters, backendRefs, ...}", problems)
    if entry is None:
        return None
    count = len(problems)
    problems.extend(_unknown(entry, _RULE_FIELDS, where))
    name = entry.get("name")
    if name is not None:
        if not _fits(name, MAX_DNS_LABEL, _DNS_LABEL):
            problems.append((f"{where}/name", "must be a DNS label (a-z, 0-9, '-'; 1..63)"))
        elif name in names:
            problems.append((f"{where}/name", f"{name!r} names an earlier rule too"))
        else:
            names.add(name)
    matches = _matches(entry.get("matches"), f"{where}/matches", problems)
    filters = _filters(entry.get("filters"), f"{where}/filters", problems)
    backends = _backends(entry.get("backendRefs"), f"{where}/backendRefs", problems)
    timeouts = _timeouts(entry.get("timeouts"), f"{where}/timeouts", problems)
    retry = _retry(entry.get("retry"), f"{where}/retry", problems)
    session = _session(entry.get("sessionPersistence"), f"{where}/sessionPersistence", problems)
    if len(problems) > count:
        return None
    return RouteRule(
        name=name,
        matches=matches,
        backends=backends,
        request_headers=filters.request,
        response_headers=filters.response,
        mirrors=tuple(filters.mirrors),
        timeouts=timeouts,
        retry=retry,
        session=session,
    )


def _raise(problems: Problems) -> None:
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(("", f"and {len(problems) - MAX_PROBLEMS} more problems"))
        raise SpecError(shown)


def parse_spec(spec: object) -> RouteSpec:
    """``MultiClusterRoute.spec``, or ``SpecError`` with every problem (paths under ``/spec``).

    The signature of ``fleet_model.documents.KindInfo.parse_spec``.
    """
    if not isinstance(spec, dict):
        raise SpecError([("/spec", "must be an object {hostnames, rules}")])
    problems: Problems = _unknown(spec, {"hostnames", "rules", "healthCheck"}, "/spec")
    hostnames = _hostnames(spec.get("hostnames"), problems)
    health = _health_check(spec.get("healthCheck"), problems)
    rules: list[RouteRule] = []
    value = spec.get("rules")
    if not isinstance(value, list) or not value:
        problems.append(("/spec/rules", "must be a non-empty list of rules"))
    else:
        names: set[str] = set()
        for index, item in enumerate(_list(value, "/spec/rules", MAX_RULES, problems)):
            rule = _rule(item, index, names, problems)
            if rule is not None:
                rules.append(rule)
    _raise(problems)
    return RouteSpec(hostnames=hostnames, rules=tuple(rules), health_check=health)


def parse_route(doc: object) -> Route:
    """The whole MultiClusterRoute ``doc`` (as stored), or ``SpecError`` listing every problem.

    ``apiVersion`` and ``kind`` must be ours; ``metadata.name`` a DNS-1123 subdomain;
    ``metadata.creationTimestamp`` (RFC 3339) is kept for precedence, 0 when absent.
    """
    if not isinstance(doc, dict):
        raise SpecError([("", "must be an object {apiVersion, kind, metadata, spec}")])
    problems: Problems = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(("/apiVersion", f"must be {API_VERSION!r}"))
    if doc.get("kind") != KIND:
        problems.append(("/kind", f"must be {KIND!r}"))
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        problems.append(("/metadata", "must be an object with at least a name"))
        metadata = {}
    name = metadata.get("name")
    if not is_name(name):
        problems.append(("/metadata/name", "must be a DNS-1123 subdomain (at most 253 chars)"))
    stamp = metadata.get("creationTimestamp")
    created = 0.0 if stamp is None else parse_time(stamp)
    if created is None:
        problems.append(("/metadata/creationTimestamp", "must be an RFC 3339 time"))
    spec: RouteSpec | None = None
    try:
        spec = parse_spec(doc.get("spec"))
    except SpecError as error:
        problems.extend(error.problems)
    _raise(problems)
    assert spec is not None  # noqa: S101 - problems were raised otherwise
    return Route(name=str(name), created=created or 0.0, spec=spec)


# ---------------------------------------------------------------- requests and the table


def normalize_host(authority: str) -> str:
    """The ``Host`` header (or :authority) as matched: lower case, no port, no trailing dot."""
    host = authority.strip().lower()
    if host.startswith("["):  # an IPv6 literal never matches a hostname; keep it whole
        return host.split("]", 1)[0] + "]"
    host = host.rsplit(":", 1)[0] if ":" in host else host
    return host.rstrip(".")


def host_matches(pattern: str, host: str) -> bool:
    """Gateway API hostname matching: exact, or ``*.suffix`` for one or more labels before."""
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix)
    return pattern == host


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """What matching looks at: a request head, already parsed and bounded by the data path."""

    method: str
    host: str
    """Normalized (``normalize_host``)."""
    path: str
    """The path without the query, as sent (not percent-decoded: Gateway API matches raw)."""
    headers: tuple[tuple[str, str], ...] = ()
    """(name, value) pairs in the order sent; names in any case."""
    query: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, *, method: str, authority: str, target: str, headers: Sequence[tuple[str, str]] = ()
    ) -> Request:
        """From an HTTP/1.1 request line's ``target`` (origin form) and the ``Host`` header."""
        path, _, query = target.partition("?")
        # Only the first MAX_QUERY_PAIRS pairs are looked at (parse_qsl would raise beyond).
        query = "&".join(query.split("&", MAX_QUERY_PAIRS)[:MAX_QUERY_PAIRS])
        pairs = parse_qsl(query, keep_blank_values=True) if query else []
        return cls(
            method=method.upper(),
            host=normalize_host(authority),
            path=path.split("#", 1)[0] or "/",
            headers=tuple(headers),
            query=tuple(pairs),
        )

    def header(self, lower_name: str) -> str | None:
        """All values of a header joined by ``,`` (RFC 9110 §5.3), None if absent."""
        values = [value for name, value in self.headers if name.lower() == lower_name]
        return ",".join(values) if values else None

    def query_param(self, name: str) -> str | None:
        """The first value of a query parameter, None if absent."""
        for key, value in self.query:
            if key == name:
                return value
        return None


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteHit:
    route: Route
    rule_index: int
    match_index: int

    @property
    def rule(self) -> RouteRule:
        return self.route.spec.rules[self.rule_index]

    @property
    def rule_key(self) -> tuple[str, int]:
        """(route name, rule index): what the driver keys its Balancer and counters by."""
        return (self.route.name, self.rule_index)


_Entry = tuple[tuple[Any, ...], RouteMatch, Route, int, int]


def _static_key(route: Route, rule: int, index: int, match: RouteMatch) -> tuple[Any, ...]:
    return (*match.rank(), route.created, route.name, rule, index)


class RouteTable:
    """Every route's matches, in Gateway API precedence: ``match`` returns the first that fits.

    Built once per set of routes (rebuild on any change; it is immutable). Entries are bucketed
    by hostname so that the hostname criterion (first in precedence) costs dict lookups: the
    request's exact host, then its wildcard suffixes longest first, then routes without
    hostnames; inside a bucket the entries are in the static order (criteria 2-8).
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        exact: dict[str, list[_Entry]] = {}
        wildcard: dict[str, list[_Entry]] = {}
        anyhost: list[_Entry] = []
        for route in routes:
            entries = [
                (_static_key(route, r, m, match), match, route, r, m)
                for r, rule in enumerate(route.spec.rules)
                for m, match in enumerate(rule.matches)
            ]
            if not route.spec.hostnames:
                anyhost.extend(entries)
            for host in route.spec.hostnames:
                bucket = wildcard if host.startswith("*.") else exact
                bucket.setdefault(host.removeprefix("*."), []).extend(entries)
        self._exact = {host: _sorted(found) for host, found in exact.items()}
        self._wildcard = {suffix: _sorted(found) for suffix, found in wildcard.items()}
        self._any = _sorted(anyhost)

    def candidates(self, host: str) -> Iterable[_Entry]:
        """Entries for ``host`` in precedence order (a generator: stops where the caller does)."""
        yield from self._exact.get(host, ())
        labels = host.split(".")
        for start in range(1, len(labels)):
            yield from self._wildcard.get(".".join(labels[start:]), ())
        yield from self._any

    def match(self, request: Request) -> RouteHit | None:
        """The rule that takes ``request``, or None (the gateway answers 404)."""
        for _, match, route, rule, index in self.candidates(request.host):
            if match.matches(request):
                return RouteHit(route=route, rule_index=rule, match_index=index)
        return None


def _sorted(entries: list[_Entry]) -> list[_Entry]:
    return sorted(entries, key=lambda entry: entry[0])
