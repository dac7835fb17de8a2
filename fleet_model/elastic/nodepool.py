"""NodePool (``elastic.edgefleet.io/v1alpha1``, cluster-scoped): parsing into a typed view.

Rules:

* ``spec.priority``: an integer from -1,000,000 to 1,000,000; higher grows first and shrinks
  last. Equal priorities are ordered by pool name (``scale_up_order``), never at random.
* ``spec.min`` / ``spec.max``: node counts, 0 <= min <= max <= ``MAX_POOL_NODES``; ``min``
  defaults to 0 and ``max`` is required (an elastic pool without a ceiling is a bill).
* ``spec.node``: the shape of every node the pool creates. ``labels`` (at most
  ``MAX_NODE_LABELS``, label keys and values; the pool label ``elastic.edgefleet.io/pool`` is
  set by us and may not be given), ``taints`` (at most ``MAX_NODE_TAINTS``, effect NoSchedule,
  PreferNoSchedule or NoExecute, one per key and effect) and ``capacity`` (``cpu``, ``memory``:
  positive Kubernetes quantities; ``pods``: an integer from 1 to ``MAX_PODS_PER_NODE``; all
  three required: the autoscaler simulates fit on them; up to ``MAX_EXTRA_RESOURCES`` more
  resources by name, e.g. ``ephemeral-storage`` or ``nvidia.com/gpu``, each a quantity >= 0:
  a pod that requests a resource the shape does not list never fits the pool, as with the
  scheduler).
* ``spec.provider``: exactly one of ``{kwok: {}}`` (kwok-managed Node objects, for tests and
  demos) or ``{command: {path, args?, timeoutSeconds?}}`` (an operator's executable: ``path``
  absolute, ``args`` at most ``MAX_COMMAND_ARGS`` strings, ``timeoutSeconds`` 1..3600, default
  ``DEFAULT_COMMAND_TIMEOUT_SECONDS``).
* ``spec.scaleDown``: ``emptyAfterSeconds`` (default ``DEFAULT_EMPTY_AFTER_SECONDS``),
  ``underUsedAfterSeconds`` (default ``DEFAULT_UNDER_USED_AFTER_SECONDS``), each 0..86400,
  and ``utilizationBelow`` (a number 0..1, default ``DEFAULT_UTILIZATION_BELOW``; 0 turns
  under-used scale-down off).
* Unknown fields are problems, as the CRD's structural schema would make them.

``parse_node_pool(doc)`` takes the whole object as the API server returns it and raises
``SpecError`` listing every problem with its JSON pointer. Every list and map is bounded before
it is walked, so a huge document costs no more than a small one.

The command provider's protocol (the driver runs ``path args... create|delete``):

* stdin is one JSON document, ``command_input``: ``{"apiVersion", "kind": "NodeRequest",
  "operation": "create", "pool", "count", "node": {"labels", "taints", "capacity"}}`` or
  ``{..., "operation": "delete", "pool", "nodeName"}``. The labels include the pool label;
  the nodes must carry them (that is how they are counted).
* exit status 0 is success. For ``create`` stdout is ``{"nodes": ["name", ...]}``: the names
  of the nodes made (at most ``count``, DNS-1123, distinct), read by
  ``parse_command_output``, which raises ValueError with a short, clear message for anything
  else (garbage, more names than asked, more than ``MAX_COMMAND_OUTPUT`` bytes). stdout of
  ``delete`` is not read. stderr is the driver's to quote in Events.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import Any

from fleet_model.cluster import parse_quantity
from fleet_model.problems import SpecError, escape, is_name
from fleet_model.selectors import label_problem

__all__ = [
    "API_VERSION",
    "DEFAULT_COMMAND_TIMEOUT_SECONDS",
    "DEFAULT_EMPTY_AFTER_SECONDS",
    "DEFAULT_UNDER_USED_AFTER_SECONDS",
    "DEFAULT_UTILIZATION_BELOW",
    "GROUP",
    "KIND",
    "MAX_POOL_NODES",
    "POOL_LABEL",
    "CommandProvider",
    "KwokProvider",
    "NodePool",
    "NodeShape",
    "NodeTaint",
    "ScaleDown",
    "TaintEffect",
    "command_input",
    "parse_command_output",
    "parse_node_pool",
    "scale_down_order",
    "scale_up_order",
]

GROUP = "elastic.edgefleet.io"
API_VERSION = f"{GROUP}/v1alpha1"
KIND = "NodePool"
POOL_LABEL = f"{GROUP}/pool"
"""The label every node of a pool carries, its value the pool's name: how nodes are counted."""

MIN_PRIORITY, MAX_PRIORITY = -1_000_000, 1_000_000
MAX_POOL_NODES = 1000
"""Nodes in one pool: Cluster Autoscaler's tests go to 1,000 nodes per cluster; more is a typo."""
MAX_NODE_LABELS = 64
MAX_NODE_TAINTS = 32
MAX_PODS_PER_NODE = 10_000
"""kubelet's default is 110; virtual nodes (one node for a whole serverless account) go higher."""
MAX_EXTRA_RESOURCES = 16
"""Resources beyond cpu, memory and pods in a node shape (storage, GPUs, hugepages)."""
MAX_COMMAND_ARGS = 64
MAX_COMMAND_CHARS = 4096
"""Characters of the command's path and of each argument (PATH_MAX on Linux)."""
MAX_COMMAND_TIMEOUT_SECONDS = 3600
MAX_COMMAND_OUTPUT = 64 * 1024
"""Bytes of a create command's stdout: a thousand node names fit with room to spare."""
DEFAULT_COMMAND_TIMEOUT_SECONDS = 120
"""Seconds a provider command may run: a cloud VM create answers in about a minute."""
MAX_SCALE_DOWN_SECONDS = 86_400
DEFAULT_EMPTY_AFTER_SECONDS = 300
"""An empty node costs money and shelters nothing: five minutes absorbs a rollout's churn."""
DEFAULT_UNDER_USED_AFTER_SECONDS = 600
"""Cluster Autoscaler's scale-down-unneeded-time: moving pods disturbs them, so wait longer."""
DEFAULT_UTILIZATION_BELOW = Fraction(1, 2)
"""Cluster Autoscaler's scale-down-utilization-threshold (requests over allocatable)."""


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeTaint:
    key: str
    effect: TaintEffect
    value: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeShape:
    labels: Mapping[str, str] = field(default_factory=dict)
    """The new node's labels, the pool label included."""
    taints: tuple[NodeTaint, ...] = ()
    cpu: Fraction
    """Cores (``parse_quantity`` of the written value, exact)."""
    memory: Fraction
    """Bytes."""
    pods: int
    """How many pods the node takes."""
    extra: Mapping[str, Fraction] = field(default_factory=dict)
    """Other resources by name (``ephemeral-storage`` in bytes, ``nvidia.com/gpu``...)."""

    def allocatable(self) -> dict[str, Fraction]:
        """The node's capacity as fit.py counts resources (names as in ``status.allocatable``)."""
        return {**self.extra, "cpu": self.cpu, "memory": self.memory, "pods": Fraction(self.pods)}


@dataclass(frozen=True, kw_only=True, slots=True)
class KwokProvider:
    """kwok manages the Node objects; creating a node is writing one."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CommandProvider:
    path: str
    args: tuple[str, ...] = ()
    timeout_seconds: int = DEFAULT_COMMAND_TIMEOUT_SECONDS


@dataclass(frozen=True, kw_only=True, slots=True)
class ScaleDown:
    empty_after_seconds: int = DEFAULT_EMPTY_AFTER_SECONDS
    under_used_after_seconds: int = DEFAULT_UNDER_USED_AFTER_SECONDS
    utilization_below: Fraction = DEFAULT_UTILIZATION_BELOW


@dataclass(frozen=True, kw_only=True, slots=True)
class NodePool:
    name: str
    priority: int = 0
    min: int = 0
    max: int
    node: NodeShape
    provider: KwokProvider | CommandProvider
    scale_down: ScaleDown = field(default_factory=ScaleDown)


def scale_up_order(pools: Iterable[NodePool]) -> list[NodePool]:
    """Pools in the order they grow: highest priority first, ties by name."""
    return sorted(pools, key=lambda pool: (-pool.priority, pool.name))


def scale_down_order(pools: Iterable[NodePool]) -> list[NodePool]:
    """Pools in the order they shrink: exactly the reverse of ``scale_up_order``."""
    return scale_up_order(pools)[::-1]


# ---------------------------------------------------------------- parsing

Problems = list[tuple[str, str]]


def _unknown(value: Mapping[Any, Any], allowed: set[str], where: str, problems: Problems) -> None:
    unknown = set(value) - allowed
    if unknown:
        names = ", ".join(sorted(map(str, unknown))[:10])
        problems.append((where, f"unknown fields: {names}"))


def _object(value: object, where: str, problems: Problems) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        problems.append((where, "must be an object"))
        return None
    return value


def _integer(value: object, where: str, problems: Problems, *, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.append((where, f"must be an integer from {low} to {high}"))
        return None
    return value


def _labels(value: object, where: str, problems: Problems) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append((where, "must be an object of label: value"))
        return {}
    if len(value) > MAX_NODE_LABELS:
        problems.append((where, f"at most {MAX_NODE_LABELS} labels"))
        return {}
    out: dict[str, str] = {}
    for key, item in sorted(value.items(), key=lambda pair: str(pair[0])):
        at = f"{where}/{escape(str(key))}"
        problem = label_problem(key, key=True) or label_problem(item, key=False)
        if problem is not None:
            problems.append((at, problem))
        elif key == POOL_LABEL:
            problems.append((at, "set by the pool itself (its name); leave it out"))
        else:
            out[key] = item
    return out


def _taint(item: object, where: str, problems: Problems) -> NodeTaint | None:
    taint = _object(item, where, problems)
    if taint is None:
        return None
    count = len(problems)
    _unknown(taint, {"key", "value", "effect"}, where, problems)
    key, value, effect = taint.get("key"), taint.get("value", ""), taint.get("effect")
    for name, problem in (
        ("key", label_problem(key, key=True)),
        ("value", label_problem(value, key=False)),
    ):
        if problem is not None:
            problems.append((f"{where}/{name}", problem))
    if not isinstance(effect, str) or effect not in set(TaintEffect):
        problems.append((f"{where}/effect", "must be NoSchedule, PreferNoSchedule or NoExecute"))
    if len(problems) > count:
        return None
    return NodeTaint(key=str(key), value=str(value), effect=TaintEffect(str(effect)))


def _taints(value: object, where: str, problems: Problems) -> tuple[NodeTaint, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append((where, "must be a list"))
        return ()
    if len(value) > MAX_NODE_TAINTS:
        problems.append((where, f"at most {MAX_NODE_TAINTS} taints"))
        return ()
    out: list[NodeTaint] = []
    seen: set[tuple[str, TaintEffect]] = set()
    for index, item in enumerate(value):
        taint = _taint(item, f"{where}/{index}", problems)
        if taint is None:
            continue
        if (taint.key, taint.effect) in seen:
            problems.append((f"{where}/{index}", "a taint with this key and effect is above"))
            continue
        seen.add((taint.key, taint.effect))
        out.append(taint)
    return tuple(out)


def _positive_quantity(
    value: object, where: str, problems: Problems, *, zero: bool = False
) -> Fraction | None:
    if value is None:
        problems.append((where, "required"))
        return None
    try:
        amount = parse_quantity(value)
    except ValueError:
        # Not parse_quantity's message: it quotes the whole input, however long.
        problems.append((where, "must be a Kubernetes quantity such as 500m, 2 or 8Gi"))
        return None
    if amount < 0 or (amount == 0 and not zero):
        problems.append((where, "must not be negative" if zero else "must be more than zero"))
        return None
    return amount


def _shape(value: object, pool: str, problems: Problems) -> NodeShape | None:
    node = _object(value, "/spec/node", problems)
    if node is None:
        return None
    count = len(problems)
    _unknown(node, {"labels", "taints", "capacity"}, "/spec/node", problems)
    labels = _labels(node.get("labels"), "/spec/node/labels", problems)
    taints = _taints(node.get("taints"), "/spec/node/taints", problems)
    capacity = _object(node.get("capacity"), "/spec/node/capacity", problems)
    if capacity is None:
        return None
    extra = _extra_resources(capacity, problems)
    cpu = _positive_quantity(capacity.get("cpu"), "/spec/node/capacity/cpu", problems)
    memory = _positive_quantity(capacity.get("memory"), "/spec/node/capacity/memory", problems)
    pods = _integer(
        capacity.get("pods"), "/spec/node/capacity/pods", problems, low=1, high=MAX_PODS_PER_NODE
    )
    if len(problems) > count or cpu is None or memory is None or pods is None:
        return None
    return NodeShape(
        labels={**labels, POOL_LABEL: pool},
        taints=taints,
        cpu=cpu,
        memory=memory,
        pods=pods,
        extra=extra,
    )


def _extra_resources(capacity: Mapping[str, Any], problems: Problems) -> dict[str, Fraction]:
    where = "/spec/node/capacity"
    names = [name for name in capacity if name not in {"cpu", "memory", "pods"}]
    if len(names) > MAX_EXTRA_RESOURCES:
        problems.append(
            (where, f"at most {MAX_EXTRA_RESOURCES} resources besides cpu, memory, pods")
        )
        return {}
    out: dict[str, Fraction] = {}
    for name in sorted(names, key=str):
        at = f"{where}/{escape(str(name))}"
        problem = label_problem(name, key=True)  # resource names are qualified names too
        if problem is not None:
            problems.append((at, f"not a resource name: {problem}"))
            continue
        amount = _positive_quantity(capacity[name], at, problems, zero=True)
        if amount is not None:
            out[str(name)] = amount
    return out


def _command_text(value: object, where: str, problems: Problems) -> str | None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_COMMAND_CHARS or "\0" in value:
        problems.append((where, f"must be a string of 1 to {MAX_COMMAND_CHARS} characters"))
        return None
    return value


def _command(value: object, problems: Problems) -> CommandProvider | None:
    where = "/spec/provider/command"
    command = _object(value, where, problems)
    if command is None:
        return None
    count = len(problems)
    _unknown(command, {"path", "args", "timeoutSeconds"}, where, problems)
    path = _command_text(command.get("path"), f"{where}/path", problems)
    if path is not None and not path.startswith("/"):
        problems.append((f"{where}/path", "must be an absolute path (no PATH lookup)"))
    args: list[str] = []
    raw_args = command.get("args", [])
    if not isinstance(raw_args, list) or len(raw_args) > MAX_COMMAND_ARGS:
        problems.append((f"{where}/args", f"must be a list of at most {MAX_COMMAND_ARGS} strings"))
    else:
        for index, arg in enumerate(raw_args):
            text = _command_text(arg, f"{where}/args/{index}", problems)
            if text is not None:
                args.append(text)
    timeout = _integer(
        command.get("timeoutSeconds", DEFAULT_COMMAND_TIMEOUT_SECONDS),
        f"{where}/timeoutSeconds",
        problems,
        low=1,
        high=MAX_COMMAND_TIMEOUT_SECONDS,
    )
    if len(problems) > count or path is None or timeout is None:
        return None
    return CommandProvider(path=path, args=tuple(args), timeout_seconds=timeout)


def _provider(value: object, problems: Problems) -> KwokProvider | CommandProvider | None:
    provider = _object(value, "/spec/provider", problems)
    if provider is None:
        return None
    _unknown(provider, {"kwok", "command"}, "/spec/provider", problems)
    chosen = [name for name in ("kwok", "command") if name in provider]
    if len(chosen) != 1:
        problems.append(("/spec/provider", "must name exactly one provider: kwok or command"))
        return None
    if chosen == ["kwok"]:
        kwok = _object(provider["kwok"], "/spec/provider/kwok", problems)
        if kwok is None:
            return None
        _unknown(kwok, set(), "/spec/provider/kwok", problems)
        return KwokProvider()
    return _command(provider["command"], problems)


def _utilization(value: object, problems: Problems) -> Fraction | None:
    where = "/spec/scaleDown/utilizationBelow"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        problems.append((where, "must be a number from 0 to 1"))
        return None
    try:
        amount = Fraction(str(value)) if not isinstance(value, str) else parse_quantity(value)
    except ValueError:
        problems.append((where, "must be a number from 0 to 1"))
        return None
    if not 0 <= amount <= 1:
        problems.append((where, "must be a number from 0 to 1"))
        return None
    return amount


def _scale_down(value: object, problems: Problems) -> ScaleDown | None:
    if value is None:
        return ScaleDown()
    scale = _object(value, "/spec/scaleDown", problems)
    if scale is None:
        return None
    where = "/spec/scaleDown"
    _unknown(
        scale, {"emptyAfterSeconds", "underUsedAfterSeconds", "utilizationBelow"}, where, problems
    )
    empty = _integer(
        scale.get("emptyAfterSeconds", DEFAULT_EMPTY_AFTER_SECONDS),
        f"{where}/emptyAfterSeconds",
        problems,
        low=0,
        high=MAX_SCALE_DOWN_SECONDS,
    )
    under = _integer(
        scale.get("underUsedAfterSeconds", DEFAULT_UNDER_USED_AFTER_SECONDS),
        f"{where}/underUsedAfterSeconds",
        problems,
        low=0,
        high=MAX_SCALE_DOWN_SECONDS,
    )
    below = _utilization(scale.get("utilizationBelow", "0.5"), problems)
    if empty is None or under is None or below is None:
        return None
    return ScaleDown(
        empty_after_seconds=empty, under_used_after_seconds=under, utilization_below=below
    )


def _name(doc: Mapping[str, Any], problems: Problems) -> str | None:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not is_name(name) or len(str(name)) > 63:
        # The name is a label value on every node (POOL_LABEL), so 63 characters at most.
        problems.append(("/metadata/name", "must be a DNS-1123 name of at most 63 characters"))
        return None
    return str(name)


def _bounds(spec: Mapping[str, Any], problems: Problems) -> tuple[int, int] | None:
    low = _integer(spec.get("min", 0), "/spec/min", problems, low=0, high=MAX_POOL_NODES)
    if "max" not in spec:
        problems.append(("/spec/max", "required"))
        return None
    high = _integer(spec["max"], "/spec/max", problems, low=0, high=MAX_POOL_NODES)
    if low is None or high is None:
        return None
    if low > high:
        problems.append(("/spec/min", f"must not exceed max ({high})"))
        return None
    return low, high


def parse_node_pool(doc: object) -> NodePool:
    """A NodePool object (as the API server returns it), or ``SpecError`` with every problem."""
    if not isinstance(doc, dict):
        raise SpecError([("", "must be an object")])
    problems: Problems = []
    if doc.get("apiVersion", API_VERSION) != API_VERSION:
        problems.append(("/apiVersion", f"must be {API_VERSION}"))
    if doc.get("kind", KIND) != KIND:
        problems.append(("/kind", f"must be {KIND}"))
    name = _name(doc, problems)
    spec = _object(doc.get("spec"), "/spec", problems)
    if spec is None:
        raise SpecError(problems)
    _unknown(spec, {"priority", "min", "max", "node", "provider", "scaleDown"}, "/spec", problems)
    priority = _integer(
        spec.get("priority", 0), "/spec/priority", problems, low=MIN_PRIORITY, high=MAX_PRIORITY
    )
    bounds = _bounds(spec, problems)
    shape = _shape(spec.get("node"), name or "", problems)
    provider = _provider(spec.get("provider"), problems)
    scale_down = _scale_down(spec.get("scaleDown"), problems)
    if problems:
        raise SpecError(problems)
    assert name is not None  # noqa: S101 - no problems means every part parsed
    assert priority is not None  # noqa: S101
    assert bounds is not None  # noqa: S101
    assert shape is not None  # noqa: S101
    assert provider is not None  # noqa: S101
    assert scale_down is not None  # noqa: S101
    return NodePool(
        name=name,
        priority=priority,
        min=bounds[0],
        max=bounds[1],
        node=shape,
        provider=provider,
        scale_down=scale_down,
    )


# ---------------------------------------------------------------- the command provider's protocol


def command_input(pool: NodePool, *, count: int | None = None, node: str | None = None) -> bytes:
    """The JSON document on a provider command's stdin.

    Create ``count`` nodes, or delete ``node``: exactly one of the two.
    """
    if (count is None) == (node is None):
        raise ValueError("command_input needs a count (create) or a node (delete)")
    request: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "NodeRequest", "pool": pool.name}
    if count is not None:
        capacity = {name: _quantity_text(v) for name, v in pool.node.allocatable().items()}
        request |= {
            "operation": "create",
            "count": count,
            "node": {
                "labels": dict(pool.node.labels),
                "taints": [
                    {"key": t.key, "value": t.value, "effect": str(t.effect)}
                    for t in pool.node.taints
                ],
                "capacity": capacity,
            },
        }
    else:
        request |= {"operation": "delete", "nodeName": node}
    return json.dumps(request, sort_keys=True).encode()


def _quantity_text(amount: Fraction) -> str:
    """``amount`` as a Kubernetes quantity: whole units, else millis rounded up."""
    if amount.denominator == 1:
        return str(amount.numerator)
    return f"{math.ceil(amount * 1000)}m"


def parse_command_output(stdout: bytes, *, asked: int) -> tuple[str, ...]:
    """The node names a create command printed (``{"nodes": [...]}``); ValueError if garbage."""
    if len(stdout) > MAX_COMMAND_OUTPUT:
        raise ValueError(f"provider output longer than {MAX_COMMAND_OUTPUT} bytes")
    try:
        document = json.loads(stdout)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError('provider output is not JSON {"nodes": [...]}') from None
    names = document.get("nodes") if isinstance(document, dict) else None
    if not isinstance(names, list):
        # ValueError like every other bad output: the driver catches one error type.
        raise ValueError('provider output is not JSON {"nodes": [...]}')  # noqa: TRY004
    if len(names) > asked:
        raise ValueError(f"provider printed {len(names)} node names, {asked} were asked for")
    if not all(is_name(name) for name in names):
        raise ValueError("provider printed a node name that is not a DNS-1123 name")
    if len(set(names)) != len(names):
        raise ValueError("provider printed a node name twice")
    return tuple(names)
