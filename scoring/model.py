"""The interest model: LightGBM beside a logistic-regression baseline, validated the same way.

Pure functions on a feature matrix: fit, predict, explain and validate. Both algorithms
read the same matrix from `scoring.engine.feature_matrix`, are scored on the same folds,
and the product only ever promotes the better of the two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from scoring.engine import FeatureSpec

ROUNDS = 300
MIN_LABELS = 40
"""Fewer labelled leads than this (or fewer than MIN_PER_CLASS of either outcome): no model."""
MIN_PER_CLASS = 10
LEAKAGE_AUC = 0.97
"""A validation ROC-AUC above this is more often a leaked column than a great model."""


def lightgbm_params(rows: int) -> dict[str, Any]:
    """Settings chosen on the reference data sets (docs/scoring.md): shallow trees, slow
    learning and bagging, which hold up on a few hundred rows as on a hundred thousand."""
    return {
        "objective": "binary",
        "learning_rate": 0.03,
        "num_leaves": 15,
        "min_data_in_leaf": max(5, min(30, rows // 50)),
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "cat_smooth": 10,
        "min_data_per_group": max(5, min(50, rows // 50)),
        "verbose": -1,
        "seed": 7,
        "deterministic": True,
        # One thread below 20,000 rows: on a busy 2-core machine two threads wait on each
        # other for the busy core (the same small fit took 1.2-7.5 s instead of 0.14 s).
        "num_threads": 1 if rows < 20_000 else 2,
    }


class Model:
    """A fitted model: `predict` gives probabilities, `contributions` signed log-odds per feature."""

    algorithm: str
    spec: FeatureSpec

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Per row: one log-odds contribution per feature, then the bias (sums to the logit)."""
        raise NotImplementedError

    def artifact(self) -> str:
        raise NotImplementedError


class LightGBMModel(Model):
    algorithm = "lightgbm"

    def __init__(self, booster: Any, spec: FeatureSpec) -> None:
        self.booster = booster
        self.spec = spec

    @classmethod
    def fit(cls, matrix: np.ndarray, labels: np.ndarray, spec: FeatureSpec) -> "LightGBMModel":
        import lightgbm

        dataset = lightgbm.Dataset(matrix, labels, categorical_feature=spec.categorical_columns(),
                                   feature_name=[_safe(n) for n in spec.names()], free_raw_data=True)
        return cls(lightgbm.train(lightgbm_params(len(labels)), dataset, ROUNDS), spec)

    @classmethod
    def load(cls, artifact: str, spec: FeatureSpec) -> "LightGBMModel":
        import lightgbm

        return cls(lightgbm.Booster(model_str=artifact), spec)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        # A Booster on a numpy array: the sklearn wrapper on a one-row DataFrame is 100x slower.
        return self.booster.predict(matrix, num_threads=1)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        return self.booster.predict(matrix, pred_contrib=True, num_threads=1)

    def artifact(self) -> str:
        return self.booster.model_to_string()

    def importances(self) -> dict[str, float]:
        gains = self.booster.feature_importance(importance_type="gain")
        return {name: round(float(g), 3) for name, g in zip(self.spec.names(), gains)}


class LogisticModel(Model):
    """Logistic regression on the same matrix: numbers median-filled, signed-log scaled and
    standardised with a missing flag; categories one-hot."""

    algorithm = "logistic"

    def __init__(self, spec: FeatureSpec, params: dict[str, Any]) -> None:
        self.spec = spec
        self.params = params

    @staticmethod
    def _layout(spec: FeatureSpec) -> tuple[list[int], dict[int, int]]:
        categorical = spec.categorical_columns()
        names = spec.names()
        sizes = {}
        for i in categorical:
            name = names[i]
            if name == "source":
                sizes[i] = len(spec.sources) + 1
            elif name.startswith("utm:"):
                sizes[i] = len(spec.utm[name[4:]]) + 1
            else:
                sizes[i] = len(spec.categorical[name[4:]]) + 1
        numeric = [i for i in range(len(names)) if i not in sizes]
        return numeric, sizes

    def _design(self, matrix: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The design matrix, and for each of its columns the feature it came from."""
        numeric, sizes = self._layout(self.spec)
        p = self.params
        blocks, owners = [], []
        if numeric:
            raw = matrix[:, numeric]
            missing = np.isnan(raw)
            filled = np.where(missing, np.array(p["medians"]), raw)
            scaled = (np.sign(filled) * np.log1p(np.abs(filled)) - np.array(p["means"])) / np.array(p["stds"])
            blocks += [scaled, missing.astype(float)]
            owners += numeric + numeric
        for i, size in sizes.items():
            codes = matrix[:, i]
            onehot = np.zeros((len(matrix), size))
            ok = ~np.isnan(codes)
            onehot[np.flatnonzero(ok), codes[ok].astype(int).clip(0, size - 1)] = 1.0
            blocks.append(onehot)
            owners += [i] * size
        design = np.hstack(blocks) if blocks else np.zeros((len(matrix), 0))
        return design, owners

    @classmethod
    def fit(cls, matrix: np.ndarray, labels: np.ndarray, spec: FeatureSpec) -> "LogisticModel":
        from sklearn.linear_model import LogisticRegression

        numeric, _ = cls._layout(spec)
        raw = matrix[:, numeric]
        medians = np.nanmedian(np.where(np.isnan(raw).all(axis=0), 0.0, raw), axis=0) if numeric else np.zeros(0)
        medians = np.nan_to_num(medians)
        filled = np.where(np.isnan(raw), medians, raw)
        logged = np.sign(filled) * np.log1p(np.abs(filled))
        means, stds = logged.mean(axis=0), logged.std(axis=0)
        stds = np.where(stds > 0, stds, 1.0)
        model = cls(spec, {"medians": medians.tolist(), "means": means.tolist(), "stds": stds.tolist()})
        design, _ = model._design(matrix)
        fitted = LogisticRegression(C=1.0, max_iter=3000).fit(design, labels)
        model.params |= {"coef": fitted.coef_[0].tolist(), "intercept": float(fitted.intercept_[0])}
        return model

    @classmethod
    def load(cls, artifact: str, spec: FeatureSpec) -> "LogisticModel":
        return cls(spec, json.loads(artifact))

    def _logit_parts(self, matrix: np.ndarray) -> tuple[np.ndarray, list[int]]:
        design, owners = self._design(matrix)
        return design * np.array(self.params["coef"]), owners

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        parts, _ = self._logit_parts(matrix)
        return 1.0 / (1.0 + np.exp(-(parts.sum(axis=1) + self.params["intercept"])))

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        parts, owners = self._logit_parts(matrix)
        out = np.zeros((len(matrix), len(self.spec.names()) + 1))
        for column, owner in enumerate(owners):
            out[:, owner] += parts[:, column]
        out[:, -1] = self.params["intercept"]
        return out

    def artifact(self) -> str:
        return json.dumps(self.params)


ALGORITHMS: dict[str, type[Model]] = {"lightgbm": LightGBMModel, "logistic": LogisticModel}


def load_model(algorithm: str, artifact: str, spec: dict[str, Any]) -> Model:
    return ALGORITHMS[algorithm].load(artifact, FeatureSpec.from_json(spec))  # type: ignore[attr-defined]


def _safe(name: str) -> str:
    """LightGBM refuses some characters in feature names."""
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name)


# Validation


ROC_POINTS = 101
"""At most this many (false positive rate, true positive rate) points are kept per ROC curve:
enough to draw it, small enough to store with every model version."""


def roc_points(labels: np.ndarray, probabilities: np.ndarray, limit: int = ROC_POINTS) -> list[list[float]]:
    """The ROC curve as at most `limit` [fpr, tpr] points, first (0, 0) and last (1, 1) kept."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, probabilities, drop_intermediate=True)
    if len(fpr) > limit:
        keep = np.unique(np.linspace(0, len(fpr) - 1, limit).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return [[round(float(f), 4), round(float(t), 4)] for f, t in zip(fpr, tpr)]


def metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """ROC-AUC, PR-AUC, log loss, Brier, a 10-bin calibration table, top-decile lift and the
    ROC curve's points (`roc`, at most ROC_POINTS)."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    p = np.clip(probabilities, 1e-6, 1 - 1e-6)
    order = np.argsort(-p, kind="stable")
    top = order[: max(1, len(p) // 10)]
    base = labels.mean()
    calibration = []
    for chunk in np.array_split(np.argsort(p, kind="stable"), 10):
        if len(chunk):
            calibration.append({"predicted": round(float(p[chunk].mean()), 4), "observed": round(float(labels[chunk].mean()), 4),
                                "leads": int(len(chunk))})
    return {
        "roc_auc": round(float(roc_auc_score(labels, p)), 4),
        "pr_auc": round(float(average_precision_score(labels, p)), 4),
        "log_loss": round(float(log_loss(labels, p, labels=[0, 1])), 4),
        "brier": round(float(brier_score_loss(labels, p)), 4),
        "lift_top_decile": round(float(labels[top].mean() / base), 3) if base > 0 else None,
        "calibration": calibration,
        "roc": roc_points(labels, p),
    }


@dataclass
class Validation:
    """Out-of-fold predictions of both algorithms on the same folds, and their metrics."""

    scheme: str
    predictions: dict[str, np.ndarray]
    labels: np.ndarray
    rows: np.ndarray

    def report(self) -> dict[str, Any]:
        return {name: metrics(self.labels, p) for name, p in self.predictions.items()} | {"rows": int(len(self.rows))}


def _splitter(labels: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    smallest = int(min(labels.sum(), len(labels) - labels.sum()))
    return StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)


def cross_validate(matrix: np.ndarray, labels: np.ndarray, spec: FeatureSpec, folds: int = 5, seed: int = 42,
                   algorithms: dict[str, type[Model]] | None = None) -> Validation:
    """Shuffled, stratified k-fold: every row predicted by models that never saw it. The
    folds depend only on the labels and the seed, so two calls on the same leads (say, with
    another feature spec) use the same folds."""
    splitter = _splitter(labels, folds, seed)
    algorithms = algorithms or ALGORITHMS
    predictions = {name: np.zeros(len(labels)) for name in algorithms}
    for train, test in splitter.split(np.zeros(len(labels)), labels):
        for name, algorithm in algorithms.items():
            predictions[name][test] = algorithm.fit(matrix[train], labels[train], spec).predict(matrix[test])  # type: ignore[attr-defined]
    return Validation(f"stratified {splitter.n_splits}-fold CV, shuffled", predictions, labels, np.arange(len(labels)))


def time_holdout(matrix: np.ndarray, labels: np.ndarray, times: np.ndarray, spec: FeatureSpec,
                 share: float = 0.2) -> Validation | None:
    """Train on the older leads, test on the newest `share`: how the model does on the future.

    None when the leads' times do not differ (an import without dates) or the newest
    slice lacks one of the outcomes.
    """
    if len(times) < 2 or float(np.nanmax(times) - np.nanmin(times)) < 3600.0:
        return None
    order = np.argsort(times, kind="stable")
    cut = int(len(order) * (1 - share))
    train, test = order[:cut], order[cut:]
    if len(set(labels[test].tolist())) < 2 or len(set(labels[train].tolist())) < 2:
        return None
    predictions = {name: algorithm.fit(matrix[train], labels[train], spec).predict(matrix[test])  # type: ignore[attr-defined]
                   for name, algorithm in ALGORITHMS.items()}
    return Validation(f"time-ordered holdout: newest {int(share * 100)}%", predictions, labels[test], test)


def label_problem(labels: np.ndarray) -> str | None:
    """Why these labels cannot train a model, or None if they can."""
    if len(labels) == 0:
        return "no labelled leads yet (won, qualified, converted or lost): scoring stays on rules"
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return f"only one outcome among {len(labels)} labelled leads: a model needs both; scoring stays on rules"
    if len(labels) < MIN_LABELS or min(positives, negatives) < MIN_PER_CLASS:
        return (f"too few labels ({positives} positive, {negatives} negative; a model needs {MIN_LABELS} "
                f"with {MIN_PER_CLASS} of each): scoring stays on rules")
    return None
