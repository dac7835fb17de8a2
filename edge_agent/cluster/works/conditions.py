"""Conditions of one manifest and of a whole work, Kubernetes style.

A condition is ``{type, status, reason, message, lastTransitionTime, observedGeneration}``;
``lastTransitionTime`` is carried over from the previous status while ``status`` stays the
same, so an unchanged cluster gives an unchanged status (and no report).

Per manifest:

* ``Applied``: True when the update strategy did its part (``AppliedManifestComplete``,
  ``ReadOnly``, ``CreateOnly``); False with the reason (``Conflict``, ``Refused``,
  ``UnknownKind``, ``InvalidManifest``) and the API server's message;
* ``Available``: True when the resource exists and, for Deployments, StatefulSets,
  DaemonSets and Jobs, is at its desired state (``fleet_model.feedback.health``);
* ``Progressing``: True while it exists and is getting to its desired state;
* ``Degraded``: True when the manifest was not applied, the resource failed (a Job's
  ``Failed``, a Deployment past its progress deadline), or it has been progressing for longer
  than ``degraded_after_seconds``;
* ``StatusFeedbackSynced`` (only when feedback rules are set): False lists bad paths/values.

Per work: ``fleet_model.work.aggregate_conditions``, the same rules the hub documents
(``Applied``/``Available`` True when every manifest's is, ``Degraded`` when any is, the
message of the first manifest that decides it; ``Progressing`` until Applied and Available).
Condition times and message bounds are ``fleet_model.work.set_condition``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edge_agent.cluster.works.apply import Outcome
from fleet_model.feedback import Health
from fleet_model.work import aggregate_conditions, rfc3339, set_condition

__all__ = ["condition", "manifest_rows", "rfc3339", "work_conditions"]

Row = tuple[str, bool, str, str]
"""(type, status, reason, message) of one condition before its times are set."""


def condition(
    kind: str,
    *,
    status: bool,
    reason: str,
    message: str,
    previous: Sequence[Mapping[str, Any]],
    now: float,
    generation: int,
) -> dict[str, Any]:
    """One condition; its ``lastTransitionTime`` kept from ``previous`` when the status holds."""
    return set_condition(
        previous,
        kind=kind,
        status="True" if status else "False",
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )


def manifest_rows(outcome: Outcome, verdict: Health | None, *, late: bool) -> list[Row]:
    """Applied, Available, Degraded, Progressing of one manifest.

    ``verdict`` is the live object's health (None when it was not applied or is absent);
    ``late``: it has been progressing for longer than ``degraded_after_seconds``.
    """
    applied = ("Applied", outcome.ok, outcome.reason, outcome.message)
    if not outcome.ok:
        return [
            applied,
            ("Available", False, "NotApplied", outcome.message),
            ("Degraded", True, outcome.reason, outcome.message),
            ("Progressing", False, "NotApplied", outcome.message),
        ]
    if verdict is None:
        return [
            applied,
            ("Available", False, "ResourceNotFound", outcome.message),
            ("Degraded", False, "AsExpected", ""),
            ("Progressing", False, "ResourceNotFound", outcome.message),
        ]
    ready = verdict.state == "Ready"
    progressing = verdict.state == "Progressing"
    degraded = verdict.state == "Failed" or late
    degraded_reason = "ResourceFailed" if verdict.state == "Failed" else "ResourceNotReady"
    return [
        applied,
        ("Available", ready, "ResourceAvailable" if ready else "ResourceNotReady", verdict.message),
        (
            "Degraded",
            degraded,
            degraded_reason if degraded else "AsExpected",
            verdict.message if degraded else "",
        ),
        (
            "Progressing",
            progressing,
            "Progressing" if progressing else "AsExpected",
            verdict.message if progressing else "",
        ),
    ]


def work_conditions(
    manifests: Sequence[Mapping[str, Any]],
    problems: Sequence[str],
    *,
    previous: Sequence[Mapping[str, Any]],
    now: float,
    generation: int,
) -> list[dict[str, Any]]:
    """The work's four conditions from its manifests' (``manifests`` in ordinal order).

    The work's own ``problems`` (too many manifests, a bad manifestConfig) make it not Applied
    and Degraded.
    """
    out = aggregate_conditions(
        [m.get("conditions", []) for m in manifests], generation, now, previous
    )
    if problems:
        text = "; ".join(problems)
        for kind, status, reason in (
            ("Applied", False, "AppliedManifestWorkFailed"),
            ("Degraded", True, "InvalidWork"),
        ):
            index = next(i for i, c in enumerate(out) if c["type"] == kind)
            out[index] = condition(
                kind,
                status=status,
                reason=reason,
                message=text,
                previous=previous,
                now=now,
                generation=generation,
            )
    return out
