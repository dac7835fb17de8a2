"""The agent's ``[twins]`` table: parsed, checked, secrets read from files."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.settings import TwinsConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_twins_are_off_by_default() -> None:
    assert config.load(None).twins == TwinsConfig()
    assert not TwinsConfig().enabled


def test_a_twins_table_with_password_files(tmp_path: Path) -> None:
    (tmp_path / "admin").write_text("s3cret\n")
    (tmp_path / "claim").write_text("claim-pw\nignored second line\n")
    settings = config.load(
        write(
            tmp_path,
            "[twins]\nenabled = true\nbroker_port = 18830\n"
            f'admin_password_file = "{tmp_path / "admin"}"\n'
            f'claim_password_file = "{tmp_path / "claim"}"\n'
            f'models_dir = "{tmp_path}"\ndurability = "normal"\n',
        )
    )
    twins = settings.twins
    assert (twins.enabled, twins.broker_port, twins.durability) == (True, 18830, "normal")
    assert twins.models_dir == tmp_path
    assert twins.secrets() == ("s3cret", "claim-pw")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[twins]\nenabled = true\n", "admin_password_file"),
        ('[twins]\nenabled = true\nadmin_password = "a"\n', "claim_password_file"),
        ("[twins]\nbroker = 1\n", "unknown key(s) broker"),
        ("[twins]\nbroker_port = 70000\n", "broker_port: must be between 1 and 65535"),
        ('[twins]\ndurability = "fast"\n', 'durability: "full" or "normal"'),
        ("[twins]\nenabled = 1\n", "expected true or false"),
        ("[twins]\nadmin_password_file = 3\n", "admin_password_file: expected a path"),
    ],
)
def test_bad_twins_tables_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(config.ConfigError, match=r".*") as caught:
        config.load(write(tmp_path, text))
    assert message in str(caught.value)
    assert "[twins]" in str(caught.value)


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "admin").write_text("\n")
    twins = TwinsConfig(enabled=True, admin_password_file=tmp_path / "admin", claim_password="c")
    with pytest.raises(ValueError, match="is empty"):
        twins.secrets()
