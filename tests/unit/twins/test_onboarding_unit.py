"""Claim request parsing and the sealed credential, without a broker."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.exceptions import InvalidTag

from edge_agent.twins.onboarding import (
    SealedSecrets,
    _parse,
    b64decode,
    open_credential,
    oversized_rid,
    seal_credential,
)
from edge_agent.twins.payloads import RequestError

KEY = os.urandom(32)
KEY_TEXT = base64.urlsafe_b64encode(KEY).decode()


def test_credential_round_trip_and_binding_to_the_device() -> None:
    secrets_ = SealedSecrets(password="pa55word", client_id="dev-1-0123456789abcdef")
    sealed = seal_credential(KEY, "dev-1", secrets_)
    assert "pa55word" not in str(sealed)
    assert "0123456789abcdef" not in str(sealed)  # the client id is as secret as the password
    assert open_credential(KEY, "dev-1", sealed) == secrets_
    with pytest.raises(InvalidTag):
        open_credential(KEY, "dev-2", sealed)
    with pytest.raises(InvalidTag):
        open_credential(os.urandom(32), "dev-1", sealed)


def test_base64_with_or_without_padding() -> None:
    assert b64decode(KEY_TEXT) == KEY
    assert b64decode(KEY_TEXT.rstrip("=")) == KEY


def test_parses_a_claim() -> None:
    claim = _parse("r1", {"rid": "r1", "deviceId": "d-1", "model": "m", "responseKey": KEY_TEXT})
    assert (claim.device_id, claim.model, claim.secret, claim.key) == ("d-1", "m", None, KEY)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"deviceId": "a/b"}, "deviceId"),
        ({"deviceId": "#"}, "deviceId"),
        ({"model": ""}, "model"),
        ({"responseKey": "c2hvcnQ"}, "responseKey"),
        ({"responseKey": "!!!"}, "responseKey"),
        ({"claimSecret": 5}, "claimSecret"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_refuses_bad_claims(changes: dict[str, object], needle: str) -> None:
    data: dict[str, object] = {"rid": "r1", "deviceId": "d", "model": "m", "responseKey": KEY_TEXT}
    with pytest.raises(RequestError, match=needle):
        _parse("r1", {**data, **changes})  # type: ignore[dict-item]


def test_rid_is_required() -> None:
    with pytest.raises(RequestError, match="rid"):
        _parse(None, {})


@pytest.mark.parametrize(
    ("payload", "rid"),
    [
        (b'{"rid": "r-1", "deviceId": "d", "claimSecret": "' + b"x" * 6000 + b'"}', "r-1"),
        (b'{"claimSecret": "' + b"x" * 6000 + b'", "rid":"late.rid_2"}', "late.rid_2"),
        (b'{"claimSecret": "' + b"x" * 6000 + b'"}', None),  # no rid: nowhere to answer
        (b'{"rid": "a", "x": {"rid": "victim"}, "p": "' + b"x" * 6000 + b'"}', None),  # two
        (b'["rid", {"rid": "r-1"}, "' + b"x" * 6000 + b'"]', None),  # not an object
        (b'{"rid": "a/b", "p": "' + b"x" * 6000 + b'"}', None),  # not a topic-safe rid
        (b'{"p": "' + b"x" * 70_000 + b'", "rid": "too-far"}', None),  # beyond the scan
    ],
)
def test_oversized_claim_rid_is_found_only_when_unambiguous(
    payload: bytes, rid: str | None
) -> None:
    assert oversized_rid(payload) == rid
