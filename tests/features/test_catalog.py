"""Catalog contract (docs/design.md section 3): every way a catalog can be wrong is rejected with a
message naming the step and the field; good catalogs load in every accepted form."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from features.catalog import Catalog, load_catalog
from features.errors import CatalogError, InputError


def good_steps() -> list[dict[str, Any]]:
    return [
        {"id": "intro", "stage": "start", "effort": 1, "title": "Read the intro"},
        {"id": "tip", "stage": "deliver", "effort": 1.5, "value": 2},
        {"id": "quiz", "stage": "guide", "effort": 2, "requires": ["intro"]},
        {"id": "account", "stage": "build", "effort": 4, "requires": ["quiz", "tip"]},
        {"id": "buy", "stage": "convert", "effort": 8, "requires": ["account"]},
    ]


def with_change(index: int, **fields: Any) -> list[dict[str, Any]]:
    """The good catalog with one step changed (a field set to ``...`` is removed)."""
    steps = good_steps()
    for key, value in fields.items():
        if value is ...:
            steps[index].pop(key, None)
        else:
            steps[index][key] = value
    return steps


def write_yaml(tmp_path: Path, data: Any, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# (catalog data, expected message regex, expected step, expected field)
BAD: list[tuple[str, Any, str, str | None, str | None]] = [
    (
        "duplicate id",
        [*good_steps(), {"id": "quiz", "stage": "guide", "effort": 1}],
        r"duplicate step id",
        "quiz",
        "id",
    ),
    (
        "unknown requires",
        with_change(2, requires=["nope"]),
        r"unknown step 'nope'",
        "quiz",
        "requires",
    ),
    ("requires itself", with_change(2, requires=["quiz"]), r"requires itself", "quiz", "requires"),
    (
        "2-cycle",
        with_change(0, requires=["quiz"]),
        r"cyclic requires \((intro -> quiz -> intro|quiz -> intro -> quiz)\)",
        None,
        "requires",
    ),
    (
        "3-cycle",
        with_change(0, requires=["account"]),
        r"cyclic requires \(.*->.*->.*->.*\)",
        None,
        "requires",
    ),
    (
        "bad stage",
        with_change(1, stage="delivery"),
        r"stage must be one of .*'delivery'",
        "tip",
        "stage",
    ),
    (
        "stage not a string",
        with_change(1, stage=["start"]),
        r"stage must be one of",
        "tip",
        "stage",
    ),
    ("effort 0", with_change(1, effort=0), r"effort must be a number > 0, got 0", "tip", "effort"),
    ("effort negative", with_change(1, effort=-1), r"effort must be a number > 0", "tip", "effort"),
    (
        "effort string",
        with_change(1, effort="big"),
        r"effort must be a number > 0, got 'big'",
        "tip",
        "effort",
    ),
    (
        "effort missing",
        with_change(1, effort=...),
        r"effort must be a number > 0, got None",
        "tip",
        "effort",
    ),
    (
        "effort NaN",
        with_change(1, effort=float("nan")),
        r"effort must be a number > 0",
        "tip",
        "effort",
    ),
    ("effort bool", with_change(1, effort=True), r"effort must be a number > 0", "tip", "effort"),
    (
        "effort huge int",
        with_change(1, effort=10**400),
        r"effort must be a number > 0",
        "tip",
        "effort",
    ),
    ("value negative", with_change(1, value=-0.5), r"value must be a number >= 0", "tip", "value"),
    (
        "requires a string",
        with_change(2, requires="intro"),
        r"requires must be a list",
        "quiz",
        "requires",
    ),
    (
        "requires a mapping",
        with_change(2, requires={}),
        r"requires must be a list",
        "quiz",
        "requires",
    ),
    (
        "requires of numbers",
        with_change(2, requires=[1]),
        r"requires must contain step ids",
        "quiz",
        "requires",
    ),
    ("no goal", good_steps()[:4], r"no goal", None, "stage"),
    ("empty list", [], r"no steps", None, None),
    ("mapping without steps", {"stages": good_steps()}, r"needs a 'steps' key", None, None),
    ("steps not a list", {"steps": "intro"}, r"expected a list of steps", None, None),
    ("scalar", "just text", r"expected a list of steps", None, None),
    ("step not a mapping", [*good_steps(), "buy"], r"step #6 is not a mapping", None, None),
    ("missing id", with_change(1, id=...), r"step #2 needs a non-empty string id", None, "id"),
    ("blank id", with_change(1, id="  "), r"needs a non-empty string id", None, "id"),
]


@pytest.mark.parametrize(
    ("data", "pattern", "step", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD],
)
def test_bad_catalog_is_rejected_naming_step_and_field(
    tmp_path: Path, data: Any, pattern: str, step: str | None, field: str | None
) -> None:
    path = write_yaml(tmp_path, data)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    err = info.value
    message = str(err)
    assert re.search(pattern, message), message
    assert str(path) in message
    if step is not None:
        assert err.step == step
        assert f"step {step!r}" in message
    if field is not None:
        assert err.field == field
        assert f"field {field!r}" in message
    if "cycle" in pattern or "cyclic" in pattern:
        assert err.step in {"intro", "quiz", "account"}


@pytest.mark.parametrize(
    ("text", "suffix", "pattern"),
    [
        pytest.param("steps: [unclosed", ".yaml", r"not valid YAML/JSON", id="not yaml"),
        pytest.param("- id: a\n  stage: [x\n", ".yml", r"not valid YAML/JSON", id="broken flow"),
        pytest.param('{"steps": [}', ".json", r"not valid YAML/JSON", id="not json"),
        pytest.param("", ".yaml", r"expected a list of steps", id="empty file"),
    ],
)
def test_unparsable_catalog_file(tmp_path: Path, text: str, suffix: str, pattern: str) -> None:
    path = tmp_path / f"catalog{suffix}"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError, match=pattern):
        load_catalog(path)


def test_missing_and_undecodable_catalog_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="file not found"):
        load_catalog(tmp_path / "nope.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"- id: caf\xe9\n")
    with pytest.raises(CatalogError, match="cannot read file"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match="cannot read file"):
        load_catalog(tmp_path)  # a directory


def test_catalog_error_is_an_input_error() -> None:
    assert issubclass(CatalogError, InputError)
    with pytest.raises(InputError):
        Catalog.from_data([])


# -- good catalogs -------------------------------------------------------------------------------
def test_list_form(tmp_path: Path) -> None:
    cat = load_catalog(write_yaml(tmp_path, good_steps()))
    assert cat.ids == ("intro", "tip", "quiz", "account", "buy")
    assert len(cat) == 5
    assert [s.id for s in cat.goals] == ["buy"]
    assert cat["tip"].value == 2.0
    assert cat["intro"].value == 0.0  # default
    assert cat["account"].requires == ("quiz", "tip")
    assert cat.source == str(tmp_path / "catalog.yaml")


def test_mapping_form_equals_list_form(tmp_path: Path) -> None:
    as_list = load_catalog(write_yaml(tmp_path, good_steps(), "a.yaml"))
    as_mapping = load_catalog(write_yaml(tmp_path, {"steps": good_steps()}, "b.yaml"))
    assert as_list == as_mapping
    assert hash(as_list) == hash(as_mapping)


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"steps": good_steps()}), encoding="utf-8")
    cat = load_catalog(path)
    assert cat.ids[-1] == "buy"
    assert cat == Catalog.from_data(good_steps())


def test_extra_fields_are_kept(tmp_path: Path) -> None:
    data = good_steps()
    data[0]["tags"] = ["onboarding", "short"]
    cat = load_catalog(write_yaml(tmp_path, data))
    assert cat["intro"].extra == {"title": "Read the intro", "tags": ["onboarding", "short"]}
    assert cat["intro"].to_dict()["title"] == "Read the intro"
    assert "title" not in cat["tip"].extra
    assert isinstance(hash(cat), int)  # unhashable extra values do not break hashing


def test_empty_requires_in_yaml_means_none(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("- id: buy\n  stage: convert\n  effort: 1\n  requires:\n", encoding="utf-8")
    assert load_catalog(path)["buy"].requires == ()


def test_long_requires_chain_does_not_hit_the_recursion_limit() -> None:
    n = 3000
    steps = [
        {"id": f"s{i}", "stage": "start", "effort": 1, "requires": [f"s{i + 1}"]}
        for i in range(n - 1)
    ]
    steps.append({"id": f"s{n - 1}", "stage": "convert", "effort": 1})
    assert len(Catalog.from_data(steps)) == n
    steps[-1]["requires"] = ["s0"]
    with pytest.raises(CatalogError, match="cyclic requires"):
        Catalog.from_data(steps)


def test_eligibility_follows_requires() -> None:
    cat = Catalog.from_data(good_steps())
    ix = cat.index
    assert cat.eligible_indices(0) == [ix["intro"], ix["tip"]]
    after_intro = cat.mask_of(["intro"])
    assert cat.eligible_indices(after_intro) == [ix["tip"], ix["quiz"]]
    ready = cat.mask_of(["intro", "tip", "quiz"])
    assert cat.eligible_indices(ready) == [ix["account"]]
    assert [s.id for s in cat.eligible(ready | 1 << ix["account"])] == ["buy"]
    assert not cat.is_converted(ready)


def test_nothing_is_eligible_once_a_goal_is_accepted() -> None:
    steps = good_steps()
    steps.append({"id": "subscribe", "stage": "convert", "effort": 3})
    cat = Catalog.from_data(steps)
    converted = cat.mask_of(["subscribe"])
    assert cat.is_converted(converted)
    assert cat.eligible_indices(converted) == []
    assert cat.eligible(cat.mask_of(["intro", "tip", "quiz", "account", "buy"])) == []


# -- typos and syntax errors -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("index", "typo", "meant", "step"),
    [
        pytest.param(2, "require", "requires", "quiz", id="require"),
        pytest.param(0, "efort", "effort", "intro", id="efort"),
        pytest.param(1, "Value", "value", "tip", id="case"),
        pytest.param(3, "max_ask", "max_asks", "account", id="guardrail setting"),
    ],
)
def test_a_misspelt_key_is_an_error_with_did_you_mean(
    tmp_path: Path, index: int, typo: str, meant: str, step: str
) -> None:
    data = good_steps()
    correct = data[index].pop(meant, 1)
    data[index][typo] = correct
    with pytest.raises(CatalogError) as info:
        load_catalog(write_yaml(tmp_path, data))
    message = str(info.value)
    assert f"did you mean {meant!r}?" in message
    assert f"step {step!r}" in message
    assert f"unknown key {typo!r}" in message


def test_a_misspelt_key_on_a_step_without_an_id_names_its_position() -> None:
    with pytest.raises(CatalogError, match=r"step #1: unknown key 'stag'; did you mean 'stage'"):
        Catalog.from_data([{"id": "", "stag": "convert", "effort": 1}])


def test_unrelated_extra_keys_are_still_kept(tmp_path: Path) -> None:
    data = good_steps()
    data[1].update(description="a tip", tags=["x"], owner="growth", label="Tip")
    cat = load_catalog(write_yaml(tmp_path, data))
    assert set(cat["tip"].extra) == {"description", "tags", "owner", "label"}


def test_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("- id: a\n  stage: convert\n   effort: 1\n", encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(r"line 3, column \d+: ", message), message


def test_json_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text('{"steps": [\n  {"id": "a",}\n]}', encoding="utf-8")
    with pytest.raises(CatalogError, match=r"line 2, column \d+: "):
        load_catalog(path)


def test_a_step_id_longer_than_the_api_allows_is_refused() -> None:
    steps = good_steps()
    steps[0]["id"] = "x" * 257
    with pytest.raises(CatalogError, match=r"step #1: id has 257 characters; at most 256"):
        Catalog.from_data(steps)
    steps[0]["id"] = "x" * 256
    steps[2]["requires"] = ["x" * 256]
    assert Catalog.from_data(steps).ids[0] == "x" * 256
