"""The fleet commands of the remote CLI against a real server.

``tunnel-server apply -f``, ``get``, ``delete`` and ``clusters accept|deny`` against a real
``tunnel-server run`` over HTTPS (the fleet REST API, /api/v1/fleet/...). The CLI runs as an
operator would run it, from its own folder, with ``--server``, ``--token`` and ``--ca-file``
(or ``$EDGEFLEET_SERVER``/``$EDGEFLEET_TOKEN``). What it did is checked in the API itself. Bad
input (a malformed document among 1,000, more than 1,000, a file too large) gives one clear
line per problem and writes nothing. Exit codes are docs/cli.md's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.daemons import BIN, Server
from tests.harness.waiting import eventually

API = "fleet.edgefleet.io/v1alpha1"
TIMEOUT = 300.0
"""A guard against a hung CLI (1,000 documents are two requests each), not a measurement."""


@dataclass(frozen=True, kw_only=True)
class Done:
    rc: int
    stdout: str
    stderr: str

    def errors(self) -> list[str]:
        assert "Traceback" not in self.stderr, self.stderr
        return [line for line in self.stderr.splitlines() if line.startswith("tunnel-server:")]


@dataclass(frozen=True, kw_only=True)
class Cli:
    server: Server
    home: Path

    def run(
        self,
        *args: str | Path,
        stdin: str | None = None,
        token: str | None = None,
        env: dict[str, str] | None = None,
        flags: bool = True,
    ) -> Done:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "XDG_"))
        }
        environment |= {"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "config")}
        environment |= env or {}
        where: list[str | Path] = []
        if flags:
            where = ["--server", self.server.url, "--token", token or self.server.admin_token]
            where += ["--ca-file", self.server.data_dir / "ca.crt"]
        done = subprocess.run(
            [BIN / "tunnel-server", *[str(a) for a in (*args, *where)]],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=self.home,
            env=environment,
            check=False,
        )
        return Done(rc=done.returncode, stdout=done.stdout, stderr=done.stderr)

    def ok(self, *args: str | Path, stdin: str | None = None) -> str:
        done = self.run(*args, stdin=stdin)
        assert done.rc == 0, done.stderr
        assert "Traceback" not in done.stderr
        return done.stdout

    def api(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - our own server
            self.server.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.server.admin_token}",
                "Content-Type": "application/json",
            },
        )
        context = self.server.ssl_context()
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as answer:  # noqa: S310
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read() or b"null")

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        status, body = self.api("GET", f"/api/v1/fleet/{plural}/{name}")
        assert status in (200, 404), (status, body)
        return body if status == 200 else None

    def puts(self, plural: str, name: str) -> int:
        """How many PUTs of this object the server's audit log holds."""
        query = f"/api/v1/audit?action=fleet.{plural}.replace&target={name}&limit=100"
        status, body = self.api("GET", query)
        assert status == 200, body
        return len(body["items"])

    def names(self, plural: str, selector: str = "") -> list[str]:
        query = f"?limit=1000&labelSelector={selector}" if selector else "?limit=1000"
        status, body = self.api("GET", f"/api/v1/fleet/{plural}{query}")
        assert status == 200, body
        return [item["metadata"]["name"] for item in body["items"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(workdir=tmp_path_factory.mktemp("fleet-cli"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def cli(server: Server, tmp_path: Path) -> Cli:
    home = tmp_path / "operator"
    home.mkdir()
    return Cli(server=server, home=home)


def placement(name: str, *, clusters: int | None = None, **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if clusters is not None:
        spec["numberOfClusters"] = clusters
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": API, "kind": "Placement", "metadata": metadata, "spec": spec}


def managed_cluster(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ManagedCluster",
        "metadata": {"name": name, "labels": labels},
        "spec": {"hubAcceptsClient": False},
    }


def condition_of(document: dict[str, Any], kind: str) -> str:
    for entry in (document.get("status") or {}).get("conditions", []):
        if entry.get("type") == kind:
            return str(entry.get("status"))
    return "-"


def cell(value: object) -> str:
    return "-" if value is None else str(value)


def table_shows(cli: Cli, args: tuple[str, ...], expected: Callable[[], list[str]]) -> None:
    """Wait until the table's row equals what the API holds.

    The hub controller, when it runs in the server, rewrites the statuses these tests set.
    """

    def both() -> tuple[list[str], list[str]]:
        lines = cli.ok(*args).splitlines()
        return lines[1].split()[: len(expected())], expected()

    eventually(both, lambda pair: pair[0] == pair[1], what=" ".join(args), within=30.0)


CONFIG_MAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "settings", "namespace": "default"},
    "data": {"mode": "fleet"},
}


def write(path: Path, documents: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


# ---------------------------------------------------------------- apply


def test_apply_created_unchanged_configured(cli: Cli, tmp_path: Path) -> None:
    file = write(tmp_path / "p.yaml", [placement("ap-one", clusters=1), placement("ap-two")])
    assert cli.ok("apply", "-f", file).splitlines() == [
        "placement.fleet.edgefleet.io/ap-one created",
        "placement.fleet.edgefleet.io/ap-two created",
    ]
    stored = cli.get("placements", "ap-one")
    assert stored is not None
    assert stored["spec"] == {"numberOfClusters": 1}
    assert cli.puts("placements", "ap-one") == 1
    assert cli.ok("apply", "-f", file).splitlines() == [
        "placement.fleet.edgefleet.io/ap-one unchanged",
        "placement.fleet.edgefleet.io/ap-two unchanged",
    ]
    # Unchanged means nothing sent. (The resourceVersion cannot tell: the hub controller writes
    # the placement's status whenever it likes.)
    assert cli.puts("placements", "ap-one") == 1
    again = cli.get("placements", "ap-one")
    assert again is not None
    assert again["metadata"]["generation"] == stored["metadata"]["generation"]
    write(file, [placement("ap-one", clusters=2), placement("ap-two")])
    assert cli.ok("apply", "-f", file).splitlines() == [
        "placement.fleet.edgefleet.io/ap-one configured",
        "placement.fleet.edgefleet.io/ap-two unchanged",
    ]
    changed = cli.get("placements", "ap-one")
    assert changed is not None
    assert changed["spec"] == {"numberOfClusters": 2}
    assert changed["metadata"]["generation"] == stored["metadata"]["generation"] + 1


def test_apply_a_folder_in_name_order_and_stdin_json(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "objects"
    folder.mkdir()
    write(folder / "b.yaml", [placement("dir-b")])
    (folder / "a.json").write_text(json.dumps([placement("dir-a1"), placement("dir-a2")]))
    (folder / "README.md").write_text("# not applied")
    lines = cli.ok("apply", "-f", folder).splitlines()
    assert lines == [
        "placement.fleet.edgefleet.io/dir-a1 created",
        "placement.fleet.edgefleet.io/dir-a2 created",
        "placement.fleet.edgefleet.io/dir-b created",
    ]
    piped = cli.ok("apply", "-f", "-", stdin=json.dumps(placement("from-stdin")))
    assert piped == "placement.fleet.edgefleet.io/from-stdin created\n"
    assert cli.get("placements", "from-stdin") is not None


def test_get_output_applies_back_unchanged(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "p.yaml", [placement("round-a", env="rt"), placement("round-b", env="rt")])
    cli.ok("apply", "-f", tmp_path / "p.yaml")
    listed = cli.ok("get", "placements", "-l", "env=rt", "-o", "yaml")
    assert [d["metadata"]["name"] for d in yaml.safe_load(listed)["items"]] == [
        "round-a",
        "round-b",
    ]
    assert cli.ok("apply", "-f", "-", stdin=listed).splitlines() == [
        "placement.fleet.edgefleet.io/round-a unchanged",
        "placement.fleet.edgefleet.io/round-b unchanged",
    ]


def thousand(prefix: str) -> list[dict[str, Any]]:
    return [placement(f"{prefix}-{i:04d}", bulk=prefix) for i in range(1000)]


def test_a_malformed_document_among_1000_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    documents = thousand("bad")
    text = yaml.safe_dump_all(documents[:499], sort_keys=False)
    text += "---\napiVersion: fleet.edgefleet.io/v1alpha1\nkind: Placement\nmetadata: {name: [x\n"
    file = tmp_path / "bulk.yaml"
    file.write_text(text + "---\n" + yaml.safe_dump_all(documents[500:], sort_keys=False))
    done = cli.run("apply", "-f", file)
    assert done.rc == 1
    errors = done.errors()
    assert errors[0].startswith(f"tunnel-server: error: {file}: document 500 (line ")
    assert "not valid YAML" in errors[0]
    assert errors[-1].startswith("tunnel-server: error: nothing applied")
    assert done.stdout == ""
    assert cli.names("placements", "bulk=bad") == []

    # A well-formed YAML with an invalid document: every problem with its JSON pointer.
    documents[700]["metadata"]["name"] = "Not_A_Name"
    documents[701]["spec"] = ["not", "an", "object"]
    write(file, documents)
    done = cli.run("apply", "-f", file)
    assert done.rc == 1
    errors = done.errors()
    assert any(f"{file}: document 701 (line " in e and ": /metadata/name: " in e for e in errors)
    assert any(f"{file}: document 702 (line " in e and ": /spec: " in e for e in errors)
    assert cli.names("placements", "bulk=bad") == []


def test_more_than_1000_documents_or_8_mib_are_refused(cli: Cli, tmp_path: Path) -> None:
    file = write(tmp_path / "many.yaml", [*thousand("many"), placement("many-extra")])
    done = cli.run("apply", "-f", file)
    assert done.rc == 1
    assert "more than 1000 documents" in done.errors()[0]
    assert cli.names("placements", "bulk=many") == []
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (1024 * 1024))
    done = cli.run("apply", "-f", big)
    assert done.rc == 1
    assert done.errors()[0] == f"tunnel-server: error: {big}: larger than 8 MiB"


def test_1000_documents_apply(cli: Cli, tmp_path: Path) -> None:
    file = write(tmp_path / "bulk.yaml", thousand("ok"))
    started = time.monotonic()
    lines = cli.ok("apply", "-f", file).splitlines()
    took = time.monotonic() - started
    assert len(lines) == 1000
    assert all(line.endswith(" created") for line in lines)
    assert len(cli.names("placements", "bulk=ok")) == 1000
    print(f"apply of 1000 placements: {took:.1f} s")  # noqa: T201 - a figure for the report


def test_a_refused_document_does_not_stop_the_others(cli: Cli, tmp_path: Path) -> None:
    cli.ok("apply", "-f", "-", stdin=json.dumps(placement("stale", clusters=1)))
    stored = cli.get("placements", "stale")
    assert stored is not None
    stale = placement("stale", clusters=3)
    stale["metadata"]["resourceVersion"] = str(int(stored["metadata"]["resourceVersion"]) - 1)
    file = write(tmp_path / "mixed.yaml", [placement("mixed-a"), stale, placement("mixed-b")])
    done = cli.run("apply", "-f", file)
    assert done.rc == 6  # 409: the object's version moved on
    assert done.stdout.splitlines() == [
        "placement.fleet.edgefleet.io/mixed-a created",
        "placement.fleet.edgefleet.io/mixed-b created",
    ]
    error = done.errors()[0]
    assert error.startswith(f"tunnel-server: error: {file}: document 2 (line ")
    assert "placement.fleet.edgefleet.io/stale" in error
    assert "(conflict)" in error
    again = cli.get("placements", "stale")
    assert again is not None
    assert again["spec"] == {"numberOfClusters": 1}


def test_a_work_too_large_is_the_servers_refusal_with_its_reason(cli: Cli) -> None:
    work = {
        "apiVersion": API,
        "kind": "Work",
        "metadata": {"name": "huge"},
        "spec": {
            "clusterName": "east",
            "workload": {
                "manifests": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "big", "namespace": "default"},
                        "data": {"blob": "x" * (600 * 1024)},
                    }
                ]
            },
        },
    }
    done = cli.run("apply", "-f", "-", stdin=json.dumps(work))
    assert done.rc == 1
    assert "(work_too_large)" in done.errors()[0]
    assert cli.get("works", "huge") is None


def test_roles_and_tokens(cli: Cli, server: Server) -> None:
    token = cli.ok("users", "create", "fleet-viewer", "--role", "viewer").strip()
    done = cli.run("apply", "-f", "-", stdin=json.dumps(placement("by-viewer")), token=token)
    assert done.rc == 4
    assert "(forbidden)" in done.errors()[0]
    assert cli.get("placements", "by-viewer") is None
    assert cli.run("get", "placements", token=token).rc == 0
    documents = json.dumps([placement("tok-a"), placement("tok-b")])
    done = cli.run("apply", "-f", "-", stdin=documents, token="efu1.wrong.token")
    assert done.rc == 3
    assert done.errors()[-1] == "tunnel-server: error: 1 document(s) not sent"
    # The environment, as the other remote commands take it.
    env = {
        "EDGEFLEET_SERVER": server.url,
        "EDGEFLEET_TOKEN": server.admin_token,
    }
    ca = ["--ca-file", str(server.data_dir / "ca.crt")]
    done = cli.run("get", "placements", "tok-a", *ca, env=env, flags=False)
    assert done.rc == 5  # reached the server with the environment's URL and token
    assert "tok-a" in done.errors()[0]


# ---------------------------------------------------------------- get


def test_get_kinds_names_and_tables(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "p.yaml", [placement("g-web", clusters=2, team="g")])
    cli.ok("apply", "-f", tmp_path / "p.yaml")
    status = {
        "numberOfSelectedClusters": 2,
        "decisions": [
            {"clusterName": "east", "score": 100, "groupIndex": 0, "groupName": ""},
            {"clusterName": "west", "score": 50, "groupIndex": 0, "groupName": ""},
        ],
        "conditions": [
            {
                "type": "PlacementSatisfied",
                "status": "True",
                "reason": "AllDecisionsScheduled",
                "message": "",
                "lastTransitionTime": "2026-12-03T20:00:00Z",
                "observedGeneration": 1,
            }
        ],
    }
    code, body = cli.api("PUT", "/api/v1/fleet/placements/g-web/status", {"status": status})
    assert code == 200, body
    for kind in (
        "placement",
        "placements",
        "Placement",
        "PLACEMENTS",
        "placement.fleet.edgefleet.io",
    ):
        table = cli.ok("get", kind, "g-web").splitlines()
        assert table[0].split() == ["NAME", "SELECTED", "SATISFIED", "AGE"]
        assert table[1].split()[0] == "g-web"

    def placement_row() -> list[str]:
        document = cli.get("placements", "g-web") or {}
        selected = (document.get("status") or {}).get("numberOfSelectedClusters")
        return ["g-web", cell(selected), condition_of(document, "PlacementSatisfied")]

    table_shows(cli, ("get", "placement", "g-web"), placement_row)
    wide = cli.ok("get", "placement/g-web", "-o", "wide").splitlines()
    assert wide[0].split() == ["NAME", "SELECTED", "SATISFIED", "CLUSTERS", "GROUPS", "AGE"]

    def placement_wide_row() -> list[str]:
        document = cli.get("placements", "g-web") or {}
        decisions = (document.get("status") or {}).get("decisions", [])
        clusters = ",".join(d["clusterName"] for d in decisions) or "-"
        return [*placement_row(), clusters]

    table_shows(cli, ("get", "placement/g-web", "-o", "wide"), placement_wide_row)
    as_json = json.loads(cli.ok("get", "placements", "g-web", "-o", "json"))
    assert as_json == cli.get("placements", "g-web")
    selected = json.loads(cli.ok("get", "placements", "-l", "team=g", "-o", "json"))
    assert [i["metadata"]["name"] for i in selected["items"]] == ["g-web"]
    assert cli.run("get", "placements", "-l", "team=nobody").stderr == "No placements found.\n"
    unknown = cli.run("get", "deployments")
    assert unknown.rc == 2
    assert "unknown kind 'deployments'" in unknown.stderr
    missing = cli.run("get", "placement", "no-such-placement")
    assert missing.rc == 5
    assert len(missing.errors()) == 1


def test_get_managed_clusters_worksets_and_works(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "c.yaml", [managed_cluster("gc-east", region="eu")])
    cli.ok("apply", "-f", tmp_path / "c.yaml")
    status = {
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "LeaseRenewed",
                "message": "",
                "lastTransitionTime": "2026-12-03T20:00:00Z",
            }
        ],
        "clusterClaims": [{"name": "nodes", "value": "3"}],
    }
    code, body = cli.api("PUT", "/api/v1/fleet/managedclusters/gc-east/status", {"status": status})
    assert code == 200, body
    for kind in ("mc", "managedclusters", "ManagedCluster", "managedcluster"):
        table = cli.ok("get", kind, "gc-east").splitlines()
        assert table[0].split() == ["NAME", "ACCEPTED", "AVAILABLE", "LABELS", "AGE"]
        assert table[1].split()[0] == "gc-east"

    def cluster_row() -> list[str]:
        document = cli.get("managedclusters", "gc-east") or {}
        accepted = "true" if document["spec"].get("hubAcceptsClient") else "false"
        return ["gc-east", accepted, condition_of(document, "Available"), "region=eu"]

    table_shows(cli, ("get", "mc", "gc-east"), cluster_row)
    workset = {
        "apiVersion": API,
        "kind": "WorkSet",
        "metadata": {"name": "gws"},
        "spec": {
            "placementRefs": [{"name": "g-web"}],
            "manifestWorkTemplate": {"workload": {"manifests": [CONFIG_MAP]}},
        },
    }
    cli.ok("apply", "-f", "-", stdin=json.dumps(workset))
    ws_status = {
        "summary": {"total": 3, "applied": 2, "available": 1, "degraded": 0, "progressing": 1},
        "rollout": {"phase": "Progressing", "message": "", "clusters": []},
    }
    code, body = cli.api("PUT", "/api/v1/fleet/worksets/gws/status", {"status": ws_status})
    assert code == 200, body
    table = cli.ok("get", "workset", "gws").splitlines()
    assert table[0].split() == ["NAME", "CLUSTERS", "APPLIED", "AVAILABLE", "PHASE", "AGE"]

    def workset_row() -> list[str]:
        status = (cli.get("worksets", "gws") or {}).get("status") or {}
        summary = status.get("summary") or {}
        counts = [cell(summary.get(key)) for key in ("total", "applied", "available")]
        return ["gws", *counts, cell((status.get("rollout") or {}).get("phase"))]

    table_shows(cli, ("get", "workset", "gws"), workset_row)
    work = {
        "apiVersion": API,
        "kind": "Work",
        "metadata": {"name": "gwork"},
        "spec": {"clusterName": "gc-east", "workload": {"manifests": [CONFIG_MAP]}},
    }
    cli.ok("apply", "-f", "-", stdin=json.dumps(work))
    table = cli.ok("get", "works").splitlines()
    assert table[0].split() == ["NAME", "CLUSTER", "APPLIED", "AVAILABLE", "DEGRADED", "AGE"]
    assert any(line.split()[:2] == ["gwork", "gc-east"] for line in table[1:])


# ---------------------------------------------------------------- delete


def test_delete_by_name_and_by_file(cli: Cli, tmp_path: Path) -> None:
    file = write(tmp_path / "d.yaml", [placement("del-a"), placement("del-b")])
    cli.ok("apply", "-f", file)
    cli.ok("apply", "-f", "-", stdin=json.dumps(placement("del-c")))
    assert (
        cli.ok("delete", "placement", "del-c") == 'placement.fleet.edgefleet.io "del-c" deleted\n'
    )
    assert cli.get("placements", "del-c") is None
    assert cli.ok("delete", "-f", file).splitlines() == [
        'placement.fleet.edgefleet.io "del-a" deleted',
        'placement.fleet.edgefleet.io "del-b" deleted',
    ]
    assert cli.get("placements", "del-a") is None
    gone = cli.run("delete", "-f", file)
    assert gone.rc == 5
    assert len(gone.errors()) == 2
    assert cli.run("delete", "-f", file, "--ignore-not-found").rc == 0
    assert cli.run("delete", "placement").rc == 2
    assert cli.run("delete").rc == 2


# ---------------------------------------------------------------- clusters accept|deny


def test_clusters_accept_and_deny(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "c.yaml", [managed_cluster("acc-east")])
    cli.ok("apply", "-f", tmp_path / "c.yaml")
    assert cli.ok("clusters", "accept", "acc-east") == (
        "managedcluster.fleet.edgefleet.io/acc-east accepted\n"
    )
    accepted = cli.get("managedclusters", "acc-east")
    assert accepted is not None
    assert accepted["spec"]["hubAcceptsClient"] is True
    assert cli.ok("clusters", "deny", "acc-east") == (
        "managedcluster.fleet.edgefleet.io/acc-east denied\n"
    )
    denied = cli.get("managedclusters", "acc-east")
    assert denied is not None
    assert denied["spec"]["hubAcceptsClient"] is False
    missing = cli.run("clusters", "accept", "not-joined")
    assert missing.rc == 5
    assert "no ManagedCluster not-joined yet" in missing.errors()[0]
    assert cli.run("clusters", "deny", "not-joined").rc == 5
