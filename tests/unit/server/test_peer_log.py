"""A peer's fault is one rate-limited line; our own bug keeps its traceback."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from tunnel_server.web.peer_log import LineBudget, ServerLog, is_peer_fault, one_line


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_bad_requests_costs_burst_lines_then_one_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    server_log = ServerLog(LineBudget(burst=3, window=60.0, clock=clock))
    caplog.set_level(logging.DEBUG)
    for _ in range(10):
        server_log.exception(
            "Error handling request from %s", "192.0.2.1", exc_info=BadHttpMessage("bad\nname")
        )
    lines = [r for r in caplog.records if r.name == "tunnel_server.http"]
    assert len(lines) == 3
    assert all(r.exc_info is None and r.levelno == logging.INFO for r in lines)
    assert not [r for r in caplog.records if r.name == "aiohttp.server"]
    assert lines[0].kv == {  # type: ignore[attr-defined]
        "what": "Error handling request from 192.0.2.1",
        "reason": "400, message: bad name",
    }
    caplog.clear()
    clock.now += 60.0
    server_log.exception("Error handling request from %s", "192.0.2.1", exc_info=LineTooLong("x"))
    (line,) = caplog.records
    assert line.kv["held_back"] == 7  # type: ignore[attr-defined]


def test_our_own_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    server_log = ServerLog()
    try:
        raise RuntimeError("a bug")  # noqa: TRY301 - the traceback under test
    except RuntimeError as error:
        server_log.exception("Error handling request from %s", "192.0.2.1", exc_info=error)
    (record,) = caplog.records
    assert record.name == "aiohttp.server"
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


def test_what_counts_as_the_peers_fault() -> None:
    assert is_peer_fault(ConnectionResetError())
    assert is_peer_fault(ExceptionGroup("tg", [ConnectionResetError(), BadHttpMessage("x")]))
    assert not is_peer_fault(ExceptionGroup("tg", [ConnectionResetError(), ValueError()]))
    assert not is_peer_fault(KeyError("x"))


def test_one_line_is_short_and_printable() -> None:
    text = one_line(ValueError("a\n\tb \x00" + "z" * 500))
    assert "\n" not in text
    assert "\x00" not in text
    assert len(text) <= 200
