"""Kubernetes' own e2e suite (``e2e.test`` from ``scripts/kube-e2e-build``) against a kubeconfig.

The harness's control plane has no nodes, no controller-manager and no scheduler, so only
specs that talk to the API server alone can run. The flags below let the suite start there:

* ``--allowed-not-ready-nodes=-1``: do not wait for schedulable nodes nor for daemon sets;
* ``--num-nodes=1``: do not count ready nodes (with none the suite stops at start-up);
* ``--e2e-verify-service-account=false``: no controller creates the ``default`` service
  account of each test namespace (the harness disables that admission plugin too).

Results come from ginkgo's JUnit report, not from the exit code, so a test can say which spec
failed and why.
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.kube import kube_bin_dir
from tests.harness.procs import ServiceError

RUN_TIMEOUT = 1200.0
"""Seconds one e2e.test run may take before it is killed; the chosen specs take minutes."""


def e2e_binary() -> Path:
    """``e2e.test`` next to the Kubernetes binaries, or a loud error saying how to get it."""
    folder = Path(os.environ.get("EDGEFLEET_KUBE_E2E_BIN", kube_bin_dir() / "e2e"))
    binary = folder / "e2e.test"
    if not binary.is_file():
        raise ServiceError(
            f"e2e.test not found in {folder}: run scripts/kube-e2e-build (scripts/kube-build "
            "runs it) or set EDGEFLEET_KUBE_E2E_BIN to the folder it prints"
        )
    return binary


@dataclass(frozen=True, kw_only=True)
class SpecResult:
    name: str
    status: str
    """``passed``, ``failed``, ``skipped``, ``pending``, ``interrupted``..."""
    message: str = ""
    seconds: float = 0.0


@dataclass(kw_only=True)
class SuiteResult:
    specs: list[SpecResult] = field(default_factory=list)
    log_path: Path
    exit_code: int

    def ran(self) -> list[SpecResult]:
        """Specs that were selected: ``It`` specs that did not end skipped."""
        return [s for s in self.specs if s.name.startswith("[It]") and s.status != "skipped"]

    def failed(self) -> list[SpecResult]:
        return [s for s in self.specs if s.status not in {"passed", "skipped"}]

    def summary(self) -> str:
        lines = [f"e2e.test exit code {self.exit_code}; log {self.log_path}"]
        for spec in self.specs:
            if spec.status != "skipped" or not spec.name.startswith("[It]"):
                lines.append(f"  {spec.status:>8} {spec.seconds:6.1f} s  {spec.name}")
                if spec.message:
                    lines.append(f"           {spec.message[:400]}")
        return "\n".join(lines)


def parse_junit(path: Path) -> list[SpecResult]:
    """Every test case of ginkgo's JUnit report (``--ginkgo.junit-report``)."""
    root = ET.parse(path).getroot()  # noqa: S314 - written by our own e2e.test run
    out: list[SpecResult] = []
    for case in root.iter("testcase"):
        status = case.get("status", "")
        message = ""
        for tag in ("failure", "error"):
            element = case.find(tag)
            if element is not None:
                message = element.get("message", "") or (element.text or "")
                status = status or "failed"
        if not status:
            status = "skipped" if case.find("skipped") is not None else "passed"
        out.append(
            SpecResult(
                name=case.get("name", ""),
                status=status,
                message=message.strip(),
                seconds=float(case.get("time", "0") or 0),
            )
        )
    return out


def focus_regex(specs: list[str]) -> str:
    """A ginkgo focus that selects exactly the specs whose full text contains one of these."""
    return "|".join(re.escape(spec) for spec in specs)


def run_specs(
    *, kubeconfig: Path, specs: list[str], workdir: Path, timeout: float = RUN_TIMEOUT
) -> SuiteResult:
    """Run the named specs (substrings of their full text) serially; parse the report."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "junit.xml"
    log_path = workdir / "e2e.log"
    argv = [
        str(e2e_binary()),
        f"--kubeconfig={kubeconfig}",
        "--provider=skeleton",
        "--allowed-not-ready-nodes=-1",
        "--num-nodes=1",
        "--e2e-verify-service-account=false",
        "--dump-logs-on-failure=false",
        f"--e2e-output-dir={workdir}",
        f"--ginkgo.focus={focus_regex(specs)}",
        f"--ginkgo.junit-report={report}",
        "--ginkgo.no-color",
        "--ginkgo.v",
    ]
    with log_path.open("wb") as log:
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"e2e.test ran over {timeout} s; log {log_path}") from exc
    if not report.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise ServiceError(f"e2e.test wrote no JUnit report (exit {done.returncode}):\n{tail}")
    return SuiteResult(specs=parse_junit(report), log_path=log_path, exit_code=done.returncode)
