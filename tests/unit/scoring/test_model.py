"""scoring/model.py: both algorithms on one matrix, their explanations, the metrics, the label checks."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.engine import FeatureSpec
from scoring.model import (
    LightGBMModel,
    LogisticModel,
    cross_validate,
    label_problem,
    load_model,
    metrics,
    time_holdout,
)


def _data(n: int = 600, seed: int = 3) -> tuple[np.ndarray, np.ndarray, FeatureSpec]:
    """Two informative columns (a number and a category), one noise column, some missing."""
    rng = np.random.default_rng(seed)
    spec = FeatureSpec(numeric=["visits", "noise"], categorical={"plan": ["free", "pro", "team"]}, use_events=False)
    visits = rng.poisson(3, n).astype(float)
    noise = rng.normal(size=n)
    plan = rng.integers(0, 4, n).astype(float)  # 3 = "another value"
    logit = 0.8 * (visits - 3) + np.where(plan == 1, 1.5, 0.0) - 0.3
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    visits[rng.random(n) < 0.05] = np.nan
    source = np.full(n, np.nan)
    matrix = np.column_stack([source, visits, noise, plan])
    assert spec.names() == ["source", "num:visits", "num:noise", "cat:plan"]
    return matrix, labels, spec


@pytest.mark.parametrize("algorithm", [LightGBMModel, LogisticModel])
def test_each_algorithm_learns_and_survives_a_round_trip(algorithm) -> None:
    matrix, labels, spec = _data()
    model = algorithm.fit(matrix[:400], labels[:400], spec)
    predictions = model.predict(matrix[400:])
    assert ((predictions >= 0) & (predictions <= 1)).all()
    assert metrics(labels[400:], predictions)["roc_auc"] > 0.75
    again = load_model(model.algorithm, model.artifact(), spec.to_json())
    assert np.allclose(again.predict(matrix[400:]), predictions)


@pytest.mark.parametrize("algorithm", [LightGBMModel, LogisticModel])
def test_contributions_add_up_to_the_prediction(algorithm) -> None:
    matrix, labels, spec = _data()
    model = algorithm.fit(matrix, labels, spec)
    contributions = model.contributions(matrix[:20])
    assert contributions.shape == (20, len(spec.names()) + 1)
    probabilities = 1 / (1 + np.exp(-contributions.sum(axis=1)))
    assert np.allclose(probabilities, model.predict(matrix[:20]), atol=1e-6)
    # The informative column moves predictions more than the noise column.
    strength = np.abs(model.contributions(matrix)).mean(axis=0)
    assert strength[1] > strength[2]


def test_missing_and_infinite_inputs_do_not_break_prediction() -> None:
    matrix, labels, spec = _data()
    weird = matrix[:3].copy()
    weird[0, 1] = np.nan
    weird[1, 1] = np.inf
    weird[2, 3] = 99  # a category code never seen
    for algorithm in (LightGBMModel, LogisticModel):
        model = algorithm.fit(matrix, labels, spec)
        assert np.isfinite(model.predict(np.nan_to_num(weird, posinf=np.nan))).all()


def test_metrics_on_a_known_ranking() -> None:
    labels = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    perfect = np.linspace(0.05, 0.95, 10)
    result = metrics(labels, perfect)
    assert result["roc_auc"] == pytest.approx(0.96)
    assert result["lift_top_decile"] == pytest.approx(2.0)  # the top 1 of 10 is positive; base rate 0.5
    assert len(result["calibration"]) == 10
    assert sum(row["leads"] for row in result["calibration"]) == 10
    assert 0 < result["brier"] < 0.25 and result["log_loss"] > 0


def test_cross_validation_predicts_every_row_with_both_algorithms() -> None:
    matrix, labels, spec = _data(300)
    validation = cross_validate(matrix, labels, spec)
    assert set(validation.predictions) == {"lightgbm", "logistic"}
    assert all(len(p) == 300 and (p > 0).all() for p in validation.predictions.values())
    report = validation.report()
    # Well above chance (0.5) for both; on 300 rows of data drawn from a logistic model the
    # baseline wins, which is why the product promotes whichever of the two is better.
    assert report["rows"] == 300 and report["lightgbm"]["roc_auc"] > 0.6 and report["logistic"]["roc_auc"] > 0.7


def test_time_holdout_needs_times_that_differ() -> None:
    matrix, labels, spec = _data(300)
    assert time_holdout(matrix, labels, np.zeros(300), spec) is None
    times = np.arange(300) * 86400.0
    holdout = time_holdout(matrix, labels, times, spec)
    assert holdout is not None and set(holdout.rows.tolist()) == set(range(240, 300)), "the newest fifth"


@pytest.mark.parametrize(
    "labels, problem",
    [([], "no labelled leads yet"), ([1] * 60, "only one outcome"), ([0] * 60, "only one outcome"),
     ([1] * 5 + [0] * 100, "too few labels (5 positive, 100 negative"), ([1, 0] * 10, "too few labels")],
)
def test_labels_that_cannot_train_a_model_say_why(labels: list[int], problem: str) -> None:
    message = label_problem(np.array(labels, dtype=int))
    assert message is not None and problem in message and "scoring stays on rules" in message


def test_enough_labels_of_both_kinds_can_train() -> None:
    assert label_problem(np.array([1] * 20 + [0] * 30)) is None
