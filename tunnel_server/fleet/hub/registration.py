"""Registration: every cluster record of the node store has its ManagedCluster, and both agree.

The node store (``tunnel_server.store``, records of kind ``cluster``) says what the join
protocol knows: ``pending`` (joined with a token that requires approval), ``approved``, or
``revoked``. The ManagedCluster's ``spec.hubAcceptsClient`` is what the admin says. OCM's
double opt-in is both: a cluster is in the fleet when it joined and the hub accepts it.

Rules (``decide``), per cluster:

* a record ``pending`` or ``approved`` without a ManagedCluster gets one, with
  ``hubAcceptsClient`` false while pending and true when approved (a token without approval
  is the admin's acceptance, given when it was made);
* ``hubAcceptsClient`` true on a pending record approves it (the agent then fetches its
  certificate); false on a pending record keeps it waiting;
* ``hubAcceptsClient`` turned false on an approved record (the ``HubAcceptedManagedCluster``
  condition, written by the last pass, still says True) revokes it and closes its tunnel
  session at once: "deny cuts it off". An approved record whose ManagedCluster says false but
  was never accepted here was approved another way (``POST /api/v1/clusters/{name}/approve``,
  ``nodes approve``): the ManagedCluster follows (true);
* a deleted ManagedCluster revokes its record and closes the session (the hard unregister);
  a revoked record gets no new ManagedCluster (it joins again with a new token, and then
  gets one);
* a revoked record's ManagedCluster is kept (labels and history stay) with
  ``hubAcceptsClient`` forced false, so a new join with an approval token waits again;
* a ManagedCluster without any record (made by an admin ahead of the join, as OCM allows)
  stays; when its cluster joins with an approval token and it says true, the join is approved.

The revoke and cut-off are the registered-clusters API's own (``store.change_node_state`` as
its actions do, ``clusters_api.cut_off``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fleet_model.cluster import next_condition
from tunnel_server.store import NodeRecord

__all__ = [
    "ACCEPTED",
    "JOINED",
    "Decision",
    "accepted_condition",
    "decide",
    "joined_condition",
    "new_cluster_spec",
    "records_by_name",
    "was_accepted",
]

ACCEPTED = "HubAcceptedManagedCluster"
JOINED = "ManagedClusterJoined"

Action = Literal["none", "approve", "revoke"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    action: Action
    """What to do to the node record."""
    accepts: bool
    """``spec.hubAcceptsClient`` as it must read after the action."""


def was_accepted(conditions: Iterable[Mapping[str, Any]]) -> bool:
    """What the last pass wrote: the hub had accepted the cluster."""
    return any(c.get("type") == ACCEPTED and c.get("status") == "True" for c in conditions)


def decide(record: NodeRecord | None, *, accepts: bool, was: bool) -> Decision:
    """What registration does for one ManagedCluster (``accepts``: its spec) and its record."""
    if record is None:
        return Decision(action="none", accepts=accepts)
    if record.state == "pending":
        return Decision(action="approve" if accepts else "none", accepts=accepts)
    if record.state == "approved":
        if not accepts and was:
            return Decision(action="revoke", accepts=False)
        return Decision(action="none", accepts=True)
    return Decision(action="none", accepts=False)  # revoked


def accepted_condition(
    record: NodeRecord | None, *, accepts: bool, conditions: Iterable[Mapping[str, Any]], now: float
) -> dict[str, Any]:
    if record is not None and record.state == "revoked":
        status, reason = "False", "HubClusterAdminDenied"
        message = (
            "The cluster was denied or revoked: it joins again with a new token "
            "(tunnel-server token create --kind cluster)."
        )
    elif accepts:
        status, reason, message = (
            "True",
            "HubClusterAdminAccepted",
            "Accepted by hub cluster admin.",
        )
    else:
        status, reason = "False", "HubClusterAdminNotAccepted"
        message = (
            "Waiting for the hub admin: set spec.hubAcceptsClient (tunnel-server clusters accept)."
        )
    return next_condition(
        conditions, type_=ACCEPTED, status=status, reason=reason, message=message, now=now
    )


def joined_condition(
    record: NodeRecord | None, *, conditions: Iterable[Mapping[str, Any]], now: float
) -> dict[str, Any]:
    if record is None:
        status, reason, message = (
            "False",
            "ManagedClusterNotJoined",
            "No cluster of this name has joined.",
        )
    elif record.state == "pending":
        status, reason = "False", "ManagedClusterPendingApproval"
        message = "The cluster joined with a token that requires approval; it waits for it."
    elif record.state == "revoked":
        status, reason, message = (
            "False",
            "ManagedClusterRevoked",
            "The cluster's identity was revoked.",
        )
    elif record.cert_serial is None:
        status, reason = "False", "ManagedClusterCertificatePending"
        message = "Approved; the agent has not fetched its certificate yet."
    else:
        status, reason, message = (
            "True",
            "ManagedClusterJoined",
            "The cluster agent holds its certificate.",
        )
    return next_condition(
        conditions, type_=JOINED, status=status, reason=reason, message=message, now=now
    )


def new_cluster_spec(record: NodeRecord, *, lease_seconds: int) -> dict[str, Any]:
    """The spec of the ManagedCluster made for a record that has none."""
    return {
        "hubAcceptsClient": record.state == "approved",
        "leaseDurationSeconds": lease_seconds,
        "taints": [],
    }


def records_by_name(records: Iterable[NodeRecord]) -> dict[str, NodeRecord]:
    return {r.name: r for r in records if r.kind == "cluster"}
