"""World files (simulation/worlds.py): a misspelt key is refused with "did you mean", never
silently replaced by a default; YAML syntax errors are one line with line and column."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from features.errors import InputError
from simulation.worlds import BUILTIN, load_world


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_a_good_world_file_loads(tmp_path: Path) -> None:
    world = load_world(str(_write(tmp_path, copy.deepcopy(BUILTIN["ladder"]))))
    assert world.name == "mine"
    assert world.catalog == load_world("ladder").catalog


def test_a_misspelt_world_key_is_refused_with_did_you_mean(tmp_path: Path) -> None:
    data = copy.deepcopy(BUILTIN["ladder"])
    data["max_ask"] = data.pop("max_asks")
    with pytest.raises(InputError, match=r"unknown key 'max_ask'; did you mean 'max_asks'\?"):
        load_world(str(_write(tmp_path, data)))


def test_a_misspelt_type_key_names_the_type(tmp_path: Path) -> None:
    data = copy.deepcopy(BUILTIN["eager"])
    first = data["types"][0]
    first["resistence"] = first.pop("resistance")
    with pytest.raises(InputError) as info:
        load_world(str(_write(tmp_path, data)))
    assert f"type {first['name']!r}" in str(info.value)
    assert "did you mean 'resistance'?" in str(info.value)


def test_an_unrelated_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    data = copy.deepcopy(BUILTIN["ladder"])
    data["owner"] = "growth"
    with pytest.raises(InputError, match=r"unknown key 'owner' \(known: catalog, "):
        load_world(str(_write(tmp_path, data)))


def test_a_typo_inside_the_world_catalog_is_refused(tmp_path: Path) -> None:
    data = copy.deepcopy(BUILTIN["two_goals"])
    step = next(s for s in data["catalog"] if s.get("requires"))
    step["require"] = step.pop("requires")
    with pytest.raises(InputError, match=r"did you mean 'requires'\?"):
        load_world(str(_write(tmp_path, data)))


def test_yaml_syntax_error_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("max_asks: 8\n  types: [\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"not valid YAML \(line \d+, column \d+: ") as info:
        load_world(str(path))
    assert "\n" not in str(info.value)
