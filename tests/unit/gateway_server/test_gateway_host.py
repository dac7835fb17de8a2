"""The ``Host`` a router sees: lower case, without the port."""

from __future__ import annotations

import pytest

from tunnel_server.fleet.gateway.server import _host


@pytest.mark.parametrize(
    ("given", "host"),
    [
        ("Web.Test:8080", "web.test"),
        ("web.test", "web.test"),
        ("[::1]:443", "[::1]"),
        ("[::1]", "[::1]"),
        ("", ""),
        (None, ""),
        ("a:b", "a:b"),
    ],
)
def test_host_without_port(given: str | None, host: str) -> None:
    assert _host(given) == host
