"""The OS helpers both daemons share: log lines, sd_notify and the atomic file write."""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

import pytest

from daemon_support import files, logs, systemd


def record(message: str, *, level: int = logging.WARNING, kv: object = None) -> logging.LogRecord:
    made = logging.LogRecord("edge_agent.tunnel", level, __file__, 1, message, (), None)
    if kv is not None:
        made.kv = kv
    return made


def test_journald_lines_carry_the_priority_and_no_timestamp() -> None:
    line = logs.LineFormatter(journald=True).format(record("tunnel down", kv={"retry_s": 3}))
    assert line == "<4>edge_agent.tunnel: tunnel down retry_s=3"


def test_terminal_lines_quote_values_with_spaces_quotes_or_equals() -> None:
    line = logs.LineFormatter(journald=False).format(
        record("joined", level=logging.INFO, kv={"name": "edge a", "empty": "", "q": 'x"y'})
    )
    assert line.endswith(' INFO    edge_agent.tunnel: joined name="edge a" empty="" q="x\\"y"')
    assert line[:20].endswith("Z")


def test_setup_replaces_the_root_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    try:
        logs.setup("debug")
        assert root.level == logging.DEBUG
        assert len(root.handlers) == 1
        formatter = root.handlers[0].formatter
        assert isinstance(formatter, logs.LineFormatter)
        assert formatter.journald
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_notify_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_notify_sends_the_state_to_the_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify("READY=1") is True
        assert listener.recv(64) == b"READY=1"


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edgefleet-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STOPPING=1") is True
        assert listener.recv(64) == b"STOPPING=1"


def test_write_atomic_replaces_the_file_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    files.write_atomic(target, b"new secret", mode=0o600)
    assert target.read_bytes() == b"new secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_write_atomic_leaves_the_old_file_and_no_temp_when_it_fails(tmp_path: Path) -> None:
    target = tmp_path / "token"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        files.write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]
