"""``[twins]`` broker TLS keys: checked at config load, one line naming the key; exit 2 from run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.settings import AgentSettings
from edge_agent.twins import simulator
from edge_agent.twins.tls import BrokerTls, client_context
from tests.harness.certs import TestCA

BASE = '[twins]\nenabled = true\nbroker_port = 8883\nadmin_password = "a"\nclaim_password = "c"\n'


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def load(tmp_path: Path, extra: str, *, base: str = BASE) -> AgentSettings:
    path = tmp_path / "agent.toml"
    path.write_text(base + extra)
    return config.load(path)


def test_tls_with_a_ca_and_a_client_certificate(tmp_path: Path, pki: TestCA) -> None:
    client = pki.issue("edge-1", server=False)
    settings = load(
        tmp_path,
        f'broker_tls = true\nbroker_ca_file = "{pki.cert_path}"\n'
        f'broker_cert_file = "{client.cert_path}"\nbroker_key_file = "{client.key_path}"\n'
        'broker_server_name = "mqtt.site.example"\n',
    )
    twins = config.twins_settings(settings.twins, data_dir=tmp_path, node_name="n1")
    assert twins.broker_tls == BrokerTls(
        ca_file=pki.cert_path,
        cert_file=client.cert_path,
        key_file=client.key_path,
        server_name="mqtt.site.example",
    )
    context = client_context(twins.broker_tls)
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1


def test_tls_is_off_by_default(tmp_path: Path) -> None:
    twins = config.twins_settings(load(tmp_path, "").twins, data_dir=tmp_path, node_name="n1")
    assert twins.broker_tls is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("broker_tls = true\n", "broker_tls = true needs broker_ca_file"),
        (
            'broker_ca_file = "{ca}"\n',
            "[twins].broker_ca_file is set but broker_tls = false: set broker_tls = true",
        ),
        (
            'broker_server_name = "x"\n',
            "[twins].broker_server_name is set but broker_tls = false",
        ),
        (
            'broker_tls = true\nbroker_ca_file = "{missing}"\n',
            "[twins] broker_ca_file {missing}: cannot read it (No such file or directory)",
        ),
        (
            'broker_tls = true\nbroker_ca_file = "{garbage}"\n',
            "[twins] broker_ca_file {garbage}: not a PEM CA certificate",
        ),
        (
            'broker_tls = true\nbroker_ca_file = "{ca}"\nbroker_key_file = "{key}"\n',
            "[twins] broker_key_file needs broker_cert_file too",
        ),
        (
            'broker_tls = true\nbroker_ca_file = "{ca}"\nbroker_cert_file = "{cert}"\n',
            "[twins] broker_cert_file needs broker_key_file too",
        ),
        (
            (
                'broker_tls = true\nbroker_ca_file = "{ca}"\n'
                'broker_cert_file = "{cert}"\nbroker_key_file = "{other_key}"\n'
            ),
            "not a PEM certificate and its unencrypted private key",
        ),
        (
            (
                'broker_tls = true\nbroker_ca_file = "{ca}"\n'
                'broker_cert_file = "{garbage}"\nbroker_key_file = "{key}"\n'
            ),
            "not a PEM certificate and its unencrypted private key",
        ),
        ('broker_tls = "yes"\n', "broker_tls: expected true or false"),
        ('broker_ca_file = ""\n', "broker_ca_file: expected a path"),
    ],
)
def test_unusable_tls_settings_name_the_key(
    tmp_path: Path, pki: TestCA, extra: str, expected: str
) -> None:
    client, other = pki.issue("edge-1", server=False), pki.issue("edge-2", server=False)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    names = {
        "ca": pki.cert_path,
        "missing": tmp_path / "nowhere.crt",
        "garbage": garbage,
        "cert": client.cert_path,
        "key": client.key_path,
        "other_key": other.key_path,
    }
    with pytest.raises(config.ConfigError) as error:
        load(tmp_path, extra.format(**names))
    assert expected.format(**names) in str(error.value)
    assert "\n" not in str(error.value)


def test_tls_keys_are_not_checked_while_twins_are_off(tmp_path: Path) -> None:
    # The shipped config shows every key with an example path; off, nothing is read.
    settings = load(
        tmp_path,
        f'broker_ca_file = "{tmp_path / "nowhere.crt"}"\n',
        base="[twins]\nenabled = false\n",
    )
    assert settings.twins.broker_ca_file == tmp_path / "nowhere.crt"


def test_run_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + "broker_tls = true\n")
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        (
            f"edge-agent: {path}: [twins]: broker_tls = true needs broker_ca_file (the PEM CA that "
            "signed the broker's certificate; docs/mqtt-broker.md)"
        )
    ]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--broker-key-file", "k.pem"], "--broker-key-file needs --broker-ca-file (TLS)"),
        (
            ["--broker-ca-file", "nowhere.crt"],
            "edge-agent simulate: error: --broker-ca-file nowhere.crt: cannot read it",
        ),
    ],
)
def test_simulate_refuses_unusable_tls_options(
    capsys: pytest.CaptureFixture[str], options: list[str], expected: str
) -> None:
    assert simulator.main(["--claim-password", "pw", *options]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert expected in err
