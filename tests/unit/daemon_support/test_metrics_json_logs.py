"""The optional JSON log format: one object per line, the context as keys, levels kept.

(Named test_metrics_* with the rest of issue 19's observability work.)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_support import logs
from tests.harness.daemons import BIN
from tests.harness.procs import ManagedProcess, free_port
from tests.harness.waiting import eventually


def record(message: str, *, level: int = logging.INFO, kv: object = None) -> logging.LogRecord:
    made = logging.LogRecord("edge_agent.tunnel", level, __file__, 1, message, (), None)
    made.created = 1764806400.123  # 2025-12-04T00:00:00.123Z
    if kv is not None:
        made.kv = kv
    return made


def test_a_record_is_one_json_object_with_its_context_as_keys() -> None:
    line = logs.JsonFormatter(journald=False).format(
        record("tunnel down", level=logging.WARNING, kv={"retry_s": 3, "path": Path("/x")})
    )
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "2025-12-04T00:00:00.123Z",
        "level": "warning",
        "logger": "edge_agent.tunnel",
        "message": "tunnel down",
        "retry_s": 3,
        "path": "/x",  # not JSON: its text
    }


def test_context_keys_never_replace_the_fixed_ones() -> None:
    line = logs.JsonFormatter(journald=False).format(
        record("real", kv={"message": "forged", "level": "critical"})
    )
    entry = json.loads(line)
    assert (entry["message"], entry["level"]) == ("real", "info")
    assert (entry["kv.message"], entry["kv.level"]) == ("forged", "critical")


def _fail() -> None:
    raise RuntimeError("boom")


def test_under_journald_the_priority_prefix_stays_and_tracebacks_are_one_key() -> None:
    made = record("failed", level=logging.ERROR)
    try:
        _fail()
    except RuntimeError:
        made.exc_info = sys.exc_info()
    line = logs.JsonFormatter(journald=True).format(made)
    assert line.startswith("<3>{")
    entry = json.loads(line[3:])
    assert "RuntimeError: boom" in entry["exception"]
    assert "\n" in entry["exception"]  # inside the JSON string, escaped on the line


@pytest.fixture
def root_saved() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield root
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_setup_takes_the_flag_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, root_saved: logging.Logger
) -> None:
    monkeypatch.setenv(logs.LOG_FORMAT_ENV, "json")
    logs.setup("info")
    assert isinstance(root_saved.handlers[0].formatter, logs.JsonFormatter)
    logs.setup("info", log_format="line")
    assert isinstance(root_saved.handlers[0].formatter, logs.LineFormatter)
    with pytest.raises(ValueError, match="log format"):
        logs.setup("info", log_format="xml")


def test_an_unknown_format_in_the_environment_is_line_and_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    root_saved: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(logs.LOG_FORMAT_ENV, "jsn")
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.setup("info")  # its handler writes to the stderr capsys holds now
    assert isinstance(root_saved.handlers[0].formatter, logs.LineFormatter)
    warned = capsys.readouterr().err
    assert " WARNING daemon_support.logs: EDGEFLEET_LOG_FORMAT=jsn is not a log format" in warned


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line of ``text`` as JSON (a line that is not JSON fails the test)."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    entries = [json.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "message"} <= entry.keys() for entry in entries)
    return entries


def clean_env() -> dict[str, str]:
    skip = {"JOURNAL_STREAM", logs.LOG_FORMAT_ENV}
    return {k: v for k, v in os.environ.items() if k not in skip}


@pytest.mark.timeout(60)
def test_the_server_prints_json_lines_with_the_flag(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "tunnel-server"), "--log-format", "json", "init", "--data-dir", tmp_path],
        capture_output=True,
        text=True,
        timeout=50,
        env=clean_env(),
        check=True,
    )
    entries = json_lines(done.stderr)
    assert any(entry["message"] == "created CA" for entry in entries), entries


@pytest.mark.timeout(60)
def test_the_agent_prints_json_lines_with_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that has not joined runs and logs why it cannot connect: as JSON."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)  # no priority prefix in front
    log = tmp_path / "agent.log"
    agent = ManagedProcess(
        "edge-agent",
        [
            str(BIN / "edge-agent"),
            "run",
            "--data-dir",
            str(tmp_path / "agent"),
            "--local-api-port",
            str(free_port()),
        ],
        log_path=log,
        env={logs.LOG_FORMAT_ENV: "json"},
    )
    try:
        eventually(
            log.read_text,
            lambda text: '"reason":"not_joined"' in text,
            what="the agent logs that it has not joined",
        )
    finally:
        agent.stop()
    entries = json_lines(log.read_text())
    unavailable = [entry for entry in entries if entry["message"] == "tunnel unavailable"]
    assert unavailable[0]["level"] == "warning"
    assert unavailable[0]["logger"] == "edge_agent.tunnel"
