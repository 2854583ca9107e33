"""The serving artifact (``models.serving``) serves exactly the bundle's model, without
importing scikit-learn, SciPy, pandas or LightGBM's Python package; models without it, or
with a broken one, load the bundle as before."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from features.state import ACCEPTED, DECLINED, HOUR, UserState
from models.bundle import ModelLoadError, load_bundle_dir
from models.decide import Decider
from models.policies import PolicyConfig
from models.serving import SERVING_DIR, ServingModel, load_serving_dir, save_bundle
from simulation.synthetic import simulated_bundle
from simulation.worlds import load_world


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    world = load_world("ladder")
    bundle = simulated_bundle(world, 3000, 5, params={"n_estimators": 60})
    # an early-stopped readiness model: prediction stops at its best iteration
    bundle.readiness.booster_.best_iteration = 41
    bundle.back.calibration_x_ = bundle.back.calibration_y_ = None  # an uncalibrated one
    bundle.meta.update(version="7", metrics={"auc": 0.8123456789012345}, rows=np.int64(3000))
    path = save_bundle(bundle, tmp_path_factory.mktemp("model") / "bundle")
    return world.catalog, path


def _rows(n: int, width: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 6, (n, width)).astype(np.float64)
    X[:, 8:12] = rng.exponential(20.0, (n, 4))
    X[rng.random(X.shape) < 0.1] = np.nan
    return X


@pytest.mark.parametrize("rows", [300, 5000])  # one thread / every core
def test_served_probabilities_and_contributions_equal_the_bundles(saved, rows: int) -> None:
    catalog, path = saved
    full, full_meta = load_bundle_dir(path, catalog)
    lean, lean_meta = load_serving_dir(path, catalog)
    assert isinstance(lean.bundle.readiness, ServingModel)
    assert not isinstance(full.bundle.readiness, ServingModel)
    # meta as plain JSON: numpy numbers come back as the same Python numbers
    assert lean_meta == full_meta and type(lean_meta["rows"]) is int
    assert lean.spec == full.spec
    assert lean.bundle.typical_gap_hours == full.bundle.typical_gap_hours
    assert dict(lean.bundle.base_rates) == dict(full.bundle.base_rates)
    X = _rows(rows, len(full.spec.names))
    assert lean.has_value and full.has_value
    for rows_of in ("p_accept_rows", "p_drop_rows", "p_back_rows", "q_rows"):
        np.testing.assert_array_equal(getattr(lean, rows_of)(X), getattr(full, rows_of)(X))
    np.testing.assert_allclose(full.q_rows(X), full.bundle.value.predict(X), rtol=1e-12)
    np.testing.assert_array_equal(
        lean.bundle.readiness.contributions(X[:40]), full.bundle.readiness.contributions(X[:40])
    )
    for a, b in zip(lean.split_arrays, full.split_arrays, strict=True):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_served_decisions_and_explanations_equal_the_bundles(saved) -> None:
    catalog, path = saved
    full, _ = load_bundle_dir(path, catalog)
    lean, _ = load_serving_dir(path, catalog)
    policy = PolicyConfig.parse("planner")
    deciders = [Decider(catalog, policy, scorer=s, model_version="7") for s in (full, lean)]
    rng = np.random.default_rng(3)
    for u in range(40):
        state, t = UserState(), 1.7e9 + u * 977.0
        for _ in range(int(rng.integers(0, 4))):
            eligible = catalog.eligible_indices(state.accepted_mask)
            if not eligible or state.converted(catalog):
                break
            outcome = ACCEPTED if rng.random() < 0.5 else DECLINED
            state.apply(catalog, int(rng.choice(eligible)), outcome, t, {"channel": "email"})
            t += float(rng.choice([0.2, 3.0, 40.0])) * HOUR
        a, b = (
            d.decide(f"u{u}", state, now=t + HOUR, context={"channel": "search"}, explain=True)
            for d in deciders
        )
        assert a == b


def test_a_served_model_imports_no_scikit_learn(saved) -> None:
    """What a server imports to load it: not scikit-learn, SciPy, pandas or ``lightgbm``."""
    _, path = saved
    code = (
        "import sys\n"
        "from models.serving import load_serving_dir\n"
        f"scorer, _ = load_serving_dir({str(path)!r})\n"
        "print(type(scorer.bundle.readiness).__name__)\n"
        "print(sorted({'sklearn', 'scipy', 'pandas', 'lightgbm', 'joblib'} & set(sys.modules)))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    ).stdout.split("\n")
    assert out[:2] == ["ServingModel", "[]"]


def test_models_without_a_usable_artifact_are_refused_unless_trusted(
    saved, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No silent fallback to the pickle: only ``trust_pickle`` (``--trust-registry``) loads
    the joblib bundle of a model without a usable artifact."""
    catalog, path = saved
    import shutil

    old = shutil.copytree(path, tmp_path / "old")  # trained before the artifact existed
    shutil.rmtree(old / SERVING_DIR)
    with pytest.raises(ModelLoadError, match=r"no serving artifact.*--trust-registry"):
        load_serving_dir(old, catalog)
    with caplog.at_level(logging.WARNING, logger="nextstep.models"):
        scorer, _ = load_serving_dir(old, catalog, trust_pickle=True)
    assert not isinstance(scorer.bundle.readiness, ServingModel)
    assert "pickled bundle (trusted)" in caplog.text

    broken = shutil.copytree(path, tmp_path / "broken")
    index = broken / SERVING_DIR / "serving.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "format": 99}))
    with pytest.raises(ModelLoadError, match="serving format 99"):
        load_serving_dir(broken, catalog)
    (broken / SERVING_DIR / "readiness.txt").write_text("not a model")
    index.write_text(json.dumps({**json.loads(index.read_text()), "format": 2}))
    with pytest.raises(ModelLoadError, match="cannot load the serving artifact"):
        load_serving_dir(broken, catalog, trust_pickle=True)  # trust is for pickles, not this


def test_the_artifact_holds_no_pickle(saved) -> None:
    _catalog, path = saved
    files = sorted(p.name for p in (path / SERVING_DIR).iterdir())
    assert files == ["back.txt", "drop.txt", "meta.json", "readiness.txt", "serving.json",
                     "spec.json", "value.txt"]  # fmt: skip
    for f in (path / SERVING_DIR).iterdir():
        data = f.read_bytes()
        assert not data.startswith(b"\x80"), f"{f.name} looks like a pickle"
        data.decode("utf-8")  # text, all of it


def test_a_tampered_artifact_is_refused_and_runs_nothing(saved, tmp_path: Path) -> None:
    """A pickle payload dropped into the artifact (a file the old format would unpickle)
    and a changed model text: the recorded digest no longer matches, the load is refused
    and the payload never runs."""
    import pickle
    import shutil

    from models.serving import ArtifactDigestMismatch, serving_digest

    catalog, path = saved
    recorded = serving_digest(path / SERVING_DIR)
    good, _ = load_serving_dir(path, catalog, expected_sha256=recorded)
    assert isinstance(good.bundle.readiness, ServingModel)

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):  # what a hostile pickle does when loaded
            return (Path.touch, (marker,))

    planted = shutil.copytree(path, tmp_path / "planted")
    (planted / SERVING_DIR / "objects.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ArtifactDigestMismatch, match="changed after registration"):
        load_serving_dir(planted, catalog, expected_sha256=recorded)
    load_serving_dir(planted, catalog)  # even unverified, nothing reads the pickle
    assert not marker.exists()

    changed = shutil.copytree(path, tmp_path / "changed")
    text = changed / SERVING_DIR / "readiness.txt"
    text.write_text(text.read_text().replace("shrinkage=", "shrinkage=1", 1))
    with pytest.raises(ArtifactDigestMismatch):
        load_serving_dir(changed, catalog, expected_sha256=recorded)


def test_a_model_for_other_features_is_still_refused(saved, tmp_path: Path) -> None:
    """The artifact cannot make a model pass that the bundle's own checks refuse."""
    catalog, path = saved
    bundle = load_bundle_dir(path)[0].bundle
    spec = dataclasses.replace(bundle.spec, context_columns=(*bundle.spec.context_columns, "x"))
    other = save_bundle(dataclasses.replace(bundle, spec=spec), tmp_path / "other")
    with pytest.raises(ModelLoadError):
        load_serving_dir(other, catalog)


def test_missing_drop_and_come_back_models_use_the_base_rates(saved, tmp_path: Path) -> None:
    catalog, path = saved
    bundle = load_bundle_dir(path)[0].bundle
    small = save_bundle(dataclasses.replace(bundle, drop=None, back=None), tmp_path / "small")
    full, _ = load_bundle_dir(small, catalog)
    lean, _ = load_serving_dir(small, catalog)
    assert isinstance(lean.bundle.readiness, ServingModel)
    X = _rows(50, len(full.spec.names))
    assert lean.has_value and full.has_value
    for rows_of in ("p_accept_rows", "p_drop_rows", "p_back_rows", "q_rows"):
        np.testing.assert_array_equal(getattr(lean, rows_of)(X), getattr(full, rows_of)(X))
    np.testing.assert_allclose(full.q_rows(X), full.bundle.value.predict(X), rtol=1e-12)


def test_the_best_iteration_is_honoured(saved) -> None:
    """The served readiness model stops where the trained one does (41 of 60 iterations)."""
    catalog, path = saved
    full, _ = load_bundle_dir(path, catalog)
    lean, _ = load_serving_dir(path, catalog)
    X = _rows(200, len(full.spec.names))
    booster = full.bundle.readiness.booster_
    assert not np.array_equal(booster.predict(X, num_iteration=60), booster.predict(X))
    np.testing.assert_array_equal(lean.bundle.readiness.booster_.predict(X), booster.predict(X))
    assert len(lean.bundle.readiness.booster_.dump_model()["tree_info"]) == 41


def test_a_failed_save_leaves_no_artifact_to_serve(
    saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saving again over a model directory: if writing the artifact fails, the old one is gone
    too (the model is then refused, or served from its bundle only when trusted), never a mix
    of old and new files."""
    catalog, path = saved
    import shutil

    import models.serving as serving

    again = shutil.copytree(path, tmp_path / "again")
    bundle = load_bundle_dir(again)[0].bundle

    def broken(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(serving, "_write_serving", broken)
    with pytest.raises(OSError):
        save_bundle(bundle, again)
    assert not (again / SERVING_DIR).exists() and not (again / f"{SERVING_DIR}.tmp").exists()
    with pytest.raises(ModelLoadError, match="no serving artifact"):
        load_serving_dir(again, catalog)
    trusted = load_serving_dir(again, catalog, trust_pickle=True)[0]
    assert not isinstance(trusted.bundle.readiness, ServingModel)
