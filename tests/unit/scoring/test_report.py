"""scoring/report.py and the ROC points of scoring/model.py: bands, promotion, importances, rule reach."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from scoring.engine import EventArrays, FeatureSpec, LeadArrays, Rule
from scoring.model import ROC_POINTS, LogisticModel, metrics, roc_points
from scoring.report import (
    ModelVersion,
    OutcomeScore,
    band_index,
    importances,
    logistic_weights,
    reach_counts,
    score_bands,
    training_note,
    validation_rows,
    was_promoted,
)
from scoring.service import TrainReport

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)
DAY = 86400.0


# ----------------------------------------------------------------------------- ROC points


def test_roc_points_are_downsampled_from_corner_to_corner() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 5000)
    scores = np.clip(labels * 0.3 + rng.random(5000), 0, 1)
    points = roc_points(labels, scores)
    assert 10 < len(points) <= ROC_POINTS
    assert points[0] == [0.0, 0.0] and points[-1] == [1.0, 1.0]
    fpr, tpr = zip(*points)
    assert list(fpr) == sorted(fpr) and list(tpr) == sorted(tpr), "a ROC curve never turns back"
    assert metrics(labels, scores)["roc"] == points


def test_a_perfect_ranking_passes_through_the_top_left_corner() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    points = metrics(labels, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))["roc"]
    assert [0.0, 1.0] in points and len(points) <= 4


# ----------------------------------------------------------------------------- the closed loop


@pytest.mark.parametrize("score, band", [(0, 0), (-3, 0), (19.99, 0), (20, 1), (59.5, 2), (80, 4), (100, 4), (130, 4)])
def test_a_band_holds_its_lower_bound_and_the_top_band_holds_100(score: float, band: int) -> None:
    assert band_index(score) == band


def test_bands_per_topic_and_for_all_topics_count_each_lead_once() -> None:
    scores = [
        OutcomeScore(lead=1, topic=10, stage="won", combined=85.0),
        OutcomeScore(lead=1, topic=20, stage="won", combined=15.0),
        OutcomeScore(lead=2, topic=10, stage="lost", combined=30.0),
        OutcomeScore(lead=2, topic=20, stage="lost", combined=45.0),
        OutcomeScore(lead=3, topic=20, stage="qualified", combined=5.0),
    ]
    everything = score_bands(scores)
    assert [(b.leads, b.won, b.qualified, b.lost) for b in everything] == [
        (1, 0, 1, 0), (0, 0, 0, 0), (1, 0, 0, 1), (0, 0, 0, 0), (1, 1, 0, 0)], "each lead at its highest topic score"
    topic_20 = score_bands(scores, topic_id=20)
    assert [b.leads for b in topic_20] == [2, 0, 1, 0, 0] and topic_20[0].won == 1
    assert [b.win_rate for b in topic_20] == [0.5, None, 0.0, None, None]
    assert [b.label for b in topic_20] == ["0–20", "20–40", "40–60", "60–80", "80–100"]


# ----------------------------------------------------------------------------- versions


def test_a_version_was_promoted_unless_its_notes_say_otherwise() -> None:
    assert was_promoted("", active=False), "the first model is promoted without a note"
    assert was_promoted("promoted: lightgbm CV ROC-AUC 0.9 vs m1's recipe 0.8", active=False)
    assert not was_promoted("some note\nnot promoted: lightgbm CV ROC-AUC 0.7 vs m1's recipe 0.8", active=False)
    assert was_promoted("not promoted: …", active=True)


def test_validation_rows_put_the_chosen_algorithm_first() -> None:
    stored = {"cv": {"logistic": {"roc_auc": 0.8}, "lightgbm": {"roc_auc": 0.9, "brier": 0.1}, "rows": 120},
              "cv_scheme": "stratified 5-fold CV, shuffled", "holdout": None}
    rows = validation_rows(stored, "lightgbm")
    assert [(r["algorithm"], r["chosen"]) for r in rows] == [("lightgbm", True), ("logistic", False)]
    assert rows[0]["brier"] == 0.1 and rows[1]["brier"] is None and rows[0]["scheme"].startswith("stratified")


def _version(algorithm: str, **fields) -> ModelVersion:
    return ModelVersion(version="m1", algorithm=algorithm, trained_at=NOW, labels=100, active=True, notes="",
                        metrics=fields.pop("metrics", {}), **fields)


def test_lightgbm_importances_come_from_the_stored_gains_largest_first() -> None:
    found = importances(_version("lightgbm", metrics={"importances": {"num:a": 1.0, "cat:b": 7.5}}))
    assert found.rows == [("cat:b", 7.5), ("num:a", 1.0)] and "gain" in found.measure
    missing = importances(_version("lightgbm"))
    assert missing.rows == [] and "not stored" in missing.why_none


def test_logistic_importances_are_the_coefficients_sizes_from_the_artifact() -> None:
    rng = np.random.default_rng(4)
    n = 500
    spec = FeatureSpec(numeric=["visits", "noise"], categorical={"plan": ["free", "team"]}, use_events=False)
    visits, noise, plan = rng.poisson(3, n).astype(float), rng.normal(size=n), rng.integers(0, 2, n).astype(float)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(1.2 * (visits - 3) + 1.5 * plan)))).astype(int)
    matrix = np.column_stack([np.full(n, np.nan), visits, noise, plan])
    model = LogisticModel.fit(matrix, labels, spec)
    weights = logistic_weights(spec.to_json(), model.artifact())
    assert set(weights) <= set(spec.names()) and weights["num:visits"] > weights["num:noise"]
    found = importances(_version("logistic", spec=spec.to_json(), artifact=model.artifact()))
    assert found.rows[0][0] == "num:visits" and "coefficient" in found.measure
    unreadable = importances(_version("logistic", spec=spec.to_json(), artifact="{}"))
    assert unreadable.rows == [] and "cannot be read" in unreadable.why_none


# ----------------------------------------------------------------------------- rule reach


def _leads(attributes: list[dict]) -> LeadArrays:
    n = len(attributes)
    stamp = NOW.timestamp()
    return LeadArrays(np.arange(1, n + 1), np.full(n, stamp), np.full(n, stamp - 30 * DAY), attributes,
                      ["landing"] * n, [{} for _ in range(n)])


def _events(rows: list[tuple[int, str, int | None, float, dict]]) -> EventArrays:
    """(lead row, type, topic, days ago, properties)."""
    types = sorted({r[1] for r in rows})
    return EventArrays(
        lead_row=np.array([r[0] for r in rows], dtype=np.int64),
        type_code=np.array([types.index(r[1]) for r in rows], dtype=np.int64),
        type_names=types,
        topic=np.array([-1 if r[2] is None else r[2] for r in rows], dtype=np.int64),
        ts=np.array([NOW.timestamp() - r[3] * DAY for r in rows], dtype=float),
        pricing=np.zeros(len(rows), dtype=bool),
        properties=[r[4] for r in rows],
    )


def test_reach_counts_distinct_leads_as_the_scoring_engine_matches_them() -> None:
    rules = [
        Rule(1, "pricing", "page_view", 5.0, property_match={"url": "*/pricing*"}),
        Rule(2, "any view", "page_view", 1.0),
        Rule(3, "views on topic 2", "page_view", 1.0, topic_id=2),
        Rule(4, "directors", "", 10.0, property_match={"role": "*director*"}, kind="profile"),
        Rule(5, "capped", "download", 1.0, daily_cap=1),
    ]
    leads = _leads([{"role": "IT director"}, {"role": "engineer"}, {}])
    events = _events([
        (0, "page_view", 1, 1, {"url": "/pricing"}),
        (0, "page_view", 1, 2, {"url": "/pricing/team"}),
        (1, "page_view", None, 1, {"url": "/blog"}),  # no topic: counts for topic 2 as well
        (2, "page_view", 1, -1, {"url": "/pricing"}),  # after as_of: not counted
        (2, "download", 1, 0.5, {}),
        (2, "download", 1, 0.4, {}),
    ])
    assert reach_counts(rules, leads, events, [1, 2]) == [1, 2, 1, 1, 1]
    assert reach_counts(rules, leads, events, []) == [0] * 5, "without topics nothing is scored"


def test_a_training_note_says_why_nothing_was_trained() -> None:
    report = TrainReport(False, False, None, None, 12, 3, {}, ["too few labels (3 positive, 9 negative …)"], 0.04)
    note = training_note(report, NOW)
    assert note["trained"] is False and note["notes"][0].startswith("too few labels")
    assert note["finished_at"] == NOW.isoformat() and note["labels"] == 12
