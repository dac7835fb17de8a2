"""``app[CLUSTER_MANIFEST_KEY]``: what ``POST /api/v1/tokens`` with ``manifest: true`` returns.

The clusters part registers it; the API's token route calls it without importing the fleet.
Here the application is built as ``tunnel-server run`` builds it, and the function it holds is
called as that route calls it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunnel_server.app import bootstrap, create_app
from tunnel_server.app_keys import CLUSTER_MANIFEST_KEY
from tunnel_server.fleet import manifest
from tunnel_server.settings import ServerSettings
from tunnel_server.web.errors import ApiError


def test_the_app_renders_the_cluster_agent_manifest(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path, port=1)
    identity = bootstrap(settings)
    try:
        app = create_app(settings, identity=identity)
        render = app[CLUSTER_MANIFEST_KEY]
        ca_hash = identity.authority.ca_hash()
        text = render(
            name="prod-1",
            token="abc123.0123456789abcdef",
            server="https://fleet.example:8443",
            ca_hash=ca_hash,
            image=None,
        )
        documents = [d for d in yaml.safe_load_all(text) if d]
        secret = next(d for d in documents if d["kind"] == "Secret")
        assert secret["stringData"] == {
            "name": "prod-1",
            "server": "https://fleet.example:8443",
            "ca-hash": ca_hash,
            "token": "abc123.0123456789abcdef",
        }
        deployment = next(d for d in documents if d["kind"] == "Deployment")
        images = {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
        assert images == {manifest.DEFAULT_IMAGE}
        chosen = render(
            name="prod-1",
            token="abc123.0123456789abcdef",
            server="https://fleet.example:8443",
            ca_hash=ca_hash,
            image="registry.example.com/edgefleet:1.2.3",
        )
        assert "registry.example.com/edgefleet:1.2.3" in chosen
        for field, value, words in (
            ("image", "Not An Image", "image reference"),
            ("server", "http://fleet.example", "https://HOST"),
        ):
            arguments = {
                "name": "prod-1",
                "token": "abc123.0123456789abcdef",
                "server": "https://fleet.example:8443",
                "ca_hash": ca_hash,
                "image": None,
                field: value,
            }
            with pytest.raises(ApiError) as refused:
                render(**arguments)
            assert (refused.value.status, refused.value.code) == (400, "bad_request")
            assert words in refused.value.message
            assert "abc123" not in refused.value.message, "never the token in an error"
    finally:
        identity.store.close()
