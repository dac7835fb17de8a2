"""What one cluster agent holds, and what the ``fleet`` stream must send it: no I/O.

``ClusterFeed`` is the bookkeeping of the cloud end of the stream (``stream.py`` drives it):
the agent's hello says which Works it holds at which resourceVersion (and generation, when
the agent says: a Work only its status moved since is not resent); each send records the
version (and generation) the agent now holds; ``removed`` forgets. It decides:

* ``resync(current)``: after a hello, an acceptance, or an expired change log — a ``work`` for
  every current Work the agent lacks or holds at another resourceVersion, a ``delete`` (policy
  unknown: the agent uses its copy's) for every held name that is not current;
* ``changed(work)`` / ``deleted(work)``: one change of the store; a Work whose generation the
  agent holds is not sent again (a status write moves only the resourceVersion), a Work moved
  to another cluster is deleted here;
* ``status_applies(work, rv)``: whether a status the agent made at ``rv`` describes the Work's
  current spec (docs/fleet/stream.md, "Status").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from fleet_model import wire

__all__ = [
    "DEFAULT_PROPAGATION",
    "STATUS_FIELDS",
    "ClusterFeed",
    "Held",
    "WorkLike",
    "propagation_of",
    "status_fields",
    "work_message",
]

log = logging.getLogger("tunnel_server.fleet.hub.stream")

STATUS_FIELDS = ("conditions", "resourceStatus", "observedGeneration", "appliedAt")
"""What an agent may write into a Work's status (anything else it sends is dropped)."""
DEFAULT_PROPAGATION = "Foreground"

StatusVerdict = Literal["current", "stale", "unknown_work"]


class WorkLike(Protocol):
    """What ``ClusterFeed`` reads of a stored Work (``StoredObject`` has it all)."""

    @property
    def name(self) -> str: ...
    @property
    def resource_version(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def spec(self) -> Mapping[str, Any]: ...
    def document(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Held:
    """A Work version an agent holds: its resourceVersion, and its generation when known."""

    resource_version: int
    generation: int | None


def propagation_of(work: WorkLike) -> str:
    """The Work's ``deleteOption.propagationPolicy`` (Foreground unless it says Orphan)."""
    option = work.spec.get("deleteOption")
    policy = option.get("propagationPolicy") if isinstance(option, Mapping) else None
    return policy if policy in wire.PROPAGATION_POLICIES else DEFAULT_PROPAGATION


def work_message(work: WorkLike) -> wire.WorkMessage:
    """The Work as the agent gets it: the document without its status (the agent's own)."""
    document = work.document()
    document.pop("status", None)
    return wire.WorkMessage(document=document)


def status_fields(status: Mapping[str, Any]) -> dict[str, Any]:
    return {key: status[key] for key in STATUS_FIELDS if key in status}


@dataclass
class ClusterFeed:
    """One cluster agent's works as this end of its stream knows them."""

    cluster: str
    held: dict[str, Held] = field(default_factory=dict)

    def hello(self, works: Mapping[str, int], generations: Mapping[str, int] | None = None) -> None:
        known = generations or {}
        self.held = {name: Held(version, known.get(name)) for name, version in works.items()}

    def mine(self, work: WorkLike) -> bool:
        return work.spec.get("clusterName") == self.cluster

    def resync(self, current: list[WorkLike]) -> list[wire.CloudMessage]:
        """Everything to send so the agent holds exactly ``current`` (this cluster's Works)."""
        out: list[wire.CloudMessage] = []
        names: set[str] = set()
        for work in sorted(current, key=lambda w: w.name):
            if not self.mine(work):
                continue
            if len(names) >= wire.MAX_WORKS:
                log.warning(
                    "cluster %s has more than %d works; the rest wait",
                    self.cluster,
                    wire.MAX_WORKS,
                )
                break
            names.add(work.name)
            held = self.held.get(work.name)
            if held is not None and held.resource_version == work.resource_version:
                self.held[work.name] = Held(work.resource_version, work.generation)
            elif held is not None and held.generation == work.generation:
                continue  # sent on this stream already; only the status moved since
            else:
                self.held.pop(work.name, None)
                out += self.changed(work)
        out += [self._delete(name, None) for name in sorted(set(self.held) - names)]
        return out

    def changed(self, work: WorkLike) -> list[wire.CloudMessage]:
        """A Work was created or changed: send it if the agent should hold a newer spec."""
        if not self.mine(work):
            if work.name in self.held:  # moved to another cluster: remove it here
                return [self._delete(work.name, propagation_of(work))]
            return []
        held = self.held.get(work.name)
        if held is not None and held.generation == work.generation:
            return []  # a status-only write: the agent has this spec
        if held is None and len(self.held) >= wire.MAX_WORKS:
            log.warning(
                "cluster %s holds %d works; %s waits", self.cluster, wire.MAX_WORKS, work.name
            )
            return []
        self.held[work.name] = Held(work.resource_version, work.generation)
        return [work_message(work)]

    def deleted(self, work: WorkLike) -> list[wire.CloudMessage]:
        if work.name not in self.held:
            return []
        return [self._delete(work.name, propagation_of(work))]

    def _delete(self, name: str, policy: str | None) -> wire.Delete:
        self.held.pop(name, None)
        return wire.Delete(work=name, propagation_policy=policy)

    def removed(self, name: str) -> None:
        self.held.pop(name, None)

    def status_applies(self, work: WorkLike | None, resource_version: int) -> StatusVerdict:
        """``"current"`` when a status made at ``resource_version`` describes ``work``'s spec.

        That is: the Work exists, is this cluster's, and ``resource_version`` is the version
        this stream gave the agent (or the hello confirmed), whose generation is the Work's
        current generation. Otherwise the agent applied an older spec (the newer one is on
        its way, or the Work moved): the status is stale.
        """
        if work is None or not self.mine(work):
            return "unknown_work"
        held = self.held.get(work.name)
        if held is None or held.resource_version != resource_version:
            return "stale"
        if held.generation != work.generation:
            return "stale"
        return "current"
