"""The agent lets through exactly the cloud's impersonation scheme, nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cluster.impersonation import USERS, refusal

EXTRA = b"Impersonate-Extra-user.edgefleet.io"


def _headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
def test_the_scheme_passes(role: str) -> None:
    user = f"edgefleet:{role}"
    headers = _headers(
        ("Accept", "application/json"),
        ("Impersonate-User", user),
        ("impersonate-group", user),
        ("Impersonate-Extra-user.edgefleet.io", "alice%40example.com"),
    )
    assert refusal(headers) is None


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([], "Impersonate-User must be one of"),
        ([("Impersonate-User", "system:admin")], "got 'system:admin'"),
        (
            [("Impersonate-User", "edgefleet:admin"), ("Impersonate-User", "edgefleet:admin")],
            "exactly once",
        ),
        ([("Impersonate-User", "EDGEFLEET:ADMIN")], "must be one of"),
        (
            [
                ("Impersonate-User", "edgefleet:admin "),
            ],
            "must be one of",
        ),
        (
            [("Impersonate-User", "edgefleet:viewer"), ("Impersonate-Group", "system:masters")],
            "Impersonate-Group may only be edgefleet:viewer",
        ),
        (
            [("Impersonate-User", "edgefleet:viewer"), ("Impersonate-Group", "edgefleet:admin")],
            "Impersonate-Group may only be",
        ),
        ([("Impersonate-User", "edgefleet:admin"), ("Impersonate-Uid", "0")], "Impersonate-Uid"),
        (
            [("Impersonate-User", "edgefleet:admin"), ("Impersonate-Extra-scopes", "all")],
            "Impersonate-Extra-scopes is not part",
        ),
        ([("Impersonate-Group", "edgefleet:admin")], "Impersonate-User must be"),
    ],
)
def test_anything_else_is_refused(headers: list[tuple[str, str]], why: str) -> None:
    reason = refusal(_headers(*headers))
    assert reason is not None
    assert why in reason


def test_too_many_extra_values_are_refused() -> None:
    headers = _headers(("Impersonate-User", "edgefleet:admin"))
    headers += [(EXTRA, b"x")] * 5
    assert refusal(headers) is not None


@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=40)), max_size=8))
def test_any_headers_either_pass_as_the_scheme_or_are_refused(
    headers: list[tuple[bytes, bytes]],
) -> None:
    reason = refusal(headers)
    users = [v for n, v in headers if n.decode("latin-1").lower() == "impersonate-user"]
    if reason is None:
        assert len(users) == 1
        assert users[0].decode("latin-1") in USERS
