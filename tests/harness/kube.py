"""Real Kubernetes control planes for tests: kine (SQLite) + kube-apiserver on loopback.

With ``etcd_servers`` (e.g. ``tests/harness/etcd_cluster.py``'s ``client_urls``) no kine
starts: the API server stores in those etcd members instead, as a production cluster does.

Binaries come from ``scripts/kube-build`` (kube-apiserver and kubectl built from the
Kubernetes Go modules, kine from ``go install``); set ``EDGEFLEET_KUBE_BIN`` to their folder.
Each control plane gets its own free ports, its own certificates, an admin token in
``system:masters`` and RBAC on, so it behaves like a real cluster to any client.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.harness.certs import TestCA, signing_key
from tests.harness.procs import ManagedProcess, ServiceError, free_port, wait_port
from tests.harness.waiting import NotSeen, eventually

KUBE_VERSION = "v1.36.3"
DEFAULT_BIN = Path.home() / ".cache" / "edgefleet" / "kube" / KUBE_VERSION
READY_TIMEOUT = 120.0  # seconds; a cold kube-apiserver on two busy cores takes 10-40 s


def kube_bin_dir() -> Path:
    """The folder with kube-apiserver, kubectl and kine, or a loud error saying how to get it."""
    folder = Path(os.environ.get("EDGEFLEET_KUBE_BIN", DEFAULT_BIN))
    missing = [b for b in ("kube-apiserver", "kubectl", "kine") if not (folder / b).is_file()]
    if missing:
        raise ServiceError(
            f"{', '.join(missing)} not found in {folder}: run scripts/kube-build "
            "(or scripts/test, which runs it) and set EDGEFLEET_KUBE_BIN to the folder it prints"
        )
    return folder


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; the message ends with what it wrote to stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}; stderr: {str(self.stderr).strip()[-2000:]}"


@dataclass(kw_only=True)
class ControlPlane:
    """One running kine + kube-apiserver pair and the files a client needs to reach it."""

    name: str
    workdir: Path
    port: int
    token: str
    ca_path: Path
    kubeconfig: Path
    kine_port: int
    """kine's port; 0 when the plane stores in etcd (``etcd_servers``) and runs no kine."""
    etcd_servers: tuple[str, ...] = ()
    """The etcd client URLs kube-apiserver stores in; empty: kine on ``kine_port``."""
    extra_tokens: dict[str, str] = field(default_factory=dict)
    """Token -> user name of users without any group, for authorization tests."""
    service_account_key: Path | None = None
    """The private key kube-apiserver signs service-account tokens with (SEC1 PEM); give it to
    kube-controller-manager as ``--service-account-private-key-file`` so the tokens its token
    controller writes verify here too."""
    service_account_public_key: Path | None = None
    """The matching public key (``--service-account-key-file``)."""
    _kine: ManagedProcess | None = None
    _apiserver: ManagedProcess | None = None
    _argv: list[str] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self._kine, self._apiserver) if p is not None]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def argv(self) -> list[str]:
        """The kube-apiserver command line (a copy), for tests that check a flag took effect."""
        return list(self._argv)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def request(
        self, method: str, path: str, body: object = None, *, timeout: float = 30.0
    ) -> tuple[int, Any]:
        """One JSON request with the admin token: (status, decoded body or None).

        ``body`` is sent as JSON; a PATCH is a merge patch. Errors come back as their status and
        the decoded ``Status`` object rather than as exceptions, so callers can wait on them.
        """
        data = None if body is None else json.dumps(body).encode()
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        request = urllib.request.Request(  # noqa: S310 - always our own https URL
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": content_type,
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - always our own https URL
                request, timeout=timeout, context=self.ssl_context()
            ) as response:
                status, raw = int(response.status), response.read()
        except urllib.error.HTTPError as error:
            with error:  # an unread or unclosed error response keeps its socket open
                status, raw = error.code, error.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane as the admin; text in and out.

        With ``check`` a non-zero exit raises ``KubectlError``, whose message has kubectl's
        stderr (a bare CalledProcessError would hide why it failed).
        """
        argv = [str(kube_bin_dir() / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)},
        )
        if check and done.returncode != 0:
            raise KubectlError(done.returncode, argv, done.stdout, done.stderr)
        return done

    def get(self, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
        """Plain GET with the admin token; for readiness and quick checks."""
        request = urllib.request.Request(  # noqa: S310 - always our own https URL
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - always our own https URL
                request, timeout=timeout, context=self.ssl_context()
            ) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()

    # -- lifecycle of the API server alone (the tests of edge autonomy stop and start it)

    def start_apiserver(self) -> None:
        if self._apiserver is not None and self._apiserver.popen.poll() is None:
            return
        self._apiserver = ManagedProcess(
            f"kube-apiserver[{self.name}]", self._argv, log_path=self.workdir / "kube-apiserver.log"
        )

    def stop_apiserver(self, *, kill: bool = False) -> None:
        if self._apiserver is None:
            return
        if kill:
            self._apiserver.kill()
        self._apiserver.stop()

    def pause_apiserver(self) -> None:
        """SIGSTOP kube-apiserver: its port and connections stay open, nothing is answered.

        A black hole, as a partitioned or hung API server looks to a client: connections are
        still accepted by the kernel (up to the backlog) and requests wait for their timeout.
        ``resume_apiserver`` lets it go on where it stopped.
        """
        if self._apiserver is not None and self._apiserver.popen.poll() is None:
            self._apiserver.popen.send_signal(signal.SIGSTOP)

    def resume_apiserver(self) -> None:
        if self._apiserver is not None and self._apiserver.popen.poll() is None:
            self._apiserver.popen.send_signal(signal.SIGCONT)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        def readyz() -> tuple[int, str]:
            for proc in (self._kine, self._apiserver):
                if proc is not None:
                    proc.check_running()
            status, body = self.get("/readyz", timeout=2.0)
            return status, body[-300:].decode(errors="replace")

        try:
            eventually(
                readyz,
                lambda answer: answer[0] == 200,
                what=f"kube-apiserver {self.name} /readyz 200",
                within=timeout,
                every=0.25,
                ignore=(OSError,),
            )
        except NotSeen as error:
            tail = self._apiserver.tail() if self._apiserver else ""
            raise ServiceError(f"{error}; log:\n{tail}") from error

    def stop(self) -> None:
        for proc in (self._apiserver, self._kine):
            if proc is not None:
                proc.stop()


def _write_kubeconfig(plane: ControlPlane) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": plane.name,
                "cluster": {"server": plane.url, "certificate-authority": str(plane.ca_path)},
            }
        ],
        "users": [{"name": "admin", "user": {"token": plane.token}}],
        "contexts": [{"name": plane.name, "context": {"cluster": plane.name, "user": "admin"}}],
        "current-context": plane.name,
    }
    plane.kubeconfig.write_text(yaml.safe_dump(config))
    plane.kubeconfig.chmod(0o600)


def _flag_name(arg: str) -> str:
    if not arg.startswith("--"):
        raise ValueError(f"extra flags must be --name=value (or a bare --name), got {arg!r}")
    return arg.split("=", 1)[0]


def merge_flags(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``base`` with every flag named in ``extra`` replaced by ``extra``'s occurrences.

    Replacing rather than appending matters: repeating a list flag such as
    ``--disable-admission-plugins`` makes the Kubernetes binaries append to the first value,
    so a caller could never turn our default off. ``extra`` flags must be ``--name=value``.
    """
    names = {_flag_name(arg) for arg in extra}
    return [arg for arg in base if _flag_name(arg) not in names] + list(extra)


def launch(
    name: str,
    workdir: Path,
    *,
    extra_tokens: dict[str, str] | None = None,
    apiserver_args: Sequence[str] = (),
    etcd_servers: Sequence[str] = (),
) -> ControlPlane:
    """Start kine and kube-apiserver without waiting for readiness (see ``wait_ready``).

    ``etcd_servers``: client URLs of running etcd members; kube-apiserver stores there and no
    kine starts (the default, empty, keeps kine).

    ``extra_tokens`` maps a token to a user name (no groups) for tests of authorization.
    ``apiserver_args`` are extra kube-apiserver flags (``--name=value``); a flag named there
    replaces our default of the same name (see ``merge_flags``), e.g.
    ``--egress-selector-config-file=...`` or ``--default-unreachable-toleration-seconds=5``.
    """
    bins = kube_bin_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    ca = TestCA(workdir / "pki", name=f"{name}-ca")
    serving = ca.issue("kube-apiserver", server=True, hosts=("127.0.0.1", "localhost", "::1"))
    sa_key, sa_pub = signing_key(workdir / "pki" / "service-account.key")
    token = secrets.token_urlsafe(24)
    lines = [f'{token},admin,admin-uid,"system:masters"']
    lines += [f"{t},{user},{user}-uid" for t, user in (extra_tokens or {}).items()]
    tokens = workdir / "tokens.csv"
    tokens.write_text("\n".join(lines) + "\n")
    tokens.chmod(0o600)

    plane = ControlPlane(
        name=name,
        workdir=workdir,
        port=free_port(),
        token=token,
        ca_path=ca.cert_path,
        kubeconfig=workdir / "kubeconfig",
        kine_port=0 if etcd_servers else free_port(),
        etcd_servers=tuple(etcd_servers),
        extra_tokens=dict(extra_tokens or {}),
        service_account_key=sa_key,
        service_account_public_key=sa_pub,
    )
    if not etcd_servers:
        plane._kine = ManagedProcess(
            f"kine[{name}]",
            [
                str(bins / "kine"),
                f"--endpoint=sqlite://{workdir}/kine.db?_journal=WAL&cache=shared&_busy_timeout=30000",
                f"--listen-address=127.0.0.1:{plane.kine_port}",
                "--metrics-bind-address=0",  # off: the default :8080 would clash between planes
            ],
            log_path=workdir / "kine.log",
        )
    storage = ",".join(etcd_servers) or f"http://127.0.0.1:{plane.kine_port}"
    base_args = [
        f"--etcd-servers={storage}",
        f"--secure-port={plane.port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",  # a loopback endpoint is invalid in Endpoints objects
        f"--tls-cert-file={serving.cert_path}",
        f"--tls-private-key-file={serving.key_path}",
        f"--client-ca-file={ca.cert_path}",
        f"--token-auth-file={tokens}",
        "--authorization-mode=RBAC",
        "--anonymous-auth=false",
        "--service-cluster-ip-range=10.96.0.0/24",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={sa_pub}",
        f"--service-account-signing-key-file={sa_key}",
        # No controller-manager runs, so nothing creates default service accounts.
        "--disable-admission-plugins=ServiceAccount",
        "--allow-privileged=true",
        "--profiling=false",
        f"--cert-dir={workdir / 'pki'}",
        "--v=1",
    ]
    plane._argv = [str(bins / "kube-apiserver"), *merge_flags(base_args, apiserver_args)]
    if plane._kine is not None:
        wait_port("127.0.0.1", plane.kine_port, timeout=30.0, proc=plane._kine)
    plane.start_apiserver()
    _write_kubeconfig(plane)
    return plane


def start(
    name: str,
    workdir: Path,
    *,
    extra_tokens: dict[str, str] | None = None,
    apiserver_args: Sequence[str] = (),
    etcd_servers: Sequence[str] = (),
) -> ControlPlane:
    """``launch`` and wait until /readyz answers 200; stops what it started on failure."""
    plane = launch(
        name,
        workdir,
        extra_tokens=extra_tokens,
        apiserver_args=apiserver_args,
        etcd_servers=etcd_servers,
    )
    try:
        plane.wait_ready()
    except BaseException:
        plane.stop()
        raise
    return plane


@contextlib.contextmanager
def control_planes(count: int, base: Path) -> Iterator[list[ControlPlane]]:
    """Start ``count`` independent control planes at once and stop them all afterwards."""
    planes: list[ControlPlane] = []
    try:
        for index in range(count):
            # One at a time so the planes that did start are in the list for the cleanup below.
            planes.append(launch(f"cluster{index}", base / f"cluster{index}"))  # noqa: PERF401
        for plane in planes:
            plane.wait_ready()
        yield planes
    finally:
        for plane in planes:
            plane.stop()
