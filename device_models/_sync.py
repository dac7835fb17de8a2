"""Keeping the edge's and the cloud's copies of one twin equal, across outages and redelivery.

Theory of operation (docs/device-models.md has the long form and a worked example):

1. Two replicas share a twin: the edge agent (role edge) and the cloud (role cloud). Each has
   an origin id and numbers its own changes 1, 2, 3, ... (`seq`).
2. A local write (`write_change`) merges a patch into the local twin at once and returns a
   `TwinChange` for the outbox. The change carries, for every top-level key the patch touched,
   that key's whole new value and metadata (null: deleted), not the patch: applying a value
   twice is harmless, and the receiver ends with exactly the writer's value.
3. The outbox delivers each origin's changes in order, at least once. `apply_change` applies
   seq == high-water + 1, ignores seq <= high-water (a redelivery: exactly-once effect with
   memory of one integer per origin) and refuses a gap with SequenceGapError.
4. Conflicts are per top-level key. A change carries `seen`, how far its writer had applied
   each other origin's changes. A replica remembers, per key, its own latest write the peer had
   not yet seen (`pending`); an incoming write to such a key is concurrent with it. Concurrent
   writes resolve by the section's authority: desired - the cloud wins; reported - the edge
   wins (Greengrass's rule). Writes that are not concurrent simply apply in causal order.
5. Every new change, local or remote, raises its section's `$version` by exactly one, even when
   the authority rule kept all of the local values; a duplicate changes nothing at all.
6. When both outboxes are drained, both replicas hold the same values and the same per-key
   metadata in both sections, whatever the interleaving. `$version` and the section root's
   `$lastUpdated` count this replica's own history and may differ between the two.

Limits: one peer at a time. An origin that loses its state must come back under a new origin id
(its numbering restarts); at most 16 origins are remembered per replica.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TypeVar

from device_models._errors import (
    DocumentError,
    LimitExceededError,
    Problem,
    Problems,
    SequenceGapError,
)
from device_models._json import (
    INT_MAX,
    JsonObject,
    JsonValue,
    check_json,
    checked_object,
    copy_json,
    diff,
    join_path,
    key_problem,
    type_name,
)
from device_models._twin import (
    LAST_UPDATED,
    Section,
    Twin,
    TwinSection,
    as_time,
    check_limits,
    checked_patch,
    checked_time,
    metadata_node,
    stamp_metadata,
)

__all__ = [
    "AUTHORITY",
    "MAX_ORIGINS",
    "MAX_PENDING_KEYS",
    "ChangeResult",
    "Replica",
    "Role",
    "TwinChange",
    "apply_change",
    "write_change",
]

# Bounded memory: high-water marks for at most this many origins (one peer plus the ids it
# took after losing its state), and at most this many unacknowledged keys per section.
MAX_ORIGINS = 16
MAX_PENDING_KEYS = 4096
_E = TypeVar("_E", bound=StrEnum)
_ORIGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")


class Role(StrEnum):
    EDGE = "edge"
    CLOUD = "cloud"


# Who wins a concurrent write to the same key: the cloud owns intent, the edge owns facts.
AUTHORITY: Mapping[Section, Role] = MappingProxyType(
    {Section.DESIRED: Role.CLOUD, Section.REPORTED: Role.EDGE}
)


def _no_ints() -> Mapping[str, int]:
    return MappingProxyType({})


def _no_pending() -> Mapping[Section, Mapping[str, int]]:
    return MappingProxyType({section: MappingProxyType({}) for section in Section})


def _no_values() -> Mapping[str, JsonValue]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True, slots=True)
class TwinChange:
    """One write by one replica, as shipped to the other (at least once, in order)."""

    origin: str
    seq: int  # 1, 2, 3, ... per origin
    role: Role
    section: Section
    at: float  # epoch seconds when the writer made it
    seen: Mapping[str, int] = field(default_factory=_no_ints)  # origin -> high-water applied
    values: Mapping[str, JsonValue] = field(default_factory=_no_values)  # key -> value or None
    metadata: Mapping[str, JsonValue] = field(default_factory=_no_values)  # key -> its metadata

    @property
    def id(self) -> tuple[str, int]:
        return (self.origin, self.seq)

    def to_json(self) -> JsonObject:
        return {
            "origin": self.origin,
            "seq": self.seq,
            "role": str(self.role),
            "section": str(self.section),
            "at": self.at,
            "seen": dict(self.seen),
            "values": {key: copy_json(value) for key, value in self.values.items()},
            "metadata": {key: copy_json(value) for key, value in self.metadata.items()},
        }

    @classmethod
    def from_json(cls, data: object) -> TwinChange:
        """Validate a change as `to_json` writes it; DocumentError or LimitExceededError."""
        problems = Problems()
        fields = _exact_object(data, _CHANGE_FIELDS, problems)
        values = _post_images(fields.get("values"), problems)
        metadata = (
            _change_metadata(values, fields.get("metadata"), problems) if not problems else {}
        )
        change = cls(
            origin=_origin(fields.get("origin"), "origin", problems),
            seq=_count(fields.get("seq"), "seq", problems, minimum=1),
            role=_member(Role, fields.get("role"), "role", problems) or Role.EDGE,
            section=_member(Section, fields.get("section"), "section", problems) or Section.DESIRED,
            at=_time(fields.get("at"), "at", problems),
            seen=_high_water(fields.get("seen"), "seen", problems),
            values=values,
            metadata=metadata,
        )
        problems.raise_if_any(DocumentError, "invalid twin change")
        check_limits({key: value for key, value in values.items() if value is not None}, "values")
        return change


@dataclass(frozen=True, kw_only=True, slots=True)
class Replica:
    """One replica's copy of a twin plus what it needs to sync it."""

    origin: str
    role: Role
    twin: Twin = field(default_factory=Twin)
    next_seq: int = 1
    applied: Mapping[str, int] = field(default_factory=_no_ints)  # origin -> high-water
    pending: Mapping[Section, Mapping[str, int]] = field(default_factory=_no_pending)

    def __post_init__(self) -> None:
        problems = Problems()
        _origin(self.origin, "origin", problems)
        _member(Role, self.role, "role", problems)
        _count(self.next_seq, "next_seq", problems, minimum=1)
        problems.raise_if_any(DocumentError, "invalid twin replica")
        # An untyped caller may pass "edge"; keep the enum so `is` and `==` agree later.
        object.__setattr__(self, "role", Role(self.role))

    def to_json(self) -> JsonObject:
        return {
            "origin": self.origin,
            "role": str(self.role),
            "nextSeq": self.next_seq,
            "applied": dict(self.applied),
            "pending": {str(section): dict(self.pending[section]) for section in Section},
            "twin": self.twin.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> Replica:
        """Validate a replica as `to_json` writes it; DocumentError or LimitExceededError."""
        problems = Problems()
        fields = _exact_object(data, _REPLICA_FIELDS, problems)
        next_seq = _count(fields.get("nextSeq"), "nextSeq", problems, minimum=1)
        replica = cls(
            origin=_origin(fields.get("origin"), "origin", problems),
            role=_member(Role, fields.get("role"), "role", problems) or Role.EDGE,
            next_seq=next_seq,
            applied=_high_water(fields.get("applied"), "applied", problems),
            pending=_pending(fields.get("pending"), next_seq, problems),
        )
        problems.raise_if_any(DocumentError, "invalid twin replica")
        return dataclasses.replace(replica, twin=Twin.from_json(fields.get("twin")))


@dataclass(frozen=True, kw_only=True, slots=True)
class ChangeResult:
    """What `apply_change` did."""

    replica: Replica
    applied: bool  # False: a redelivery (or our own change echoed back); nothing changed
    patch: JsonObject  # the section's actual change, as a merge patch (to tell the device)
    overridden: tuple[str, ...] = ()  # keys where our concurrent write won by authority


def write_change(
    replica: Replica,
    section: Section,
    patch: object,
    *,
    now: float,
    expected_version: int | None = None,
) -> tuple[Replica, TwinChange]:
    """Apply a local merge patch and return the change to send to the peer.

    Raises what `Twin.apply_patch` raises, or LimitExceededError when too many of this
    replica's writes wait for the peer to see them; the replica is then unchanged.
    """
    section = _section(section)  # an untyped caller may pass "desired"
    checked = checked_patch(patch)
    at = checked_time(now)
    twin = replica.twin.apply_patch(section, checked, now=at, expected_version=expected_version)
    seq = replica.next_seq
    pending = {**replica.pending[section], **dict.fromkeys(checked, seq)}
    if len(pending) > MAX_PENDING_KEYS:
        reason = f"more than {MAX_PENDING_KEYS} keys written and not yet seen by the peer"
        raise LimitExceededError(
            "twin limit exceeded", (Problem(path=str(section), reason=reason),)
        )
    written = twin.section(section)
    change = TwinChange(
        origin=replica.origin,
        seq=seq,
        role=replica.role,
        section=section,
        at=at,
        seen=MappingProxyType(dict(replica.applied)),
        values=MappingProxyType({key: written.values.get(key) for key in checked}),
        metadata=MappingProxyType(
            {key: written.metadata[key] for key in checked if key in written.values}
        ),
    )
    new_replica = dataclasses.replace(
        replica,
        twin=twin,
        next_seq=seq + 1,
        pending=_with(replica.pending, section, pending),
    )
    return new_replica, change


def apply_change(replica: Replica, change: TwinChange) -> ChangeResult:
    """Apply a change from the peer exactly once (see the module docstring for the rules).

    Raises SequenceGapError if an earlier change from the same origin is missing, and
    LimitExceededError if the result would break a limit; the replica is then unchanged.
    """
    high_water = replica.applied.get(change.origin, 0)
    if change.origin == replica.origin or change.seq <= high_water:
        return ChangeResult(replica=replica, applied=False, patch={})
    if change.seq != high_water + 1:
        raise SequenceGapError(origin=change.origin, expected=high_water + 1, got=change.seq)
    if change.origin not in replica.applied and len(replica.applied) >= MAX_ORIGINS:
        reason = f"already tracking {MAX_ORIGINS} origins"
        raise LimitExceededError("twin limit exceeded", (Problem(path="origin", reason=reason),))
    # Our writes the peer had seen when it wrote this cannot conflict with it any more.
    seen_ours = change.seen.get(replica.origin, 0)
    pending = {
        section: {key: seq for key, seq in keys.items() if seq > seen_ours}
        for section, keys in replica.pending.items()
    }
    current = replica.twin.section(change.section)
    merged, overridden = _merge(
        current, change, pending[change.section], we_win=_we_win(replica, change)
    )
    check_limits(merged.values, str(change.section))
    new_replica = dataclasses.replace(
        replica,
        twin=replica.twin.with_section(change.section, merged),
        applied=MappingProxyType({**replica.applied, change.origin: change.seq}),
        pending=MappingProxyType(
            {section: MappingProxyType(keys) for section, keys in pending.items()}
        ),
    )
    patch = diff(current.values, merged.values)
    return ChangeResult(replica=new_replica, applied=True, patch=patch, overridden=overridden)


def _section(value: object) -> Section:
    problems = Problems()
    section = _member(Section, value, "section", problems)
    problems.raise_if_any(DocumentError, "invalid section")
    return section or Section.DESIRED


def _we_win(replica: Replica, change: TwinChange) -> bool:
    """Whether our write beats a concurrent write by `change` to the same key."""
    authority = AUTHORITY[change.section]
    if (replica.role == authority) != (change.role == authority):
        return replica.role == authority
    return replica.origin > change.origin  # same role: any fixed order converges


def _merge(
    current: TwinSection, change: TwinChange, pending: dict[str, int], *, we_win: bool
) -> tuple[TwinSection, tuple[str, ...]]:
    """`current` with the change's post-images set, except where our concurrent write wins.

    Mutates `pending` (a private copy): keys the peer now owns are no longer ours to defend.
    """
    values = dict(current.values)
    metadata = dict(current.metadata)
    overridden: list[str] = []
    for key, value in change.values.items():
        if key in pending and we_win:
            overridden.append(key)
            continue
        pending.pop(key, None)
        if value is None:
            values.pop(key, None)
            metadata.pop(key, None)
        else:
            values[key] = value
            node = change.metadata.get(key)
            metadata[key] = node if isinstance(node, dict) else stamp_metadata(value, change.at)
    if len(overridden) < len(change.values):
        previous = as_time(metadata.get(LAST_UPDATED)) or 0.0
        metadata[LAST_UPDATED] = max(previous, change.at)
    merged = TwinSection(version=current.version + 1, values=values, metadata=metadata)
    return merged, tuple(overridden)


def _with(
    pending: Mapping[Section, Mapping[str, int]], section: Section, keys: Mapping[str, int]
) -> Mapping[Section, Mapping[str, int]]:
    return MappingProxyType({**pending, section: MappingProxyType(dict(keys))})


# ------------------------------------------------------------------------- JSON checks

_CHANGE_FIELDS = frozenset({"origin", "seq", "role", "section", "at", "seen", "values", "metadata"})
_REPLICA_FIELDS = frozenset({"origin", "role", "nextSeq", "applied", "pending", "twin"})


def _exact_object(
    data: object, expected: frozenset[str], problems: Problems, *, path: str = ""
) -> dict[str, object]:
    if not isinstance(data, dict):
        problems.add(path, f"must be an object (got {type_name(data)})")
        return {}
    for key in data:
        if key not in expected:
            reason = f"unknown field (expected {', '.join(sorted(expected))})"
            problems.add(join_path(path, str(key)[:64]), reason)
    for key in sorted(expected - set(data)):
        problems.add(join_path(path, key), "missing")
    return {key: value for key, value in data.items() if isinstance(key, str)}


def _origin(value: object, path: str, problems: Problems) -> str:
    if isinstance(value, str) and _ORIGIN.fullmatch(value):
        return value
    reason = "must be 1 to 128 of letters, digits and ._:/@- starting with a letter or digit"
    problems.add(path, reason)
    return "invalid"


def _count(value: object, path: str, problems: Problems, *, minimum: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= INT_MAX:
        return value
    problems.add(path, f"must be an integer >= {minimum} (got {type_name(value)})")
    return minimum


def _member(choices: type[_E], value: object, path: str, problems: Problems) -> _E | None:
    for choice in choices:
        if value == choice.value:
            return choice
    problems.add(path, f"must be one of {', '.join(choices)} (got {type_name(value)})")
    return None


def _time(value: object, path: str, problems: Problems) -> float:
    seconds = as_time(value)
    if seconds is None:
        problems.add(path, "must be epoch seconds (a finite number >= 0)")
        return 0.0
    return seconds


def _high_water(value: object, path: str, problems: Problems) -> Mapping[str, int]:
    if not isinstance(value, dict) or len(value) > MAX_ORIGINS:
        problems.add(path, f"must be an object of at most {MAX_ORIGINS} origins -> integers")
        return MappingProxyType({})
    marks: dict[str, int] = {}
    for origin, seq in value.items():
        name = _origin(origin, join_path(path, str(origin)[:64]), problems)
        marks[name] = _count(seq, join_path(path, name), problems, minimum=0)
    return MappingProxyType(marks)


def _pending(
    value: object, next_seq: int, problems: Problems
) -> Mapping[Section, Mapping[str, int]]:
    sections = _exact_object(value, frozenset(map(str, Section)), problems, path="pending")
    result: dict[Section, Mapping[str, int]] = {}
    for section in Section:
        keys = sections.get(str(section), {})
        path = join_path("pending", str(section))
        if not isinstance(keys, dict) or len(keys) > MAX_PENDING_KEYS:
            problems.add(path, f"must be an object of at most {MAX_PENDING_KEYS} keys")
            keys = {}
        result[section] = MappingProxyType(_pending_keys(keys, path, next_seq, problems))
    return MappingProxyType(result)


def _pending_keys(
    keys: dict[object, object], path: str, next_seq: int, problems: Problems
) -> dict[str, int]:
    checked: dict[str, int] = {}
    for key, seq in keys.items():
        here = join_path(path, str(key)[:64])
        if not isinstance(key, str):
            problems.add(here, "keys must be strings")
        elif (problem := key_problem(key)) is not None:
            problems.add(here, problem)
        elif not (isinstance(seq, int) and not isinstance(seq, bool) and 0 < seq < next_seq):
            problems.add(here, f"must be the seq of one of our changes (1 to {next_seq - 1})")
        else:
            checked[key] = seq
    return checked


def _post_images(value: object, problems: Problems) -> Mapping[str, JsonValue]:
    values = checked_object(value, path="values", problems=problems, allow_null_members=True)
    for key, member in values.items():
        if member is not None:  # null means deleted; inside a value, null members are not JSON
            check_json(
                member,
                path=join_path("values", key),
                problems=problems,
                allow_null_members=False,
                depth=2,
            )
    return MappingProxyType(values)


def _change_metadata(
    values: Mapping[str, JsonValue], value: object, problems: Problems
) -> Mapping[str, JsonValue]:
    if not isinstance(value, dict):
        problems.add("metadata", f"must be an object (got {type_name(value)})")
        return MappingProxyType({})
    for key in value:
        if values.get(str(key)) is None:
            problems.add(join_path("metadata", str(key)[:64]), "metadata for no written value")
    metadata: JsonObject = {}
    for key, member in values.items():
        if member is not None:
            path = join_path("metadata", key)
            metadata[key] = metadata_node(member, value.get(key), path, problems, root=False)
    return MappingProxyType(metadata)
