# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""A real ``edge-agent run`` process serving the kube proxy, as systemd would run it.

Used by the kube cache's kill -9 and conformance tests and by ``scripts/bench/kubecache``.
The agent is not joined to a tunnel server (its tunnel retries in the background); only
``[kube]`` matters here.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.daemons import BIN, REPO, TomlValue, launch_agent, write_agent_config
from tests.harness.procs import ManagedProcess, ServiceError, free_port
from tests.harness.waiting import NotSeen, eventually

START_TIMEOUT = 60.0
"""Seconds an agent may take to serve; generous because CI machines are busy."""


@dataclass(kw_only=True)
class KubeAgent:
    """One agent with ``[kube] enabled``; ``server`` may point at a fault proxy."""

    workdir: Path
    kubeconfig: Path
    server: str = ""
    cache_agents: tuple[str, ...] = ("*",)
    health: dict[str, float] = field(
        default_factory=lambda: {
            "interval": 0.2,
            "timeout": 1.0,
            "failure_threshold": 2,
            "success_threshold": 2,
        }
    )
    kube_port: int = field(default_factory=free_port)
    local_api_port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "agent-data"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "kubecache"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.kube_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def write_config(self) -> Path:
        kube: dict[str, TomlValue] = {
            "enabled": True,
            "kubeconfig": self.kubeconfig,
            "port": self.kube_port,
            "cache_agents": list(self.cache_agents),
            "bookmark_interval": 0.5,
        }
        if self.server:
            kube["server"] = self.server
        return write_agent_config(
            self.workdir / "agent.toml", {"kube": kube, "kube.health": self.health}
        )

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = launch_agent(
            label="edge-agent[kube]",
            config=self.write_config(),
            data_dir=self.data_dir,
            local_api_port=self.local_api_port,
            log_path=self.workdir / "agent.log",
        )

    def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.local_api_port}/status"
        with urllib.request.urlopen(url, timeout=5) as answer:
            status: dict[str, Any] = json.loads(answer.read())
            return status

    def kube_status(self) -> dict[str, Any]:
        section = self.status().get("kube")
        return section if isinstance(section, dict) else {}

    def wait_state(self, state: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Block until the proxy serves and its upstream is in ``state`` (online/offline)."""

        def kube() -> dict[str, Any]:
            assert self.process is not None
            self.process.check_running()
            return self.kube_status()

        try:
            return eventually(
                kube,
                lambda kube: bool(kube.get("serving")) and kube["upstream"]["state"] == state,
                what=f"kube proxy serving, upstream {state}",
                within=timeout,
                every=0.02,
                ignore=(OSError, ValueError),
            )
        except NotSeen as error:
            assert self.process is not None
            raise ServiceError(f"{error}\n{self.process.tail()}") from error

    def metric(self, name: str) -> float | None:
        url = f"http://127.0.0.1:{self.local_api_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(f"{name} "):
                    return float(line.split()[1])
        return None

    def kill(self) -> None:
        """SIGKILL (kill -9): no chance to flush, close or clean up."""
        assert self.process is not None
        self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def cache(self, *args: str) -> dict[str, Any]:
        """``edge-agent cache ... --json`` on this agent's data dir."""
        done = subprocess.run(
            [str(BIN / "edge-agent"), "cache", *args, "--data-dir", str(self.data_dir), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            # This tree's code, also where the shared venv was installed from another checkout.
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if done.returncode not in {0, 1}:
            raise ServiceError(f"edge-agent cache {' '.join(args)} failed: {done.stderr}")
        answer: dict[str, Any] = json.loads(done.stdout)
        answer["exit_code"] = done.returncode
        return answer
