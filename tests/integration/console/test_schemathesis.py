"""schemathesis against the real server process: the OpenAPI document matches the API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.console.conftest import ConsoleFleet


def test_api_matches_its_openapi_document(console_fleet: ConsoleFleet, tmp_path: Path) -> None:
    server = console_fleet.server
    ca = tmp_path / "ca.crt"
    ca.write_bytes(server.ca_pem)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{server.url}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {server.admin_token}",
            "--tls-verify",
            str(ca),
            "--checks",
            "all",
            "--exclude-operation-id",
            "streamEvents",  # an endless stream: checked in test_api instead
            "--max-examples",
            "100",
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # schemathesis keeps a .schemathesis/ folder in its working dir
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout, done.stdout[-3000:]
    print(done.stdout[-1500:])  # noqa: T201 - the summary, shown with -s
