"""Every route of the served OpenAPI document, with every kind of caller, against docs/security.md.

The table "Who may call what" in docs/security.md is the specification: this test parses it,
reads ``/api/openapi.json`` from a real ``tunnel-server``, and for EVERY path and method sends
a request as the admin token, an admin user, an operator scoped to one cluster, a viewer, a
viewer's console session, no token and a garbage token. The answer's class (allowed = 2xx or a
4xx other than 401/403; 401; 403) must be what the table says. A route served without a row in
the table fails, so a route added later cannot skip the question of who may call it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.integration.users.conftest import SCOPED_CLUSTER, UsersSystem, call

REPO = Path(__file__).resolve().parents[3]
ROLE_WORDS = ("viewer", "operator", "admin")


@dataclass(frozen=True, kw_only=True)
class Rule:
    roles: frozenset[str]
    token_only: bool
    session_only: bool
    scope: str
    """``cluster``, ``list`` or ``-``."""


@dataclass(frozen=True, kw_only=True)
class Caller:
    label: str
    role: str | None
    """None: not authenticated."""
    token: str
    session: bool = False
    clusters: frozenset[str] | None = None


def permission_table() -> dict[tuple[str, str], Rule]:
    """(METHOD, path) -> rule, from the table under "Who may call what" in docs/security.md."""
    text = (REPO / "docs" / "security.md").read_text()
    section = text.split("### Who may call what", 1)[1].split("\n#", 1)[0]
    table: dict[tuple[str, str], Rule] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[1].startswith("`"):
            continue
        method, path, who, scope, _why = cells
        roles = frozenset(re.findall(r"\b(viewer|operator|admin)\b", who))
        assert roles, f"a row with no role: {line}"
        assert scope in ("cluster", "list", "-"), f"unknown scope {scope!r}: {line}"
        table[method.upper(), path.strip("`")] = Rule(
            roles=roles,
            token_only="token only" in who,
            session_only="session only" in who,
            scope=scope,
        )
    assert len(table) >= 15, "the table was not found or not parsed"
    return table


def _authenticated(operations: dict[str, dict[str, object]]) -> list[str]:
    """The operations of one path that need a credential.

    The public SSO sign-in steps need none: docs/security.md says why, in prose.
    """
    return [
        method
        for method, operation in operations.items()
        if method.lower() in ("get", "put", "post", "patch", "delete")
        and operation.get("security") != []
    ]


def expected(rule: Rule, caller: Caller, cluster: str | None) -> str:
    if caller.role is None:
        return "401"
    if caller.role not in rule.roles:
        return "403"
    if (rule.token_only and caller.session) or (rule.session_only and not caller.session):
        return "403"
    if rule.scope == "cluster" and caller.clusters is not None and cluster not in caller.clusters:
        return "403"
    return "allowed"


def answer_class(status: int) -> str:
    if status in (401, 403):
        return str(status)
    if status < 300 or 400 <= status < 500:
        return "allowed"
    return f"unexpected {status}"


def _fill(path: str, cluster: str | None) -> str:
    """``path`` with its parameters filled: a device id, a cluster (scoped rows) or a node name.

    Things that do not exist are fine: 404 is "allowed" too.
    """

    def value(match: re.Match[str]) -> str:
        if match[1] == "id":
            return "edge-x:dev-1"
        return cluster or "edge-x"

    return re.sub(r"\{(\w+)\}", value, path)


def test_the_table_parses_and_says_what_the_brief_says() -> None:
    """A guard on the parser: a few rows read back as written."""
    table = permission_table()
    assert table["POST", "/api/v1/tokens"].roles == {"admin"}
    assert table["PATCH", "/api/v1/devices/{id}/twin"].roles == {"operator", "admin"}
    assert table["GET", "/api/v1/nodes"].roles == set(ROLE_WORDS)
    assert table["GET", "/api/v1/clusters/{name}"].scope == "cluster"
    assert table["POST", "/api/v1/clusters/{name}/revoke"].roles == {"operator", "admin"}
    assert table["POST", "/api/v1/clusters/{name}/revoke"].scope == "cluster"
    assert table["DELETE", "/api/v1/users/{name}"].roles == {"admin"}
    assert table["DELETE", "/api/v1/sessions/current"].session_only
    assert table["POST", "/api/v1/sessions"].token_only


def test_every_route_answers_every_caller_as_the_table_says(users_system: UsersSystem) -> None:
    server, tokens = users_system.server, users_system.tokens
    table = permission_table()
    document = call(server, "GET", "/api/openapi.json").body
    assert document.get("openapi", "").startswith("3."), document
    callers = [
        Caller(label="admin token", role="admin", token=tokens["admin-token"]),
        Caller(label="admin user", role="admin", token=tokens["admin-user"]),
        Caller(
            label="scoped operator",
            role="operator",
            token=tokens["operator"],
            clusters=frozenset({SCOPED_CLUSTER}),
        ),
        Caller(label="viewer", role="viewer", token=tokens["viewer"]),
        Caller(label="viewer session", role="viewer", token=tokens["viewer"], session=True),
        Caller(label="no token", role=None, token=""),
        Caller(label="garbage token", role=None, token="garbage.token.value"),
    ]
    missing: list[str] = []
    wrong: list[str] = []
    walked = 0
    for path, operations in document["paths"].items():
        for method in _authenticated(operations):
            rule = table.get((method.upper(), path))
            if rule is None:
                missing.append(f"{method.upper()} {path}")
                continue
            clusters: list[str | None] = [None]
            if rule.scope == "cluster":
                clusters = [SCOPED_CLUSTER, "c-out"]
            for cluster in clusters:
                concrete = _fill(path, cluster)
                for caller in callers:
                    token = users_system.session(caller.token) if caller.session else caller.token
                    body = b"{}" if method.lower() in ("post", "put", "patch") else None
                    answer = call(server, method.upper(), concrete, token=token, body=body)
                    walked += 1
                    want = expected(rule, caller, cluster)
                    got = answer_class(answer.status)
                    if got != want:
                        wrong.append(
                            f"{method.upper()} {concrete} as {caller.label}: want {want}, got "
                            f"{answer.status} {answer.body.get('reason')}"
                        )
                    elif got == "403" and caller.role not in rule.roles:
                        assert "needs role" in answer.body["detail"], answer.body
    assert not missing, f"served routes with no row in docs/security.md: {missing}"
    assert not wrong, "\n".join(wrong)
    assert walked >= 15 * len(callers)
