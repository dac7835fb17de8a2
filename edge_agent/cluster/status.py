"""Cluster status: what a cluster agent reports about its member cluster (issue 12).

``ClusterStatusSource.run()`` samples the member API server every ``interval`` seconds;
``metrics()`` is an extra source of the agent's ``NodeStatusReporter``, registered under the
name ``cluster`` (``SOURCE_NAME``), which prefixes every key, so the cloud sees::

    cluster.version                  gitVersion of /version ("v1.36.3")
    cluster.nodes.total, cluster.nodes.ready          (Ready condition "True")
    cluster.pods.pending|running|succeeded|failed|unknown
    cluster.cpu.allocatable_cores, cluster.cpu.requested_cores        (float cores)
    cluster.memory.allocatable_bytes, cluster.memory.requested_bytes  (int bytes)
    cluster.apiserver.healthy        GET /readyz answered 2xx (and the whole sample worked)
    cluster.apiserver.latency_ms     how long /readyz took
    cluster.updated_at               UNIX seconds of the last complete sample

Rules:

* Nodes and pods are listed in pages (``limit``/``continue``, 500 a page as kubectl does) and
  folded into counters page by page: a cluster of 5,000+ pods never sits in memory whole.
* Requests count non-terminated pods only (phase not Succeeded/Failed), with Kubernetes' own
  effective-request rule (``k8s.io/component-helpers/resource``: the sum of the app containers
  and sidecars against the largest init container, pod-level requests when set, plus the
  pod's ``overhead``); unscheduled (Pending) pods count, they ask for the capacity too.
* A sample is all or nothing: if any GET fails (or the sample outlasts ``timeout``), the last
  good values stay and ``apiserver.healthy`` turns false; ``updated_at`` then says how old
  they are. One log line when the API server goes bad and one when it is back.
* ``get_json`` is the agent's ``GetJson`` (``member_api``): JSON only, so ``/readyz``'s plain
  ``ok`` comes back as an error carrying its 2xx status (the answer was not JSON): ready.
* ``inventory()`` is the same sample as the fleet's cluster claims want it (issue 14): the
  Kubernetes version, node count, allocatable and capacity CPU and memory summed over nodes,
  the region and zone most nodes carry (well-known labels ``topology.kubernetes.io/region``
  and ``zone``; ties go to the smaller value) and the platform (the scheme of most nodes'
  ``spec.providerID``, e.g. ``aws``, ``gce``, ``kwok``; ``other`` when none has one).
* Quantities ("100m", "1.5Gi", "2e3", "1E") are parsed exactly (``Decimal``) by
  ``parse_quantity``; a value Kubernetes itself would refuse is skipped with a log line, never
  a failed sample (the API server validates quantities, so this is defence only).
"""

from __future__ import annotations

import asyncio
import collections
import decimal
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from edge_agent.cluster.member_api import GetJson

log = logging.getLogger("edge_agent.cluster.status")

__all__ = [
    "PAGE_SIZE",
    "SOURCE_NAME",
    "ClusterInventory",
    "ClusterStatusSource",
    "GetJson",
    "QuantityError",
    "parse_quantity",
    "pod_requests",
]

SOURCE_NAME = "cluster"
"""The name to register ``metrics`` under in ``NodeStatusReporter(extra_sources=...)``."""

PAGE_SIZE = 500
"""Objects per list page: kubectl's default; ~1.5 MB of pods, bounded whatever the cluster."""

PHASES = ("pending", "running", "succeeded", "failed", "unknown")
_TERMINATED = frozenset({"succeeded", "failed"})
_MAX_PAGES = 10_000
"""A safety net against an API server that keeps sending ``continue``: 5 M objects."""

# ------------------------------------------------------------------ quantities


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


_QUANTITY_RE = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE]?)"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_MAX_TEXT = 64
"""Characters: the longest quantity accepted (real ones are under 20)."""
_INT32 = 2**31
_CONTEXT = decimal.Context(prec=60, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
"""Exact for every sum we make; exponents as large as Kubernetes' (int32) neither trap nor
round."""
_INT64_MAX = 2**63 - 1


def parse_quantity(text: str) -> Decimal:
    """The exact value of a Kubernetes quantity (``resource.ParseQuantity``'s grammar).

    ``"100m"`` -> 0.1, ``"1Gi"`` -> 1073741824, ``"1e3"`` -> 1000, ``"1E"`` -> 10**18 (exa),
    ``"1.5Ki"`` -> 1536. QuantityError for anything else (``"1e"``, ``"1 Gi"``, ``"Mi"``).
    """
    if len(text) > _MAX_TEXT:
        raise QuantityError(f"not a quantity (over {_MAX_TEXT} characters): {text[:20]!r}...")
    match = _QUANTITY_RE.fullmatch(text)
    if match is None:
        raise QuantityError(f"not a quantity: {text!r}")
    number = Decimal(match["number"])
    if match["sign"] == "-":
        number = -number
    suffix = match["suffix"]
    if suffix in _BINARY:
        return _CONTEXT.multiply(number, Decimal(1024) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        exponent = _DECIMAL[suffix]
    else:
        exponent = int(suffix[1:])
        if not -_INT32 <= exponent < _INT32:  # Kubernetes reads the exponent as an int32
            raise QuantityError(f"exponent out of range in {text!r}")
    return number.scaleb(exponent, context=_CONTEXT)


def _clamp(value: Decimal) -> Decimal:
    """Saturate at int64 as Kubernetes' ``Value()`` and ``MilliValue()`` do."""
    return max(Decimal(-_INT64_MAX - 1), min(Decimal(_INT64_MAX), value))


def cores(value: Decimal) -> float:
    """CPU cores as a float, from an exact quantity (millicore precision, like the scheduler)."""
    milli = _clamp(_CONTEXT.multiply(value, Decimal(1000)))
    return float(milli.to_integral_value(rounding=decimal.ROUND_CEILING)) / 1000


def whole_bytes(value: Decimal) -> int:
    """Bytes as an int, rounded up as Kubernetes' ``Value()`` does."""
    return int(_clamp(value).to_integral_value(rounding=decimal.ROUND_CEILING))


# ------------------------------------------------------------------ effective pod requests

Resources = dict[str, Decimal]
_RESOURCES = ("cpu", "memory")


def _requests(holder: object, bad: list[str]) -> Resources:
    """``holder.requests`` (a container's ``resources`` or a pod's ``spec.resources``)."""
    raw = holder.get("requests") if isinstance(holder, Mapping) else None
    out: Resources = {}
    if not isinstance(raw, Mapping):
        return out
    for name in _RESOURCES:
        value = raw.get(name)
        if value is None:
            continue
        try:
            out[name] = parse_quantity(value if isinstance(value, str) else str(value))
        except QuantityError as error:
            bad.append(str(error))
    return out


def _add(into: Resources, more: Resources) -> None:
    for name, value in more.items():
        into[name] = _CONTEXT.add(into.get(name, Decimal(0)), value)


def _max(into: Resources, other: Resources) -> None:
    for name, value in other.items():
        if name not in into or value > into[name]:
            into[name] = value


def _containers(spec: Mapping[str, Any], key: str) -> Iterator[Mapping[str, Any]]:
    items = spec.get(key)
    if isinstance(items, list):
        yield from (c for c in items if isinstance(c, Mapping))


def pod_requests(pod: Mapping[str, Any], bad: list[str] | None = None) -> Resources:
    """The pod's effective CPU and memory requests, as the scheduler counts them.

    ``k8s.io/component-helpers/resource.PodRequests``: app containers add up; while the i-th
    init container runs, it and the restartable (sidecar) init containers before it are what
    the pod uses, and sidecars also run beside the app containers; the pod needs the larger of
    the two. Pod-level ``spec.resources.requests`` replace the aggregate where set; the
    runtime ``spec.overhead`` is added last. Unparsable values go to ``bad`` and count 0.
    """
    bad = [] if bad is None else bad
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return {}
    total: Resources = {}
    for container in _containers(spec, "containers"):
        _add(total, _requests(container.get("resources"), bad))
    sidecars: Resources = {}
    init_peak: Resources = {}
    for container in _containers(spec, "initContainers"):
        own = _requests(container.get("resources"), bad)
        if container.get("restartPolicy") == "Always":
            _add(total, own)
            _add(sidecars, own)
            running = dict(sidecars)
        else:
            running = dict(own)
            _add(running, sidecars)
        _max(init_peak, running)
    _max(total, init_peak)
    total.update(_requests(spec.get("resources"), bad))
    overhead = spec.get("overhead")
    if isinstance(overhead, Mapping):
        _add(total, _requests({"requests": overhead}, bad))
    return total


# ------------------------------------------------------------------ one sample


@dataclass
class _Tally:
    """Counters one sample folds its list pages into."""

    nodes_total: int = 0
    nodes_ready: int = 0
    allocatable: Resources = field(default_factory=dict)
    pods: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    requested: Resources = field(default_factory=dict)
    bad_quantities: list[str] = field(default_factory=list)
    capacity: Resources = field(default_factory=dict)
    regions: collections.Counter[str] = field(default_factory=collections.Counter)
    zones: collections.Counter[str] = field(default_factory=collections.Counter)
    platforms: collections.Counter[str] = field(default_factory=collections.Counter)

    def add_node(self, node: Mapping[str, Any]) -> None:
        self.nodes_total += 1
        self._place(node)
        status = node.get("status")
        status = status if isinstance(status, Mapping) else {}
        _add(self.capacity, _requests({"requests": status.get("capacity")}, self.bad))
        conditions = status.get("conditions")
        if isinstance(conditions, list) and any(
            isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
            for c in conditions
        ):
            self.nodes_ready += 1
        _add(self.allocatable, _requests({"requests": status.get("allocatable")}, self.bad))

    def _place(self, node: Mapping[str, Any]) -> None:
        metadata = node.get("metadata")
        labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
        if isinstance(labels, Mapping):
            for key, counter in ((REGION_LABEL, self.regions), (ZONE_LABEL, self.zones)):
                value = labels.get(key)
                if isinstance(value, str) and value:
                    counter[value[:_MAX_LABEL]] += 1
        spec = node.get("spec")
        provider = spec.get("providerID") if isinstance(spec, Mapping) else None
        if isinstance(provider, str) and "://" in provider:
            self.platforms[provider.partition("://")[0][:_MAX_LABEL].lower()] += 1

    def inventory(self, version: str) -> ClusterInventory:
        zero = Decimal(0)
        return ClusterInventory(
            version=version,
            nodes=self.nodes_total,
            allocatable_cpu=self.allocatable.get("cpu", zero),
            allocatable_memory=self.allocatable.get("memory", zero),
            capacity_cpu=self.capacity.get("cpu", zero),
            capacity_memory=self.capacity.get("memory", zero),
            region=_most_common(self.regions),
            zone=_most_common(self.zones),
            platform=_most_common(self.platforms) or "other",
        )

    def add_pod(self, pod: Mapping[str, Any]) -> None:
        status = pod.get("status")
        phase = status.get("phase") if isinstance(status, Mapping) else None
        # The API server sets Pending on create (so none means not started yet); a phase
        # unheard of is "unknown".
        key = "pending" if phase is None else str(phase).lower()
        if key not in PHASES:
            key = "unknown"
        self.pods[key] += 1
        if key not in _TERMINATED:
            _add(self.requested, pod_requests(pod, self.bad))

    @property
    def bad(self) -> list[str]:
        return self.bad_quantities

    def metrics(self) -> dict[str, object]:
        zero = Decimal(0)
        return {
            "nodes.total": self.nodes_total,
            "nodes.ready": self.nodes_ready,
            **{f"pods.{phase}": count for phase, count in self.pods.items()},
            "cpu.allocatable_cores": cores(self.allocatable.get("cpu", zero)),
            "cpu.requested_cores": cores(self.requested.get("cpu", zero)),
            "memory.allocatable_bytes": whole_bytes(self.allocatable.get("memory", zero)),
            "memory.requested_bytes": whole_bytes(self.requested.get("memory", zero)),
        }


REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
_MAX_LABEL = 63
"""Characters kept of a label value or provider scheme (a label value's own limit)."""


def _most_common(counter: collections.Counter[str]) -> str | None:
    """The value most nodes carry; ties go to the smaller value (deterministic)."""
    if not counter:
        return None
    return min(counter.items(), key=lambda item: (-item[1], item[0]))[0]


@dataclass(frozen=True, kw_only=True)
class ClusterInventory:
    """What the cluster is, from one sample: the fleet's claims and resources (issue 14)."""

    version: str
    nodes: int
    allocatable_cpu: Decimal
    """Cores, exact (summed ``status.allocatable.cpu`` of every node)."""
    allocatable_memory: Decimal
    """Bytes, exact."""
    capacity_cpu: Decimal
    capacity_memory: Decimal
    region: str | None
    zone: str | None
    platform: str


class ListError(RuntimeError):
    """A list answer that is not a Kubernetes list."""


def _answered(error: Exception) -> bool:
    """Whether ``error`` means "2xx, but not JSON" (``/readyz`` says ``ok`` in plain text)."""
    if isinstance(error, ValueError):  # json.JSONDecodeError and friends: the body was 2xx
        return True
    # MemberApiError and aiohttp.ContentTypeError carry the HTTP status: 2xx means answered.
    status = getattr(error, "status", None)
    return isinstance(status, int) and 200 <= status < 300


class ClusterStatusSource:
    """Samples the member cluster every ``interval`` seconds; ``metrics()`` is the latest."""

    def __init__(
        self,
        *,
        get_json: GetJson,
        interval: float,
        page_size: int = PAGE_SIZE,
        timeout: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Sample with ``get_json``; ``page_size`` objects per list page.

        ``timeout``: seconds one whole sample may take (default ``max(30, 3 * interval)``:
        5,000 pods over a slow site link take a few seconds; a hung API server must not stall
        the reports forever).
        """
        if interval <= 0 or page_size < 1:
            raise ValueError("interval must be > 0 and page_size >= 1")
        self._get = get_json
        self.interval = interval
        self._page_size = page_size
        self._timeout = timeout if timeout is not None else max(30.0, 3 * interval)
        self._clock = clock
        self._values: dict[str, object] = {}
        self._inventory: ClusterInventory | None = None
        self._healthy: bool | None = None
        self.samples = 0
        self.failures = 0
        self.last_error: str | None = None

    def metrics(self) -> dict[str, object]:
        """The latest sample, keys relative to ``SOURCE_NAME`` (``nodes.total``, ...)."""
        out = dict(self._values)
        if self._healthy is not None:
            out["apiserver.healthy"] = self._healthy
        return out

    def inventory(self) -> ClusterInventory | None:
        """The latest complete sample as claims and resources; None before the first one."""
        return self._inventory

    @property
    def healthy(self) -> bool | None:
        """Whether the last sample worked (``/readyz`` answered); None before the first."""
        return self._healthy

    async def run(self) -> None:
        """Sample now and every ``interval`` seconds after the previous sample started."""
        while True:
            started = time.monotonic()
            await self.sample()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def sample(self) -> bool:
        """Take one sample; whether it worked (it never raises but for cancellation)."""
        try:
            async with asyncio.timeout(self._timeout):
                values, inventory = await self._collect()
        except Exception as error:  # noqa: BLE001 - any failure means "keep the last values"
            self._failed(error)
            return False
        self._values = values
        self._inventory = inventory
        self.samples += 1
        if self._healthy is False:
            log.info("member API server answers again")
        self._healthy = True
        self.last_error = None
        return True

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        text = (
            f"no complete answer within {self._timeout:.0f} s"
            if isinstance(error, TimeoutError)
            else f"{type(error).__name__}: {error}"[:300]
        )
        if self._healthy is not False or text != self.last_error:
            log.warning("cluster status sample failed; keeping the last values: %s", text)
        self._healthy = False
        self.last_error = text

    async def _collect(self) -> tuple[dict[str, object], ClusterInventory]:
        started = time.monotonic()
        try:
            await self._get("/readyz")
        except Exception as error:
            if not _answered(error):
                raise
        latency = (time.monotonic() - started) * 1000
        version = await self._get("/version")
        git_version = version.get("gitVersion") if isinstance(version, Mapping) else None
        if not isinstance(git_version, str):
            raise ListError("/version has no gitVersion")
        tally = _Tally()
        async for node in self._list("/api/v1/nodes"):
            tally.add_node(node)
        async for pod in self._list("/api/v1/pods"):
            tally.add_pod(pod)
        if tally.bad_quantities:
            log.warning(
                "%d quantities that are not Kubernetes quantities counted as 0, e.g. %s",
                len(tally.bad_quantities),
                tally.bad_quantities[0],
            )
        values: dict[str, object] = {
            "version": git_version[:64],
            **tally.metrics(),
            "apiserver.latency_ms": round(latency, 1),
            "updated_at": round(self._clock(), 3),
        }
        return values, tally.inventory(git_version[:64])

    async def _list(self, path: str) -> AsyncIterator[Mapping[str, Any]]:
        """Every item of a list, page by page; only one page is held at a time."""
        token: object = ""
        for _ in range(_MAX_PAGES):
            query = f"?limit={self._page_size}"
            if isinstance(token, str) and token:
                query += "&continue=" + quote(token, safe="")
            page = await self._get(path + query)
            items = page.get("items") if isinstance(page, Mapping) else None
            if not isinstance(items, list):
                raise ListError(f"{path} did not answer a list")
            for item in items:
                if isinstance(item, Mapping):
                    yield item
            metadata = page.get("metadata")
            token = metadata.get("continue") if isinstance(metadata, Mapping) else None
            del page, items  # the next page replaces this one, not joins it
            if not token or not isinstance(token, str):
                return
        raise ListError(f"{path}: more than {_MAX_PAGES} pages")
