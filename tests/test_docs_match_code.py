"""The documents people read say what the code does."""

import re
from pathlib import Path

from service.config import Settings

PROJECT = Path(__file__).resolve().parents[1]


def _readme_settings() -> dict[str, tuple[str, str]]:
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \| (.+) \|$", _read("README.md"), re.M)
    return {name: (default, meaning) for name, default, meaning in rows}


def _read(name: str) -> str:
    return (PROJECT / name).read_text()


def test_readme_configuration_table_lists_every_setting_with_its_default() -> None:
    documented = _readme_settings()
    expected = {
        name.upper(): ("" if field.default is None else str(field.default), field.description)
        for name, field in Settings.model_fields.items()
    }
    assert documented == expected


def test_env_example_lists_every_setting_with_its_default() -> None:
    pairs = dict(
        line.split("=", 1)
        for line in _read(".env.example").splitlines()
        if line and not line.startswith("#")
    )
    assert pairs == {
        name.upper(): "" if field.default is None else str(field.default)
        for name, field in Settings.model_fields.items()
    }


def test_readme_starts_with_the_two_commands() -> None:
    first_block = _read("README.md").split("```")[1]
    assert "make run" in first_block
    assert "make test" in first_block
