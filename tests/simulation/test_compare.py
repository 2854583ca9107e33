"""``nextstep compare``: per-offer target distributions, estimates, rollouts and MLflow runs.

A small simulated log (ladder world) and a small bundle trained in process (no MLflow) serve
every test; only the command-line test uses a real MLflow SQLite store, in ``tmp_path``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluation.offpolicy import (
    MissingPropensityError,
    PolicySpecError,
    build_policy,
    evaluate_log,
    one_step,
    trajectory,
)
from features.catalog import Catalog, load_catalog
from features.events import EventLog, load_events, validate_frame
from models.bundle import ModelScorer
from models.policy_base import DecisionInput, PolicyOutput
from models.serving import save_bundle
from simulation.compare import CompareError, compare_log
from simulation.simulate import ExactSolver, logging_distribution, write_simulation
from simulation.synthetic import bundle_from_frame
from simulation.worlds import load_world

WORLD = "ladder"
USERS = 160
ALL_POLICIES = (
    "planner",
    "greedy",
    "ladder",
    "big_ask",
    "random",
    "planner+epsilon=0.1",
    "greedy+softmax=0.05",
)
CONTEXT = ("channel", "device")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Catalog, EventLog]:
    folder = tmp_path_factory.mktemp("sim")
    write_simulation(load_world(WORLD), USERS, 11, folder)
    catalog = load_catalog(folder / "catalog.yaml")
    return folder, catalog, load_events(folder / "events.csv", catalog)


@pytest.fixture(scope="module")
def model(
    sim: tuple[Path, Catalog, EventLog], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ModelScorer]:
    """A small bundle fitted on the log itself, saved as a directory ``--model`` accepts."""
    _folder, catalog, log = sim
    bundle = bundle_from_frame(log.frame, catalog, CONTEXT, params={"n_estimators": 40})
    path = save_bundle(bundle, tmp_path_factory.mktemp("model") / "bundle")
    return path, ModelScorer(bundle, catalog)


class LoggingPolicy:
    """The simulator's logging policy as a target: 70% uniform, else ladder."""

    name = "logging"
    needs_model = False

    def __init__(self, world_name: str) -> None:
        self.world = load_world(world_name)

    def __call__(self, inp: DecisionInput) -> PolicyOutput:
        dist = logging_distribution(self.world, inp.candidates)
        probs = np.array([dist[s] for s in inp.candidates])
        return PolicyOutput(probs, probs.copy(), int(np.argmax(probs)))


# -- per-offer distributions -------------------------------------------------------------------
def test_target_propensities_are_distributions_over_the_eligible_steps(
    sim: tuple[Path, Catalog, EventLog], model: tuple[Path, ModelScorer]
) -> None:
    _folder, catalog, log = sim
    _path, scorer = model
    policies = {name: build_policy(name, catalog, scorer)[1] for name in ALL_POLICIES}
    users = log.frame["user_id"].drop_duplicates().iloc[:60]
    frame = log.frame[log.frame["user_id"].isin(users)]  # the planner costs ms per offer
    dec = evaluate_log(frame, catalog, policies, scorer=scorer, context_columns=CONTEXT, keep=True)
    assert dec.n_rows == len(frame) and dec.n_users == 60
    assert dec.eligible is not None and dec.distributions is not None and dec.states is not None
    assert dec.q_hat is not None
    for i, (elig, state) in enumerate(zip(dec.eligible, dec.states, strict=True)):
        assert elig == catalog.eligible_indices(state.accepted_mask)
        p = scorer.p_accept(state, elig, float(log.frame["ts"].iloc[dec.row[i] - 1]), {})
        for name in ALL_POLICIES:
            probs = dec.distributions[name][i]
            assert probs.shape == (len(elig),)
            assert (probs >= 0).all()
            assert probs.sum() == pytest.approx(1.0, abs=1e-12)
            k = elig.index(int(dec.step[i])) if int(dec.step[i]) in elig else None
            assert dec.target[name][i] == (0.0 if k is None else pytest.approx(probs[k]))
            assert dec.q_target[name][i] == pytest.approx(float(probs @ p), abs=1e-12)
        for name in ("planner", "greedy", "ladder", "big_ask"):
            assert sorted(dec.distributions[name][i])[-1] == 1.0  # deterministic: one-hot
        n = len(elig)
        assert dec.distributions["planner+epsilon=0.1"][i].min() >= 0.1 / n - 1e-12
        assert dec.distributions["random"][i] == pytest.approx(np.full(n, 1.0 / n))
    # The simulator's logging policy only offers eligible steps, and the logged propensity is
    # the probability the state we rebuilt gives it: the replay sees what the logger saw.
    assert dec.logged_eligible.all()
    world = load_world(WORLD)
    for i, elig in enumerate(dec.eligible):
        expected = logging_distribution(world, elig)[int(dec.step[i])]
        assert dec.propensity[i] == pytest.approx(expected, abs=1e-11)


def test_reward_model_uses_point_in_time_readiness_of_the_logged_offer(
    sim: tuple[Path, Catalog, EventLog], model: tuple[Path, ModelScorer]
) -> None:
    """q_hat equals the offline (vectorised) features scored by the model, row for row."""
    from training.predict import predict_frame

    _folder, catalog, log = sim
    _path, scorer = model
    dec = evaluate_log(
        log.frame,
        catalog,
        {"ladder": build_policy("ladder", catalog, scorer)[1]},
        scorer=scorer,
        context_columns=CONTEXT,
    )
    offline = predict_frame(log.frame, catalog, scorer)["p_accept"].to_numpy()
    assert dec.q_hat is not None
    np.testing.assert_allclose(dec.q_hat, offline[dec.row - 1], rtol=0, atol=1e-12)


def test_logging_policy_evaluated_against_itself_gives_the_on_policy_accept_rate(
    sim: tuple[Path, Catalog, EventLog],
) -> None:
    _folder, catalog, log = sim
    policies = {
        "custom": LoggingPolicy(WORLD),
        # the same distribution by name: ladder with 70% uniform exploration
        "ladder+epsilon=0.7": build_policy("ladder+epsilon=0.7", catalog, None)[1],
    }
    dec = evaluate_log(log.frame, catalog, policies, context_columns=CONTEXT)
    on_policy = float((log.frame["outcome"] == "accepted").mean())
    for name in policies:
        np.testing.assert_allclose(dec.target[name], dec.propensity, rtol=1e-9)
        result = one_step(dec, name, n_boot=50)
        assert result.estimates["ipw"]["value"] == pytest.approx(on_policy, rel=1e-9)
        assert result.estimates["snipw"]["value"] == pytest.approx(on_policy, rel=1e-9)
        assert result.ess == pytest.approx(dec.n_rows, rel=1e-9)
        assert result.estimates["snipw"]["low"] <= on_policy <= result.estimates["snipw"]["high"]
        conv = trajectory(dec, name, n_boot=50)
        logged = conv.extra["logged_conversion"]
        assert conv.headline.value == pytest.approx(logged, rel=1e-9)
        assert conv.ess == pytest.approx(USERS, rel=1e-9)
        assert conv.clipped_share == 0.0 and conv.supported_share == 1.0


def test_trajectory_weights_are_clipped_products_per_user(
    sim: tuple[Path, Catalog, EventLog],
) -> None:
    from evaluation.offpolicy import converted, trajectory_weights

    _folder, catalog, log = sim
    dec = evaluate_log(log.frame, catalog, {"ladder": build_policy("ladder", catalog, None)[1]})
    w = dec.target["ladder"] / dec.propensity
    conv = converted(dec)
    for cap in (5.0, 100.0, math.inf):
        weights = trajectory_weights(dec, "ladder", cap)
        expected = [min(float(np.prod(w[dec.user == u])), cap) for u in range(dec.n_users)]
        np.testing.assert_allclose(weights, expected, rtol=1e-12)
        t = trajectory(dec, "ladder", n_boot=0, max_weight=cap)
        # the reward (a goal) ends a walk, so PDIS weighs it by the whole walk's weight
        assert t.estimates["pdis"]["value"] == pytest.approx(float(np.mean(weights * conv)))
        assert t.ess == pytest.approx(weights.sum() ** 2 / (weights**2).sum(), rel=1e-12)
    with pytest.raises(ValueError, match="max_weight"):
        trajectory_weights(dec, "ladder", 0.5)


# -- missing propensities and bad input ------------------------------------------------------------
def _with_missing_propensity(log: EventLog, catalog: Catalog) -> tuple[EventLog, set[str]]:
    frame = log.frame.drop(columns=["row"]).copy()
    users = frame["user_id"].drop_duplicates().iloc[[2, 5]].tolist()
    first_rows = frame.index[frame["user_id"].isin(users)][:1].tolist()
    frame.loc[frame["user_id"] == users[1], "propensity"] = np.nan
    frame.loc[first_rows, "propensity"] = np.nan
    return validate_frame(frame, catalog, source="mixed.csv"), set(users)


def test_missing_propensity_is_an_error_naming_the_row_or_excludes_whole_users(
    sim: tuple[Path, Catalog, EventLog],
) -> None:
    _folder, catalog, log = sim
    mixed, users = _with_missing_propensity(log, catalog)
    policies = {"random": build_policy("random", catalog, None)[1]}
    first_bad = int(mixed.frame.loc[mixed.frame["propensity"].isna(), "row"].min())
    with pytest.raises(MissingPropensityError) as err:
        evaluate_log(mixed.frame, catalog, policies, source="mixed.csv")
    assert err.value.row == first_bad and err.value.column == "propensity"
    assert "mixed.csv" in str(err.value) and "--skip-invalid" in str(err.value)

    dec = evaluate_log(mixed.frame, catalog, policies, missing_propensity="exclude")
    dropped = mixed.frame["user_id"].isin(users)
    assert dec.excluded_users == 2 and dec.excluded_rows == int(dropped.sum())
    assert dec.n_rows == len(mixed.frame) - int(dropped.sum())
    assert not set(dec.user_ids) & users


@pytest.mark.parametrize(
    ("policies", "fragment"),
    [
        (["nonsense"], "unknown policy"),
        (["ladder+epsilon=2"], "epsilon"),
        (["ladder+boltzmann=0.1"], "unknown exploration"),
        (["ladder", "ladder"], "twice"),
        ([" ", ""], "at least one policy"),
        (["planner"], "needs a readiness model"),
    ],
)
def test_bad_policy_lists_are_clear_errors(
    sim: tuple[Path, Catalog, EventLog], policies: list[str], fragment: str
) -> None:
    _folder, catalog, log = sim
    with pytest.raises((PolicySpecError, CompareError), match=fragment):
        compare_log(log, catalog, policies, scorer=None, n_boot=0)


# -- the comparison ----------------------------------------------------------------------------
def _check_contract(payload: dict[str, Any], names: list[str]) -> None:
    assert set(payload) == {"policies"}
    assert list(payload["policies"]) == names
    for entry in payload["policies"].values():
        assert set(entry) == {"accept_rate", "conversion"}
        assert set(entry["accept_rate"]) == {"estimator", "value", "low", "high"}
        assert set(entry["conversion"]) == {
            "estimator",
            "value",
            "low",
            "high",
            "ess",
            "low_overlap",
        }
        assert entry["accept_rate"]["estimator"] == "snipw"
        assert entry["conversion"]["estimator"] in ("wpdis", "wdr")
        assert isinstance(entry["conversion"]["low_overlap"], bool)
        for part in entry.values():
            numbers = [v for k, v in part.items() if k not in ("estimator", "low_overlap")]
            assert all(isinstance(v, float) and math.isfinite(v) for v in numbers)
            assert part["low"] - 1e-12 <= part["value"] <= part["high"] + 1e-12
            assert part["low"] >= 0.0 and part["high"] <= 1.0 + 1e-12


def test_compare_without_a_model_reports_ipw_and_snipw_in_the_contract_shape(
    sim: tuple[Path, Catalog, EventLog],
) -> None:
    _folder, catalog, log = sim
    names = ["ladder", "big_ask", "random", "ladder+epsilon=0.2"]
    comp = compare_log(log, catalog, names, n_boot=60, seed=3)
    _check_contract(json.loads(json.dumps(comp.to_json())), names)
    assert not comp.reward_model
    assert set(comp.policies["random"].accept_rate.estimates) == {"ipw", "snipw"}
    table = comp.table()
    assert table["policy"].tolist() == names
    assert "accept_rate_dr" not in table.columns
    # The same seed gives the same numbers.
    again = compare_log(log, catalog, names, n_boot=60, seed=3)
    assert again.to_json() == comp.to_json()


def test_compare_with_a_world_reports_exact_and_simulated_values_next_to_the_optimum(
    sim: tuple[Path, Catalog, EventLog], model: tuple[Path, ModelScorer]
) -> None:
    _folder, catalog, log = sim
    _path, scorer = model
    names = ["ladder", "random", "ladder+epsilon=0.5", "greedy"]
    comp = compare_log(log, catalog, names, scorer=scorer, n_boot=40, world=WORLD, rollout_users=40)
    exact = ExactSolver(load_world(WORLD)).table()
    assert comp.optimum == pytest.approx(exact["optimum"]["overall"], rel=1e-12)
    for name in ("ladder", "random"):
        sim_result = comp.policies[name].simulated
        assert sim_result is not None and sim_result["method"] == "exact"
        assert sim_result["conversion"] == pytest.approx(exact[name]["overall"], rel=1e-12)
    mixed = comp.policies["ladder+epsilon=0.5"].simulated
    assert mixed is not None
    lo, hi = sorted((exact["ladder"]["overall"], exact["random"]["overall"]))
    assert lo < mixed["conversion"] < hi  # a mixture of ladder and random lies between them
    greedy = comp.policies["greedy"].simulated
    assert greedy is not None and greedy["method"] == "monte_carlo" and greedy["users"] == 40
    assert 0.0 <= greedy["conversion"] <= 1.0 and greedy["se"] > 0
    # its decisions scored as rollout scores them, on the same users (simulation.regret)
    assert greedy["regret"] > 0 and 0 < greedy["regret_se"] < greedy["regret"]
    assert "regret" not in comp.policies["ladder"].simulated  # exact: nothing to estimate
    assert comp.reward_model and "dr" in comp.policies["greedy"].accept_rate.estimates
    table = comp.table()
    assert {"conversion_simulated", "optimum", "accept_rate_dr"} <= set(table.columns)
    assert table.set_index("policy").loc["greedy", "regret_simulated"] == greedy["regret"]


def test_a_world_with_another_catalog_is_refused(sim: tuple[Path, Catalog, EventLog]) -> None:
    _folder, catalog, log = sim
    with pytest.raises(CompareError, match="catalog differs"):
        compare_log(log, catalog, ["ladder"], world="eager", n_boot=0)


def test_chart_is_a_png(sim: tuple[Path, Catalog, EventLog], tmp_path: Path) -> None:
    from simulation.compare import plot_comparison

    _folder, catalog, log = sim
    comp = compare_log(log, catalog, ["ladder", "random"], n_boot=20)
    path = plot_comparison(comp, tmp_path / "chart.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the command line and MLflow ----------------------------------------------------------------
@pytest.fixture
def mlflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working tree
    return uri


def _cli(*args: str) -> Any:
    from nextstep.cli.app import app

    return CliRunner().invoke(app, ["compare", *args])


@pytest.mark.slow
def test_cli_writes_the_contract_json_and_one_mlflow_run_per_policy(
    sim: tuple[Path, Catalog, EventLog],
    model: tuple[Path, ModelScorer],
    mlflow_home: str,
    tmp_path: Path,
) -> None:
    from mlflow import MlflowClient

    folder, _catalog, _log = sim
    bundle_dir, _scorer = model
    names = ["planner", "greedy", "ladder", "big_ask", "random", "greedy+epsilon=0.1"]
    out = tmp_path / "compare.json"
    result = _cli(
        "--events", str(folder / "events.csv"),
        "--catalog", str(folder / "catalog.yaml"),
        "--policies", ",".join(names),
        "--model", str(bundle_dir),
        "--json", str(out),
        "--n-boot", "50",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _check_contract(json.loads(out.read_text(encoding="utf-8")), names)
    assert "planner" in result.output and "snipw" in result.output

    client = MlflowClient(tracking_uri=mlflow_home)
    exp = client.get_experiment_by_name("nextstep-compare")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["policy"] for r in children) == sorted(names)
    assert len(runs) == 1 + len(names)
    payload = json.loads(out.read_text(encoding="utf-8"))["policies"]
    for run in children:
        name = run.data.params["policy"]
        m = run.data.metrics
        assert m["accept_rate"] == pytest.approx(payload[name]["accept_rate"]["value"])
        assert m["conversion"] == pytest.approx(payload[name]["conversion"]["value"])
        assert m["ess"] == pytest.approx(payload[name]["conversion"]["ess"])
        assert {"accept_rate_ipw", "accept_rate_snipw", "accept_rate_dr", "conversion_pdis"} <= set(
            m
        )
    greedy_eps = next(r for r in children if r.data.params["policy"] == "greedy+epsilon=0.1")
    assert greedy_eps.data.params["policy_name"] == "greedy"
    assert greedy_eps.data.params["exploration"] == "epsilon"
    assert float(greedy_eps.data.params["exploration_value"]) == 0.1
    assert parent.data.tags["nextstep.kind"] == "compare"
    assert parent.data.params["data_rows"] == str(len(_log.frame))

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.png", "comparison.csv", "comparison.json"} <= artifacts
    local = Path(client.download_artifacts(parent.info.run_id, "comparison.png", str(tmp_path)))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = Path(client.download_artifacts(parent.info.run_id, "comparison.csv", str(tmp_path)))
    assert pd.read_csv(csv)["policy"].tolist() == names


def test_cli_without_logged_propensities_exits_2_and_skip_invalid_is_not_enough(
    sim: tuple[Path, Catalog, EventLog], mlflow_home: str, tmp_path: Path
) -> None:
    folder, _catalog, _log = sim
    frame = pd.read_csv(folder / "events.csv").drop(columns=["propensity"])
    frame.to_csv(tmp_path / "nolog.csv", index=False)
    common = ("--catalog", str(folder / "catalog.yaml"), "--policies", "ladder")
    result = _cli("--events", str(tmp_path / "nolog.csv"), *common, "--model", "none-here")
    assert result.exit_code == 2
    assert "propensity" in result.output and "row 1" in result.output
    result = _cli(
        "--events", str(tmp_path / "nolog.csv"), *common, "--model", "none-here", "--skip-invalid"
    )
    assert result.exit_code == 2
    assert "nothing left to evaluate" in result.output


def test_cli_model_policy_without_a_model_exits_2(
    sim: tuple[Path, Catalog, EventLog], mlflow_home: str
) -> None:
    folder, _catalog, _log = sim
    result = _cli(
        "--events", str(folder / "events.csv"),
        "--catalog", str(folder / "catalog.yaml"),
        "--policies", "planner,ladder",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no model registered" in result.output
    assert not (Path(mlflow_home[len("sqlite:///") :])).exists()  # nothing was logged
