"""``tunnel-server migrate``: a single-machine install's SQLite store into the Kubernetes store.

Rules:

- The SQLite side is read raw (read-only, one transaction: one consistent snapshot), because
  the Store Protocol has no listing of API tokens, certificates, join requests, user tokens
  or revoked sessions. ``plan`` turns the rows into the objects ``KubeStore`` would have
  written for the same history, field for field (hashes and times as they are): it is pure.
- The Kubernetes side is written only through ``KubeStore.import_*``: an object that exists
  with the same spec is left as it is, one with another spec is a conflict, reported and left
  alone unless ``force``. So a second run, or a run after one that stopped half way, only
  completes what is missing.
- Nothing of the SQLite side changes except its schema, brought to this version's first (as
  the server's own start would do). The caller checks that no server holds it open.
- Console sessions revoked but already expired are not copied: the server forgets them too.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunnel_server.kubestore import _model as m
from tunnel_server.store import (
    SCHEMA_VERSION,
    STORE_FILE,
    JoinRequest,
    NotFoundError,
    SqliteStore,
    StoreError,
    TokenRecord,
    UserRecord,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tunnel_server.kubestore.store import ImportOutcome, KubeStore

log = logging.getLogger("tunnel_server.kubestore.migrate")

CA_LABEL = "secrets/edgefleet-ca"
META_LABEL = f"{m.STORE_META.plural}/{m.META_NAME}"
MAX_ROWS = 1_000_000
"""Rows read from one table at most: a bigger table is no single-machine install we made."""

Row = dict[str, object]


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """Every row of the SQLite store, table by table, read in one transaction."""

    tables: dict[str, list[Row]]


@dataclass(frozen=True, kw_only=True)
class Planned:
    kind: m.Kind
    obj: m.Obj

    @property
    def label(self) -> str:
        return f"{self.kind.plural}/{self.obj['metadata']['name']}"


@dataclass(frozen=True, kw_only=True)
class Plan:
    meta: dict[str, str]
    objects: list[Planned]
    skipped_sessions: int
    """Revoked sessions past their expiry: not copied (they could not be presented anyway)."""


@dataclass(kw_only=True)
class Summary:
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    """Per kind (plural, or ``secrets``): outcome -> how many."""
    conflicts: list[str] = field(default_factory=list)
    """``plural/name`` of each object left alone because the target holds other content."""

    def add(self, kind: str, outcome: ImportOutcome, label: str) -> None:
        self.counts.setdefault(kind, Counter())[outcome] += 1
        if outcome == "conflict":
            self.conflicts.append(label)


_TABLES = (
    "meta",
    "tokens",
    "api_tokens",
    "nodes",
    "certificates",
    "join_requests",
    "users",
    "user_tokens",
    "revoked_sessions",
)
_ORDER = {
    "certificates": "issued_at, serial",
    "user_tokens": "created_at, id",
}


def read_sqlite(data_dir: Path) -> Snapshot:
    """Every row of ``data_dir``'s store; StoreError if there is none."""
    path = data_dir / STORE_FILE
    if not path.is_file():
        raise StoreError(f"{data_dir} holds no {STORE_FILE}: nothing to migrate")
    SqliteStore(path).close()  # brings the schema to this version, as the server would
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version != SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {version}, not {SCHEMA_VERSION}")
        db.execute("BEGIN")  # one read transaction: every table as of one moment
        tables: dict[str, list[Row]] = {}
        for table in _TABLES:
            order = _ORDER.get(table, "rowid")
            rows = db.execute(f"SELECT * FROM {table} ORDER BY {order} LIMIT ?", (MAX_ROWS + 1,))  # noqa: S608 - names of ours
            tables[table] = [dict(row) for row in rows]
            if len(tables[table]) > MAX_ROWS:
                raise StoreError(f"{path}: table {table} holds over {MAX_ROWS} rows")
        db.execute("COMMIT")
    finally:
        db.close()
    return Snapshot(tables=tables)


def _f(value: object) -> float:
    # The schema's REAL columns; anything else is a damaged or foreign file: refuse it.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StoreError(f"{STORE_FILE} holds {value!r} where a time (a number) belongs")
    return float(value)


def _opt(value: object) -> float | None:
    return None if value is None else _f(value)


def _s(value: object) -> str:
    return str(value)


def plan(snapshot: Snapshot, *, now: float) -> Plan:
    """The objects of the Kubernetes store for ``snapshot``: what KubeStore writes, exactly."""
    t = snapshot.tables
    objects: list[Planned] = []
    for row in t["tokens"]:
        token = TokenRecord(
            id=_s(row["id"]),
            secret_hash=_s(row["secret_hash"]),
            kind="cluster" if row["kind"] == "cluster" else "node",
            name=_s(row["name"]),
            created_at=_f(row["created_at"]),
            expires_at=_f(row["expires_at"]),
            require_approval=bool(row["require_approval"]),
            used_at=_opt(row["used_at"]),
            revoked_at=_opt(row["revoked_at"]),
        )
        name = m.id_name(token.id)
        objects.append(
            Planned(
                kind=m.BOOTSTRAP_TOKEN,
                obj=m.new_object(m.BOOTSTRAP_TOKEN, name, m.token_spec(token)),
            )
        )
    for row in t["api_tokens"]:
        token_id = _s(row["id"])
        spec = {
            "tokenId": token_id,
            "secretHash": _s(row["secret_hash"]),
            "role": _s(row["role"]),
            "createdAt": _f(row["created_at"]),
        }
        name = m.id_name(token_id)
        objects.append(Planned(kind=m.API_TOKEN, obj=m.new_object(m.API_TOKEN, name, spec)))
    objects += _nodes(t)
    objects += _users(t)
    live = [r for r in t["revoked_sessions"] if _f(r["expires_at"]) > now]
    for row in live:
        session_id = _s(row["id"])
        spec = {"sessionId": session_id, "expiresAt": _f(row["expires_at"])}
        name = m.id_name(session_id)
        objects.append(
            Planned(kind=m.REVOKED_SESSION, obj=m.new_object(m.REVOKED_SESSION, name, spec))
        )
    meta = {_s(r["key"]): _s(r["value"]) for r in t["meta"]}
    return Plan(meta=meta, objects=objects, skipped_sessions=len(t["revoked_sessions"]) - len(live))


def _nodes(t: dict[str, list[Row]]) -> list[Planned]:
    certificates: dict[str, list[m.Obj]] = {}
    for row in t["certificates"]:
        entry = {
            "serial": _s(row["serial"]),
            "notAfter": _f(row["not_after"]),
            "issuedAt": _f(row["issued_at"]),
        }
        certificates.setdefault(_s(row["name"]), []).append(entry)
    requests = {_s(r["name"]): r for r in t["join_requests"]}
    planned = []
    for row in t["nodes"]:
        name = _s(row["name"])
        spec: m.Obj = {
            "kind": _s(row["kind"]),
            "state": _s(row["state"]),
            "createdAt": _f(row["created_at"]),
            "certificates": certificates.get(name, []),
        }
        if row["cert_serial"] is not None:
            spec["certSerial"] = _s(row["cert_serial"])
        if row["cert_not_after"] is not None:
            spec["certNotAfter"] = _f(row["cert_not_after"])
        request = requests.get(name)
        if request is not None:
            spec["joinRequest"] = m.request_entry(
                JoinRequest(
                    id=_s(request["id"]),
                    name=name,
                    kind="cluster" if request["kind"] == "cluster" else "node",
                    csr_pem=_s(request["csr_pem"]),
                    poll_hash=_s(request["poll_hash"]),
                    created_at=_f(request["created_at"]),
                    expires_at=_f(request["expires_at"]),
                    certificate_pem=None
                    if request["certificate_pem"] is None
                    else _s(request["certificate_pem"]),
                )
            )
        obj = m.new_object(m.NODE, m.dns_name(name), spec)
        status = {"lastSeen": row["last_seen"], "agentVersion": row["agent_version"]}
        status = {k: v for k, v in status.items() if v is not None}
        if status:
            obj["status"] = status
        planned.append(Planned(kind=m.NODE, obj=obj))
    return planned


def _users(t: dict[str, list[Row]]) -> list[Planned]:
    tokens: dict[str, list[m.Obj]] = {}
    for row in t["user_tokens"]:
        entry = {
            "id": _s(row["id"]),
            "secretHash": _s(row["secret_hash"]),
            "createdAt": _f(row["created_at"]),
            "expiresAt": _f(row["expires_at"]),
        }
        tokens.setdefault(_s(row["user_id"]), []).append(entry)
    planned = []
    for row in t["users"]:
        clusters = row["clusters"]
        user = UserRecord(
            id=_s(row["id"]),
            name=_s(row["name"]),
            role=_s(row["role"]),
            clusters=None if clusters is None else tuple(json.loads(_s(clusters))),
            created_at=_f(row["created_at"]),
            expires_at=_f(row["expires_at"]),
            revoked_at=_opt(row["revoked_at"]),
        )
        spec = {**m.user_spec(user), "tokens": tokens.get(user.id, [])}
        obj = m.new_object(m.USER, m.dns_name(user.name), spec)
        planned.append(Planned(kind=m.USER, obj=obj))
    return planned


def migrate(
    store: KubeStore,
    the_plan: Plan,
    data_dir: Path,
    *,
    force: bool = False,
    dry_run: bool = False,
    progress: Callable[[str], None],
    step: Callable[[str, ImportOutcome], None],
) -> Summary:
    """Write ``the_plan`` and ``data_dir``'s CA through ``store``.

    ``progress`` gets one line per kind when it is done (counts); ``step`` each object's label
    and outcome. The CA goes first: without it no replica can serve the migrated nodes.
    """
    try:
        return _migrate(
            store, the_plan, data_dir, force=force, dry_run=dry_run, progress=progress, step=step
        )
    except NotFoundError as error:  # a create answered 404: the namespace is not there
        raise StoreError(
            f"kubernetes API: {error}: not found; does namespace {store.settings.namespace!r}"
            " exist? (kubectl create namespace NAME)"
        ) from None


def _migrate(
    store: KubeStore,
    the_plan: Plan,
    data_dir: Path,
    *,
    force: bool,
    dry_run: bool,
    progress: Callable[[str], None],
    step: Callable[[str, ImportOutcome], None],
) -> Summary:
    summary = Summary()

    def report(kind: str) -> None:
        counts = summary.counts.get(kind, Counter())
        done = ", ".join(
            f"{counts[o]} {o}" for o in ("created", "replaced", "unchanged", "conflict")
        )
        progress(f"{kind}: {done}")

    outcome = store.import_ca(data_dir, force=force, dry_run=dry_run)
    summary.add("secrets", outcome, CA_LABEL)
    step(CA_LABEL, outcome)
    report("secrets")
    outcome, keys = store.import_meta(the_plan.meta, force=force, dry_run=dry_run)
    summary.add(m.STORE_META.plural, outcome, f"{META_LABEL} ({', '.join(keys)})")
    step(META_LABEL, outcome)
    report(m.STORE_META.plural)
    for kind in (m.BOOTSTRAP_TOKEN, m.API_TOKEN, m.NODE, m.USER, m.REVOKED_SESSION):
        for planned in (p for p in the_plan.objects if p.kind is kind):
            outcome = store.import_object(kind, planned.obj, force=force, dry_run=dry_run)
            summary.add(kind.plural, outcome, planned.label)
            step(planned.label, outcome)
        report(kind.plural)
    return summary
