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

Per work: ``Applied``/``Available`` True when every manifest's is; ``Degraded``/``Progressing``
True when any manifest's is; the message names the first manifest that decides it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from edge_agent.cluster.works.apply import Outcome
from fleet_model.feedback import Health

__all__ = ["condition", "manifest_rows", "rfc3339", "work_conditions"]

Row = tuple[str, bool, str, str]
"""(type, status, reason, message) of one condition before its times are set."""


def rfc3339(at: float) -> str:
    return dt.datetime.fromtimestamp(int(at), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    value = "True" if status else "False"
    since = rfc3339(now)
    for old in previous:
        if isinstance(old, dict) and old.get("type") == kind and old.get("status") == value:
            since = str(old.get("lastTransitionTime") or since)
            break
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


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


def _describe(meta: Mapping[str, Any]) -> str:
    where = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
    return f"{meta.get('kind') or 'manifest'} {where}{meta.get('name') or meta.get('ordinal')}"


def _find(conditions: object, kind: str) -> Mapping[str, Any] | None:
    for item in conditions if isinstance(conditions, list) else []:
        if isinstance(item, dict) and item.get("type") == kind:
            return item
    return None


_RULES: tuple[tuple[str, bool, str, str], ...] = (
    # (type, True when every manifest's is True (else: any), reason if True, reason if False)
    ("Applied", True, "AppliedManifestWorkComplete", "AppliedManifestWorkFailed"),
    ("Available", True, "ResourcesAvailable", "ResourcesNotAvailable"),
    ("Degraded", False, "ResourcesDegraded", "AsExpected"),
    ("Progressing", False, "ResourcesProgressing", "AsExpected"),
)


def work_conditions(
    manifests: Sequence[Mapping[str, Any]],
    problems: Sequence[str],
    *,
    previous: Sequence[Mapping[str, Any]],
    now: float,
    generation: int,
) -> list[dict[str, Any]]:
    """The work's four conditions from its manifests' (and the work's own ``problems``)."""
    out: list[dict[str, Any]] = []
    for kind, every, yes, no in _RULES:
        deciding = [
            m
            for m in manifests
            if (((_find(m.get("conditions"), kind) or {}).get("status") == "True") != every)
        ]
        value = not deciding if every else bool(deciding)
        if kind == "Applied" and problems:
            value = False
        if kind == "Degraded" and problems:
            value = True
        reason = yes if value else no
        if deciding:
            first = deciding[0]
            found = _find(first.get("conditions"), kind) or {}
            message = f"{_describe(first.get('resourceMeta', {}))}: {found.get('message', '')}"
            if len(deciding) > 1:
                message += f" (and {len(deciding) - 1} more)"
        elif problems and kind in ("Applied", "Degraded"):
            message = "; ".join(problems)
        else:
            message = f"{len(manifests)} manifests"
        if problems and kind in ("Applied", "Degraded") and deciding:
            message = "; ".join(problems) + "; " + message
        out.append(
            condition(
                kind,
                status=value,
                reason=reason,
                message=message[:2048],
                previous=previous,
                now=now,
                generation=generation,
            )
        )
    return out
