"""The systemd units in packaging/systemd: `systemd-analyze verify` clean, exposure <= 2.0.

systemd-analyze works offline on unit files, so this needs no running systemd. `verify` checks
that ExecStart's program exists: the units are checked through copies whose /usr/bin/NAME points
at a stand-in executable (the package test checks the real link in a Debian root).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[3] / "packaging" / "systemd"
NAMES = ("edge-agent", "tunnel-server")
MAX_EXPOSURE = 2.0

# scripts/setup --test installs Debian's systemd: a missing tool fails the run, never skips it.
assert shutil.which("systemd-analyze"), "systemd-analyze missing: run scripts/setup --test"


def _analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *map(str, args)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("name", NAMES)
def test_exposure_is_at_most_two(name: str) -> None:
    done = _analyze("security", "--offline=true", UNITS / f"{name}.service")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match[1]) <= MAX_EXPOSURE, done.stdout


@pytest.mark.parametrize("name", NAMES)
def test_verify_is_clean(name: str, tmp_path: Path) -> None:
    stand_in = tmp_path / name
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    text = (UNITS / f"{name}.service").read_text()
    assert f"ExecStart=/usr/bin/{name} run --" in text
    unit = tmp_path / f"{name}.service"
    unit.write_text(text.replace(f"/usr/bin/{name}", str(stand_in)))
    done = _analyze("verify", unit)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


@pytest.mark.parametrize("name", NAMES)
def test_config_errors_do_not_loop(name: str) -> None:
    text = (UNITS / f"{name}.service").read_text()
    assert re.search(r"(?m)^RestartPreventExitStatus=2$", text)
    assert re.search(r"(?m)^Type=notify$", text)
    assert re.search(rf"(?m)^User={name}$", text)
    assert re.search(rf"(?m)^StateDirectory={name}$", text)


def test_agent_runs_its_packaged_config() -> None:
    text = (UNITS / "edge-agent.service").read_text()
    assert "ExecStart=/usr/bin/edge-agent run --config /etc/edgefleet/edge-agent.toml\n" in text
