"""``models/native.py`` calls LightGBM's C library by hand, so nothing checks its calls against
the library at import time: a LightGBM release that renames a symbol or adds a parameter would
surface as a crash or as wrong probabilities on the hot path. These tests fail loudly instead,
naming the symbol: the pin in ``pyproject.toml`` holds the major version the calls were written
for, every symbol resolves in the shipped library, every call passes as many arguments as
LightGBM's own Python package passes to the same function, and the numbers equal
``Booster.predict``'s on a small model."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import tomllib
from collections import defaultdict
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from models import native

ROOT = Path(__file__).resolve().parents[2]


def _calls(source: Path) -> dict[str, set[int]]:
    """Argument counts of every ``<anything>.LGBM_*(...)`` call in a Python file, by symbol."""
    counts: dict[str, set[int]] = defaultdict(set)
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("LGBM_")
        ):
            counts[node.func.attr].add(len(node.args))
    return counts


NATIVE_CALLS = _calls(ROOT / "models" / "native.py")


def _lightgbm_basic() -> Path:
    spec = importlib.util.find_spec("lightgbm")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).with_name("basic.py")


def test_the_calls_found_are_the_ones_serving_depends_on() -> None:
    """Guards the guard: if the parse found nothing, the tests below would pass vacuously."""
    expected = {
        "LGBM_BoosterPredictForMat",
        "LGBM_BoosterLoadModelFromString",
        "LGBM_BoosterGetNumFeature",
        "LGBM_BoosterNumModelPerIteration",
        "LGBM_BoosterDumpModel",
        "LGBM_BoosterFree",
        "LGBM_GetLastError",
    }
    assert expected <= set(NATIVE_CALLS)


def test_lightgbm_is_pinned_to_the_installed_major_version() -> None:
    """The C API may change between major versions; the pin keeps an upgrade a deliberate act."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (req,) = [
        Requirement(d) for d in project["project"]["dependencies"] if d.startswith("lightgbm")
    ]
    installed = Version(importlib.metadata.version("lightgbm"))
    assert req.specifier.contains(installed), f"lightgbm {installed} is outside {req}"
    uppers = [Version(s.version) for s in req.specifier if s.operator == "<"]
    assert uppers == [Version(f"{installed.major + 1}")], (
        f"pin lightgbm below the next major version ({req}); models/native.py calls the C API "
        f"of lightgbm {installed.major}"
    )


@pytest.mark.parametrize("symbol", sorted(NATIVE_CALLS))
def test_every_symbol_resolves_in_the_shipped_library(symbol: str) -> None:
    lib = native.library()
    assert hasattr(lib, symbol), (
        f"{symbol} is missing from LightGBM {lgb.__version__}'s C library: models/native.py "
        "needs it (update the call or the lightgbm pin)"
    )


@pytest.mark.parametrize("symbol", sorted(NATIVE_CALLS))
def test_every_call_passes_as_many_arguments_as_lightgbm_itself(symbol: str) -> None:
    """A C function's arity is not visible through ctypes; LightGBM's own Python package is
    written against the same library, so its calls are the reference for this version."""
    reference = _calls(_lightgbm_basic())
    assert symbol in reference, (
        f"lightgbm {lgb.__version__}'s Python package no longer calls {symbol}: its C signature "
        "cannot be checked; compare models/native.py with c_api.h of this version"
    )
    assert NATIVE_CALLS[symbol] <= reference[symbol], (
        f"models/native.py passes {sorted(NATIVE_CALLS[symbol])} arguments to {symbol}, "
        f"lightgbm {lgb.__version__} passes {sorted(reference[symbol])}: its C signature changed"
    )


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(600, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=600) > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": 7}
    model = lgb.train(params, lgb.Dataset(X, y), num_boost_round=25)
    model.best_iteration = 17  # prediction must stop where Booster.predict stops
    return model


def _rows(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values take the default branch
    return X


@pytest.mark.parametrize("n", [1, 40, native.PARALLEL_ROWS + 5])  # one thread and every core
def test_native_predictor_equals_booster_predict(booster: lgb.Booster, n: int) -> None:
    predictor = native.NativePredictor(booster)
    assert predictor._native, "the C library was not used: the comparison would be vacuous"
    X = _rows(n)
    np.testing.assert_array_equal(predictor(X), booster.predict(X, num_threads=1))


def test_native_booster_equals_the_python_booster(booster: lgb.Booster) -> None:
    loaded = native.NativeBooster(booster.model_to_string(), booster.best_iteration)
    X = _rows(300)
    assert loaded.num_feature() == booster.num_feature() == 5
    assert loaded.num_model_per_iteration() == booster.num_model_per_iteration() == 1
    np.testing.assert_array_equal(loaded.predict(X), booster.predict(X, num_threads=1))
    np.testing.assert_array_equal(
        loaded.predict(X, pred_contrib=True),
        booster.predict(X, num_threads=1, pred_contrib=True),
    )
    python_dump = booster.dump_model(num_iteration=booster.best_iteration)
    python_dump.pop("pandas_categorical")  # added by the Python package, not by the library
    assert loaded.dump_model() == python_dump


def test_a_native_booster_pickles_as_its_model_text(booster: lgb.Booster) -> None:
    """Dask ships scoring bundles to workers by pickling them: the copy predicts the same and
    hashes deterministically."""
    import pickle

    from dask.base import tokenize

    loaded = native.NativeBooster(booster.model_to_string(), booster.best_iteration)
    copy = pickle.loads(pickle.dumps(loaded))
    X = _rows(50)
    np.testing.assert_array_equal(copy.predict(X), loaded.predict(X))
    assert copy.best_iteration == 17
    assert tokenize(copy) == tokenize(loaded)


def test_a_library_error_is_raised_with_lightgbms_message() -> None:
    with pytest.raises(native.LightGBMError, match=r"\S"):
        native.NativeBooster("this is not a model")
