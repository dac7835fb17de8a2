"""What the daemons load before any feature is on: never the official client, no switched-off part.

Each check runs in a fresh interpreter (``sys.modules`` of the test process holds everything).
Issue 18 measured the costs these checks keep away (RSS after import, 2 CPUs): cryptography
8 MiB (only a join, a renewal or a CA announcement needs it, never a joined agent whose tunnel
is up: it reads its certificate's validity from ``identity.json``), device_models 0.5 MiB
(only [twins]), PyYAML 0.8 MiB (only a kubeconfig that is read), psutil 0.9 MiB and the
tunnel client with tunnel_aio 3 MiB (loaded after a kube proxy serves).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

from edge_agent.identity import Identity, load_key, save_identity, spki_hash
from tests.harness.certs import TestCA

if TYPE_CHECKING:
    from pathlib import Path

FEATURE_MODULES = (
    "aiomqtt",  # [twins]
    "edge_agent.twins.mqtt_service",
    "edge_agent.twin_link",
    "edge_agent.kubecache.proxy",  # [kube]
    "edge_agent.kubecache.store",
    "edge_agent.kubecache.table",
    "edge_agent.cluster.apiserver",  # [cluster]
    "edge_agent.cluster.works.applier",
)

HEAVY_MODULES = (
    "cryptography",  # identity, join, ca_rotation: imported where a certificate is handled
    "yaml",  # daemon_support.kubeconfig: imported when a kubeconfig is parsed
    "psutil",  # node_status, local_api: after the kube proxy serves
    "edge_agent.tunnel_client",  # the daemon's _LATE_MODULES
    "edge_agent.node_status",
    "edge_agent.local_api",
    "tunnel_aio",
)


def _loaded(*modules: str, then: str = "") -> set[str]:
    """The modules in ``sys.modules`` after a fresh interpreter imported ``modules``.

    ``then``: code run after the imports, before ``sys.modules`` is read.
    """
    code = (
        f"import sys\nfor name in {list(modules)!r}:\n    __import__(name)\n{then}\n"
        "print(__import__('json').dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout))


def test_no_daemon_imports_the_official_kubernetes_client() -> None:
    loaded = _loaded(
        "edge_agent.cli", "edge_agent.daemon", "tunnel_server.cli", "tunnel_server.kube"
    )
    assert "daemon_support.kubeconfig" in loaded  # the loader they use instead
    assert not {name for name in loaded if name.split(".")[0] == "kubernetes"}


def test_the_agent_loads_no_part_before_its_feature_is_on() -> None:
    loaded = _loaded("edge_agent.cli", "edge_agent.daemon")
    assert not loaded.intersection(FEATURE_MODULES)


def test_the_agent_entry_loads_no_heavy_module_before_it_runs() -> None:
    loaded = _loaded("edge_agent.cli", "edge_agent.daemon")
    assert "aiohttp.web" in loaded  # the kube proxy and the local API serve with it
    assert not {name for name in loaded if name.split(".")[0] in HEAVY_MODULES}
    assert not loaded.intersection(HEAVY_MODULES)


def test_a_config_without_twins_loads_no_device_model_code(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text("[kube]\nenabled = true\n")
    path = str(tmp_path / "agent.toml")
    load = f"from pathlib import Path\nfrom edge_agent import config\nconfig.load(Path({path!r}))"
    assert "device_models" not in _loaded("edge_agent.cli", "edge_agent.daemon", then=load)
    # A [twins] table that names a discovery prefix is checked with device_models.
    (tmp_path / "agent.toml").write_text('[twins]\nhome_assistant_prefix = "ha"\n')
    assert "device_models" in _loaded("edge_agent.cli", then=load)


def test_reading_an_identity_leaves_cryptography_until_its_certificate_is_used(
    tmp_path: Path,
) -> None:
    (tmp_path / "identity.json").write_text(
        json.dumps(
            {
                "server": "https://cloud.example:8443",
                "name": "node-1",
                "kind": "node",
                "ca_hash": "sha256:" + "0" * 64,
                "key_file": "node-1.key",
                "cert_file": "node-1.crt",
            }
        )
    )
    # Not a certificate: only parsing it needs (and loads) cryptography, and it fails.
    (tmp_path / "node-1.crt").write_text("not a certificate")
    load = (
        "from pathlib import Path\nfrom edge_agent.identity import Identity\n"
        f"identity = Identity.load(Path({str(tmp_path)!r}))\nassert identity.name == 'node-1'"
    )
    assert "cryptography" not in _loaded("edge_agent.identity", "edge_agent.join", then=load)
    parse = load + "\ntry:\n    identity.certificate\nexcept ValueError:\n    pass"
    assert "cryptography" in _loaded("edge_agent.identity", then=parse)


STEADY_STATE = """
import asyncio
from pathlib import Path
import prometheus_client
from edge_agent.identity import Identity
from edge_agent.node_status import NodeStatusCollector
from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient


async def main() -> None:
    data_dir = Path({data_dir!r})
    registry = prometheus_client.CollectorRegistry()
    client = TunnelClient(
        data_dir=data_dir, settings=TunnelClientSettings(), join_settings=JoinSettings(),
        registry=registry,
    )
    identity = Identity.load(data_dir)
    client._ssl_context(identity)  # each session: its TLS context and the expiry metric
    assert not identity.needs_renewal(fraction=JoinSettings().renew_fraction)  # the renewer
    client.status()  # the local API's /status
    NodeStatusCollector(data_dir=data_dir, disk_path=data_dir).sample()  # each status report
    expiry = registry.get_sample_value("edge_agent_certificate_expiry_timestamp_seconds")
    assert expiry == identity.not_after.timestamp()


asyncio.run(main())
"""
"""What a joined agent does with its identity while its tunnel is up and no renewal is due."""


def _join(data_dir: Path, pki: Path) -> Identity:
    """The files ``edge-agent join`` leaves, saved by the same code."""
    ca = TestCA(pki)
    pair = ca.issue("edge-1", server=False)
    return save_identity(
        data_dir,
        server="https://cloud.example:8443",
        kind="node",
        ca_hash=spki_hash(ca.cert),
        key=load_key(pair.key_path),
        certificate_pem=pair.cert_path.read_bytes(),
        ca_pem=ca.cert_path.read_bytes(),
    )


def _steady_state(data_dir: Path) -> set[str]:
    return _loaded(
        "edge_agent.cli", "edge_agent.daemon", then=STEADY_STATE.format(data_dir=str(data_dir))
    )


def test_a_joined_agent_with_its_tunnel_up_never_loads_cryptography(tmp_path: Path) -> None:
    _join(tmp_path / "agent", tmp_path / "pki")
    assert "cryptography" not in _steady_state(tmp_path / "agent")


def test_an_identity_an_older_release_saved_is_parsed_once_then_recorded(tmp_path: Path) -> None:
    """Without a recorded validity the certificate is parsed, and the record written for later."""
    data_dir = tmp_path / "agent"
    joined = _join(data_dir, tmp_path / "pki")
    path = data_dir / "identity.json"
    meta = json.loads(path.read_text())
    recorded = meta.pop("certificate")
    path.write_text(json.dumps(meta))  # as a release before the record saved it
    assert "cryptography" in _steady_state(data_dir)
    assert json.loads(path.read_text()) == {**meta, "certificate": recorded}
    assert "cryptography" not in _steady_state(data_dir)
    assert Identity.load(data_dir) == joined
