"""Ctrl-C on ``edge-agent join`` while it waits for approval: one line, exit 130, resumable."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from typing import TYPE_CHECKING

from edge_agent.join import INTERRUPTED
from tests.integration.join.conftest import BIN, CLI_TIMEOUT

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.join.conftest import RunningServer


def _default_sigint() -> None:
    # Children of a shell's background job inherit SIGINT ignored; a terminal's Ctrl-C is not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_when_waiting(argv: list[str]) -> tuple[int, str]:
    """Run ``argv``, press Ctrl-C once it waits for approval; exit code and later stderr."""
    with subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        preexec_fn=_default_sigint,  # noqa: PLW1509 - runs before exec only
    ) as joiner:
        assert joiner.stderr is not None
        for line in joiner.stderr:
            if "waiting for approval" in line:
                break
        joiner.send_signal(signal.SIGINT)
        rest = joiner.stderr.read()
        return joiner.wait(timeout=CLI_TIMEOUT), rest


async def test_ctrl_c_while_waiting_for_approval(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    token = await server.token(name, "--require-approval")
    argv = [
        BIN / "edge-agent", "join", "--server", server.url, "--token", token,
        "--ca-hash", server.ca_hash, "--name", name, "--data-dir", tmp_path,
    ]  # fmt: skip
    code, rest = await asyncio.to_thread(_interrupt_when_waiting, [str(a) for a in argv])
    assert code == INTERRUPTED, rest
    assert "Traceback" not in rest
    # A progress line may come before the interrupt lands: the last line is the answer.
    [line] = [x for x in rest.strip().splitlines() if "waiting for approval" not in x]
    assert line.startswith("edge-agent: join interrupted; a join that waits for approval resumes")
    assert (tmp_path / "pending.json").exists()
