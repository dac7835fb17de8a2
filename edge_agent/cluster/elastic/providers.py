"""Node providers: what makes and removes a NodePool's nodes (kwok Node objects, or a command).

The autoscaler (``fleet_model.elastic.autoscaler``) decides ``CreateNodes(pool, count)`` and
``DeleteNode(node)``; the driver hands them to the pool's provider and feeds the outcome back.

Rules:

* ``NodeProvider.create`` / ``delete`` never raise for a provider's failure: they return
  ``FAILED`` or ``TIMED_OUT`` with a message of at most ``MAX_MESSAGE`` characters (it goes into
  an Event and the pool's ``ProviderReady`` condition). Only cancellation propagates.
* A create that made some nodes before it stopped returns ``CREATED`` with those nodes (the
  autoscaler counts them, fewer than asked) and says in ``message`` what stopped it; only a
  create that made none is ``FAILED`` / ``TIMED_OUT`` (the pool backs off).
* ``KwokNodes`` writes Node objects that kwok adopts: annotation ``kwok.x-k8s.io/node: fake``
  (kwok's own deployment runs with ``--manage-nodes-with-annotation-selector=
  kwok.x-k8s.io/node=fake``; ``--manage-all-nodes`` adopts them too), labels ``type: kwok``,
  ``kubernetes.io/os``/``arch`` (the pool's labels win) and ``kubernetes.io/hostname`` (always
  the node's name), then the pool's labels and the pool label; the pool's taints and nothing
  else (kwok's example taint ``kwok.x-k8s.io/node=fake:NoSchedule`` is left out on purpose:
  the autoscaler simulates fit on the pool's shape, and a taint it does not know of would make
  it create nodes no pod can use); ``status.capacity`` = ``allocatable`` = the pool's shape.
  The shape is rendered by ``command_input``, so kwok nodes and a command's nodes are told
  the same labels, taints and quantities.
* Names are ``<prefix>-<n>``: ``prefix`` is the pool's name (cut to 49 characters plus six of
  its SHA-256 when it has 56 or more, so every name fits the 63 characters of the hostname
  label), ``n`` counts up from one past the highest ``n`` among the pool's nodes and among the
  names this provider handed out: deterministic, never reused while the agent runs. A name
  taken (409) moves on to the next ``n``, at most ``max_conflicts`` times per create.
* ``KwokNodes.delete`` reads the node first and deletes it only if it carries the pool's label
  (with a ``uid`` precondition, so a node re-created under the same name in between is not
  removed); a node already gone is ``DELETED``.
* ``CommandNodes`` runs ``path args... create|delete`` of ``spec.provider.command`` (no shell)
  with ``command_input`` on stdin, within ``timeoutSeconds``; see ``process.run_command`` for
  the bounds and the kill. Exit 0 of create: stdout read by ``parse_command_output`` (garbage
  is FAILED, saying why); exit 0 of delete: DELETED (stdout not read). Non-zero exit: FAILED
  with the status and the last ``stderr_lines`` lines of stderr. Timeout: TIMED_OUT.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from edge_agent.cluster.elastic.process import CommandRun, run_command
from edge_agent.cluster.member_api import MemberApi, MemberApiError
from fleet_model.elastic.autoscaler import MAX_MESSAGE, CreateResult, DeleteResult, Outcome
from fleet_model.elastic.nodepool import (
    MAX_COMMAND_OUTPUT,
    MAX_POOL_NODES,
    POOL_LABEL,
    CommandProvider,
    KwokProvider,
    NodePool,
    command_input,
    parse_command_output,
)

__all__ = [
    "KWOK_ANNOTATION",
    "CommandNodes",
    "CommandSettings",
    "KwokNodes",
    "KwokSettings",
    "NodeProvider",
    "PoolProviders",
    "name_prefix",
    "node_name",
]

log = logging.getLogger("edge_agent.cluster.elastic")

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
"""kwok's mark of a node it plays the kubelet of (value ``fake``)."""
_NAME_MAX = 63
_INDEX_DIGITS = 6
_PREFIX_MAX = _NAME_MAX - 1 - _INDEX_DIGITS
_CUT = _PREFIX_MAX - 7  # the name's head, "-", six hex digits of its hash
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LINE_MAX = 200
"""Characters kept of one stderr line (its end) in a message."""
_STDERR_BUDGET = 640
"""Characters of stderr in a message: with the command's path, it fits MAX_MESSAGE."""


class NodeProvider(Protocol):
    """Makes and removes a pool's nodes; never raises for the provider's own failures."""

    async def create(self, pool: NodePool, count: int) -> CreateResult: ...

    async def delete(self, pool: NodePool, node: str) -> DeleteResult: ...


def _clip(text: str) -> str:
    """``text`` fit for an Event: control characters replaced, at most MAX_MESSAGE characters."""
    text = _CONTROL.sub("?", text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _status_message(answer: Any) -> str:  # noqa: ANN401 - decoded JSON
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return str(answer["message"])[:300]
    return "no Status message"


def name_prefix(pool: str) -> str:
    """The head of every node name of ``pool`` (see the rules above).

    Names shorter than the 56 characters a hashed head has are kept whole, so a head is never
    both a pool's name and another pool's hashed head.
    """
    if len(pool) < _PREFIX_MAX:
        return pool
    digest = hashlib.sha256(pool.encode()).hexdigest()[:6]
    return f"{pool[:_CUT]}-{digest}"


def node_name(pool: str, index: int) -> str:
    """The ``index``-th node name of ``pool``: ``<prefix>-<index>``, at most 63 characters."""
    if not 0 < index < 10**_INDEX_DIGITS:
        raise ValueError(f"node index {index} out of 1..{10**_INDEX_DIGITS - 1}")
    return f"{name_prefix(pool)}-{index}"


# ---------------------------------------------------------------- kwok


@dataclass(frozen=True, kw_only=True, slots=True)
class KwokSettings:
    timeout_seconds: float = 20.0
    """Seconds one create or delete may take in all: below the autoscaler's
    ``kwok_timeout_seconds`` (30), so an outcome always comes before it gives up."""
    max_conflicts: int = 16
    """Names found taken (409) per create before it stops: another writer is at work."""
    list_page: int = 500
    """Nodes per page when reading the pool's nodes for their names (as kubectl pages)."""
    max_list_pages: int = 20
    """Pages read at most: 10,000 nodes, ten times a pool's largest ``max``."""

    def __post_init__(self) -> None:
        if not 0 < self.timeout_seconds <= 3600:
            raise ValueError(f"timeout_seconds must be in (0, 3600], not {self.timeout_seconds}")
        for name, value in (
            ("max_conflicts", self.max_conflicts),
            ("list_page", self.list_page),
            ("max_list_pages", self.max_list_pages),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")


class _NotListedError(Exception):
    """The pool's nodes could not be read; the message says why."""


class KwokNodes:
    """Node objects in the member cluster, for kwok to play (tests and demos)."""

    def __init__(self, api: MemberApi, settings: KwokSettings | None = None) -> None:
        self._api = api
        self.settings = settings or KwokSettings()
        self._next: dict[str, int] = {}
        """Pool -> the next index to try: names are not reused while the agent runs."""

    async def create(self, pool: NodePool, count: int) -> CreateResult:
        if not isinstance(pool.provider, KwokProvider):
            return _create_failed(pool, "the pool's provider is not kwok")
        if not 1 <= count <= MAX_POOL_NODES:
            return _create_failed(pool, f"count {count} is not in 1..{MAX_POOL_NODES}")
        made: list[str] = []
        why = ""
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                why = await self._create(pool, count, made)
        except TimeoutError:
            seconds = self.settings.timeout_seconds
            if not made:
                log.warning("kwok create for pool %s timed out after %s s", pool.name, seconds)
                return CreateResult(
                    pool=pool.name,
                    outcome=Outcome.TIMED_OUT,
                    message=f"kwok create did not finish within {seconds:g} s",
                )
            why = f"timed out after {seconds:g} s"
        if not made:
            return _create_failed(pool, why)
        message = f"created {len(made)} of {count} nodes" + (f"; stopped: {why}" if why else "")
        log.info("kwok pool %s: %s: %s", pool.name, message, ", ".join(made))
        return CreateResult(
            pool=pool.name, outcome=Outcome.CREATED, nodes=tuple(made), message=_clip(message)
        )

    async def _create(self, pool: NodePool, count: int, made: list[str]) -> str:
        """Create nodes into ``made``; "" when all were made, else why it stopped."""
        try:
            index = max(self._next.get(pool.name, 1), await self._highest(pool) + 1)
        except _NotListedError as error:
            return str(error)
        except MemberApiError as error:
            return f"cannot list the pool's nodes: {error}"
        shape = json.loads(command_input(pool, count=count))["node"]
        conflicts = 0
        while len(made) < count:
            try:
                name = node_name(pool.name, index)
            except ValueError as error:
                return str(error)
            index += 1
            self._next[pool.name] = index
            try:
                status, answer = await self._api.request(
                    "POST", "/api/v1/nodes", body=_node(name, shape)
                )
            except MemberApiError as error:
                return f"create of node {name}: {error}"
            if status == 409 and conflicts < self.settings.max_conflicts:
                conflicts += 1
                continue
            if not 200 <= status < 300:
                return f"create of node {name}: HTTP {status}: {_status_message(answer)}"
            made.append(name)
        return ""

    async def _highest(self, pool: NodePool) -> int:
        """The highest index among the pool's node names (0 when none)."""
        pattern = re.compile(re.escape(name_prefix(pool.name)) + r"-([1-9][0-9]{0,5})")
        selector = quote(f"{POOL_LABEL}={pool.name}", safe="")
        highest, token = 0, ""
        for _ in range(self.settings.max_list_pages):
            path = f"/api/v1/nodes?labelSelector={selector}&limit={self.settings.list_page}"
            if token:
                path += "&continue=" + quote(token, safe="")
            listing = await self._api.get_json(path)
            items = listing.get("items") if isinstance(listing, dict) else None
            if not isinstance(items, list):
                raise _NotListedError("the node list is not a list")
            for item in items:
                match = pattern.fullmatch(str(_dict(_dict(item).get("metadata")).get("name")))
                if match:
                    highest = max(highest, int(match.group(1)))
            token = str(_dict(listing.get("metadata")).get("continue") or "")
            if not token:
                return highest
        raise _NotListedError(
            f"the pool has more than {self.settings.max_list_pages} pages of nodes"
        )

    async def delete(self, pool: NodePool, node: str) -> DeleteResult:
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                outcome, message = await self._delete(pool, node)
        except TimeoutError:
            outcome = Outcome.TIMED_OUT
            message = f"kwok delete did not finish within {self.settings.timeout_seconds:g} s"
        except MemberApiError as error:
            outcome, message = Outcome.FAILED, str(error)
        message = _clip(message)
        if outcome is Outcome.DELETED:
            log.info("kwok pool %s: node %s deleted (%s)", pool.name, node, message)
        else:
            log.warning("kwok pool %s: delete of node %s: %s", pool.name, node, message)
        return DeleteResult(node=node, outcome=outcome, message=message)

    async def _delete(self, pool: NodePool, node: str) -> tuple[Outcome, str]:
        path = f"/api/v1/nodes/{quote(node, safe='')}"
        status, answer = await self._api.request("GET", path)
        if status == 404:
            return Outcome.DELETED, "already gone"
        if status != 200:
            return Outcome.FAILED, f"read of node {node}: HTTP {status}: {_status_message(answer)}"
        metadata = _dict(_dict(answer).get("metadata"))
        owner = _dict(metadata.get("labels")).get(POOL_LABEL)
        if owner != pool.name:
            # Never remove what is not the pool's: a name mix-up must not cost a real node.
            return Outcome.FAILED, f"node {node} is not of pool {pool.name} ({POOL_LABEL}={owner})"
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": metadata.get("uid")},
        }
        status, answer = await self._api.request("DELETE", path, body=options)
        if status in (200, 202):
            return Outcome.DELETED, "deleted"
        if status == 404:
            return Outcome.DELETED, "already gone"
        return Outcome.FAILED, f"delete of node {node}: HTTP {status}: {_status_message(answer)}"


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _node(name: str, shape: Mapping[str, Any]) -> dict[str, Any]:
    """The Node object kwok adopts (see the rules above)."""
    labels = {
        "type": "kwok",
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **shape["labels"],
        "kubernetes.io/hostname": name,
    }
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            # ttl 0: the kubelet's node-local caches never go stale (kwok's example node).
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "status": {"capacity": shape["capacity"], "allocatable": shape["capacity"]},
    }
    if shape["taints"]:
        node["spec"] = {"taints": shape["taints"]}
    return node


def _create_failed(pool: NodePool, why: str) -> CreateResult:
    message = _clip(why)
    log.warning("pool %s: create failed: %s", pool.name, message)
    return CreateResult(pool=pool.name, outcome=Outcome.FAILED, message=message)


# ---------------------------------------------------------------- command


@dataclass(frozen=True, kw_only=True, slots=True)
class CommandSettings:
    max_stdout_bytes: int = MAX_COMMAND_OUTPUT
    """Bytes of stdout kept: what ``parse_command_output`` reads at most (64 KiB)."""
    max_stderr_bytes: int = 64 * 1024
    """Bytes of stderr kept, the last ones (where a failing command says why)."""
    stderr_lines: int = 10
    """Lines of stderr's end quoted in a failure's message (itself cut to 1,024 characters)."""
    pipe_grace_seconds: float = 2.0
    """Seconds the output may stay open after the command exits (a child it left running)
    before that child is killed: a finished command must not hang the autoscaler."""
    kill_wait_seconds: float = 5.0
    """Seconds to wait for the killed group to be gone (SIGKILL is immediate but for a
    process stuck in the kernel)."""

    def __post_init__(self) -> None:
        for name, value in (
            ("max_stdout_bytes", self.max_stdout_bytes),
            ("max_stderr_bytes", self.max_stderr_bytes),
            ("stderr_lines", self.stderr_lines),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        for name, seconds in (
            ("pipe_grace_seconds", self.pipe_grace_seconds),
            ("kill_wait_seconds", self.kill_wait_seconds),
        ):
            if not 0 < seconds <= 600:
                raise ValueError(f"{name} must be in (0, 600] seconds, not {seconds}")


class CommandNodes:
    """The pool's own executable makes and removes its nodes (a real cloud's CLI)."""

    def __init__(self, settings: CommandSettings | None = None) -> None:
        self.settings = settings or CommandSettings()

    async def create(self, pool: NodePool, count: int) -> CreateResult:
        command = pool.provider
        if not isinstance(command, CommandProvider):
            return _create_failed(pool, "the pool's provider is not a command")
        if not 1 <= count <= MAX_POOL_NODES:
            return _create_failed(pool, f"count {count} is not in 1..{MAX_POOL_NODES}")
        run, failure = await self._run(command, "create", command_input(pool, count=count))
        if failure is not None:
            outcome, message = failure[0], _clip(failure[1])
            log.warning("pool %s: %s", pool.name, message)
            return CreateResult(pool=pool.name, outcome=outcome, message=message)
        assert run is not None  # noqa: S101 - no failure means the command ran
        if run.stdout_dropped:
            return _create_failed(
                pool, f"create printed more than {self.settings.max_stdout_bytes} bytes"
            )
        try:
            names = parse_command_output(run.stdout, asked=count)
        except ValueError as error:
            return _create_failed(pool, f"{command.path} create: {error}")
        message = f"created {len(names)} of {count} nodes"
        log.info("command pool %s: %s: %s", pool.name, message, ", ".join(names))
        return CreateResult(pool=pool.name, outcome=Outcome.CREATED, nodes=names, message=message)

    async def delete(self, pool: NodePool, node: str) -> DeleteResult:
        command = pool.provider
        if not isinstance(command, CommandProvider):
            message = "the pool's provider is not a command"
            return DeleteResult(node=node, outcome=Outcome.FAILED, message=message)
        _, failure = await self._run(command, "delete", command_input(pool, node=node))
        if failure is not None:
            outcome, message = failure[0], _clip(failure[1])
            log.warning("pool %s: %s", pool.name, message)
            return DeleteResult(node=node, outcome=outcome, message=message)
        log.info("command pool %s: node %s deleted", pool.name, node)
        return DeleteResult(node=node, outcome=Outcome.DELETED, message="deleted")

    async def _run(
        self, command: CommandProvider, operation: str, stdin: bytes
    ) -> tuple[CommandRun | None, tuple[Outcome, str] | None]:
        """The run, or the failure it came to: ``(outcome, message)``."""
        settings = self.settings
        path = command.path if len(command.path) <= 120 else "..." + command.path[-117:]
        what = f"{path} {operation}"
        try:
            run = await run_command(
                [command.path, *command.args, operation],
                stdin=stdin,
                seconds=float(command.timeout_seconds),
                max_stdout=settings.max_stdout_bytes,
                max_stderr=settings.max_stderr_bytes,
                pipe_grace=settings.pipe_grace_seconds,
                kill_wait=settings.kill_wait_seconds,
            )
        except OSError as error:
            return None, (Outcome.FAILED, f"cannot run {what}: {error.strerror or error}")
        if run.timed_out:
            message = f"{what} did not finish within {command.timeout_seconds} s; killed"
            return run, (Outcome.TIMED_OUT, message + self._stderr(run, ": "))
        if run.returncode is None or run.returncode < 0:
            how = "could not be reaped" if run.returncode is None else f"signal {-run.returncode}"
            return run, (Outcome.FAILED, f"{what} was killed ({how})" + self._stderr(run, ": "))
        if run.returncode != 0:
            status = f"{what} exited with status {run.returncode}"
            return run, (Outcome.FAILED, status + (self._stderr(run, ": ") or " (no stderr)"))
        if run.left_running:
            log.warning("%s left a child holding its output; it was killed", what)
        return run, None

    def _stderr(self, run: CommandRun, lead: str) -> str:
        """The end of stderr as one line (`` | `` between lines), after ``lead``; "" if none.

        The last ``stderr_lines`` lines, each cut to its last ``_LINE_MAX`` characters, and
        of those the last that fit ``_STDERR_BUDGET``: the end is where a command says why.
        """
        text = run.stderr.decode("utf-8", errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            return ""
        kept: list[str] = []
        used = 0
        for line in reversed(lines[-self.settings.stderr_lines :]):
            cut = line if len(line) <= _LINE_MAX else "..." + line[-_LINE_MAX:]
            if kept and used + len(cut) + 3 > _STDERR_BUDGET:
                break
            kept.insert(0, cut)
            used += len(cut) + 3
        left_out = len(lines) - len(kept)
        note = ""
        if run.stderr_dropped or left_out:
            note = f"[{run.stderr_dropped + sum(map(len, lines[:left_out]))} bytes before] "
        return lead + note + " | ".join(kept)


# ---------------------------------------------------------------- by pool


class PoolProviders:
    """A ``NodeProvider`` that hands each pool to the provider its ``spec.provider`` names."""

    def __init__(self, *, kwok: NodeProvider, command: NodeProvider) -> None:
        self._kwok = kwok
        self._command = command

    def _for(self, pool: NodePool) -> NodeProvider:
        return self._kwok if isinstance(pool.provider, KwokProvider) else self._command

    async def create(self, pool: NodePool, count: int) -> CreateResult:
        return await self._for(pool).create(pool, count)

    async def delete(self, pool: NodePool, node: str) -> DeleteResult:
        return await self._for(pool).delete(pool, node)
