"""What the Scoring page shows: model versions and their metrics, score bands against the outcomes sales recorded, rule reach."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from landing.tables import Lead
from scoring.engine import EventArrays, FeatureSpec, LeadArrays, Rule, rule_points
from scoring.model import LogisticModel
from scoring.service import TrainReport, _epoch_sql, load_batch, load_topics
from scoring.tables import ScoringModel, ScoringRule

log = logging.getLogger("leadkiln.scoring")

METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "lift_top_decile")
"""The validation numbers shown for every model, in this order."""
BANDS: tuple[tuple[int, int], ...] = ((0, 20), (20, 40), (40, 60), (60, 80), (80, 100))
"""Combined-score bands of the closed loop; the last one includes 100."""
OUTCOME_STAGES = ("won", "qualified", "lost")
"""Stages that record an outcome (with `Lead.outcome_at`); only `won` counts as won."""
REACH_DAYS = 7
IMPORTANCES_SHOWN = 20
LAST_TRAINING_KEY = "leadkiln:scoring:last-training"
LAST_TRAINING_SECONDS = 30 * 86400


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Model versions


def was_promoted(notes: str, active: bool) -> bool:
    """Whether a version became the active model when it was trained. The first model is
    promoted without a note; later ones say "promoted: …" or "not promoted: …"."""
    if active:
        return True
    return not any(line.startswith("not promoted") for line in (notes or "").splitlines())


@dataclass
class ModelVersion:
    """One trained model as the page shows it; `artifact` is loaded only for one version."""

    version: str
    algorithm: str
    trained_at: datetime
    labels: int
    active: bool
    notes: str
    metrics: dict[str, Any]
    spec: dict[str, Any] = field(default_factory=dict)
    artifact: str = ""

    @property
    def promoted(self) -> bool:
        return was_promoted(self.notes, self.active)

    @property
    def chosen(self) -> str:
        """The algorithm that became this version (the better of the two on CV)."""
        return self.metrics.get("chosen") or self.algorithm

    def validation(self, kind: str = "cv") -> dict[str, Any]:
        """The chosen algorithm's metrics on cross-validation ("cv") or the time holdout ("holdout")."""
        return ((self.metrics.get(kind) or {}).get(self.chosen)) or {}

    def note_lines(self) -> list[str]:
        return [line for line in (self.notes or "").splitlines() if line.strip()]


def validation_rows(metrics: Mapping[str, Any], chosen: str) -> list[dict[str, Any]]:
    """Every (validation, algorithm) pair a version was measured on, the chosen one first per validation."""
    rows = []
    for kind, label in (("cv", "cross-validation"), ("holdout", "time holdout")):
        by_algorithm = metrics.get(kind) or {}
        names = sorted((name for name, value in by_algorithm.items() if isinstance(value, Mapping)),
                       key=lambda name: (name != chosen, name))
        for name in names:
            values = by_algorithm[name]
            rows.append({"validation": label, "scheme": metrics.get(f"{kind}_scheme", ""), "algorithm": name,
                         "chosen": name == chosen, **{key: values.get(key) for key in METRICS}})
    return rows


def roc_points(version: ModelVersion) -> list[tuple[float, float]] | None:
    """The chosen algorithm's cross-validated ROC points; None for versions trained before they were stored."""
    points = version.validation("cv").get("roc")
    if not points:
        return None
    return [(float(fpr), float(tpr)) for fpr, tpr in points]


def calibration_points(version: ModelVersion) -> list[tuple[float, float, int]]:
    """The chosen algorithm's cross-validated calibration bins: (predicted, observed, leads)."""
    return [(row["predicted"], row["observed"], row["leads"]) for row in version.validation("cv").get("calibration") or []]


@dataclass
class Importances:
    """What the model leans on, largest first, with what the numbers are; `why_none` when there are none."""

    rows: list[tuple[str, float]]
    measure: str
    why_none: str = ""


def logistic_weights(spec: Mapping[str, Any], artifact: str) -> dict[str, float]:
    """Each feature's largest absolute coefficient in a logistic model's design: numbers are
    log-scaled and standardised, so their weights compare; a category's is its strongest value's."""
    model = LogisticModel.load(artifact, FeatureSpec.from_json(spec))
    names = model.spec.names()
    _, owners = model._design(np.zeros((1, len(names))))
    weights: dict[str, float] = {}
    for coefficient, owner in zip(model.params.get("coef", []), owners):
        name = names[owner]
        weights[name] = max(weights.get(name, 0.0), round(abs(float(coefficient)), 4))
    return weights


def importances(version: ModelVersion, limit: int = IMPORTANCES_SHOWN) -> Importances:
    """LightGBM's stored gain per feature, or the logistic model's coefficient sizes from its artifact."""
    if version.algorithm == "lightgbm":
        stored = version.metrics.get("importances")
        if not stored:
            return Importances([], "", "this version's feature importances were not stored when it was trained")
        rows = sorted(((str(name), float(gain)) for name, gain in stored.items()), key=lambda kv: -kv[1])
        return Importances(rows[:limit], "total gain of the feature's splits (LightGBM)")
    if version.algorithm == "logistic":
        if not version.artifact or not version.spec:
            return Importances([], "", "this version's stored weights are missing")
        try:
            weights = logistic_weights(version.spec, version.artifact)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return Importances([], "", f"this version's stored weights cannot be read ({type(exc).__name__})")
        rows = sorted(weights.items(), key=lambda kv: -kv[1])
        return Importances([row for row in rows if row[1] > 0][:limit],
                           "largest |coefficient| per feature (logistic regression on standardised, log-scaled "
                           "numbers and one-hot categories)")
    return Importances([], "", f"no importances for the {version.algorithm!r} algorithm")


LIST_COLUMNS = (ScoringModel.version, ScoringModel.algorithm, ScoringModel.trained_at, ScoringModel.labels,
                ScoringModel.active, ScoringModel.notes, ScoringModel.metrics)


def _version(row: Mapping[str, Any]) -> ModelVersion:
    metrics = row["metrics"]
    if isinstance(metrics, str):
        metrics = json.loads(metrics or "{}")
    spec = row.get("spec") or {}
    if isinstance(spec, str):
        spec = json.loads(spec or "{}")
    return ModelVersion(row["version"], row["algorithm"], row["trained_at"], row["labels"], bool(row["active"]),
                        row["notes"] or "", metrics or {}, spec, row.get("artifact") or "")


async def model_history() -> list[ModelVersion]:
    """Every version, newest first, without the models themselves (an artifact can be megabytes)."""
    rows = await ScoringModel.select(*LIST_COLUMNS).order_by(ScoringModel.trained_at, ascending=False).order_by(
        ScoringModel.id, ascending=False).output(load_json=True)
    return [_version(row) for row in rows]


async def model_version(version: str | None = None) -> ModelVersion | None:
    """One version in full (the active one when `version` is None); None when there is no such version."""
    query = ScoringModel.select(*LIST_COLUMNS, ScoringModel.spec, ScoringModel.artifact).output(load_json=True)
    if version is None:
        query = query.where(ScoringModel.active == True)  # noqa: E712
    else:
        query = query.where(ScoringModel.version == version)
    row = await query.first()
    return _version(row) if row else None


# The closed loop: score bands against outcomes


@dataclass(frozen=True)
class OutcomeScore:
    """A lead with a recorded outcome and its last combined score on one topic before that outcome."""

    lead: int
    topic: int
    stage: str
    combined: float


@dataclass
class Band:
    low: int
    high: int
    leads: int = 0
    won: int = 0
    qualified: int = 0
    lost: int = 0

    @property
    def label(self) -> str:
        return f"{self.low}–{self.high}"

    @property
    def win_rate(self) -> float | None:
        return self.won / self.leads if self.leads else None


def band_index(score: float, bands: Sequence[tuple[int, int]] = BANDS) -> int:
    """The band a combined score falls in: lower bound included, the top band includes its upper bound."""
    for index, (_, high) in enumerate(bands):
        if score < high:
            return index
    return len(bands) - 1


def score_bands(scores: Iterable[OutcomeScore], topic_id: int | None = None,
                bands: Sequence[tuple[int, int]] = BANDS) -> list[Band]:
    """Leads, won, qualified and lost per band. For one topic: each lead's score on it. For all
    topics (`topic_id` None): each lead once, at its highest topic score."""
    per_lead: dict[int, OutcomeScore] = {}
    for score in scores:
        if topic_id is not None and score.topic != topic_id:
            continue
        kept = per_lead.get(score.lead)
        if kept is None or score.combined > kept.combined:
            per_lead[score.lead] = score
    out = [Band(low, high) for low, high in bands]
    for score in per_lead.values():
        band = out[band_index(score.combined, bands)]
        band.leads += 1
        if score.stage in ("won", "qualified", "lost"):
            setattr(band, score.stage, getattr(band, score.stage) + 1)
    return out


@dataclass
class ClosedLoop:
    bands: list[Band]
    topic_id: int | None
    with_outcome: int
    """Leads with a recorded outcome (stage won, qualified or lost, with its time)."""
    unscored: int
    """Of those, leads with no score (on the topic) before their outcome: not in any band."""

    @property
    def in_bands(self) -> int:
        return sum(band.leads for band in self.bands)


_OUTCOME_FILTER = ("l.stage IN ('won', 'qualified', 'lost') AND l.outcome_at IS NOT NULL AND l.erased_at IS NULL")


async def outcome_scores() -> list[OutcomeScore]:
    """For every lead with an outcome, its last recorded score per topic at or before the outcome.

    Score history keeps every move of half a point or more, so its last row before the
    outcome is the score sales saw when they closed the lead (to within half a point).
    """
    rows = await Lead.raw(
        "SELECT lead, topic, stage, combined FROM ("
        "SELECT h.lead AS lead, h.topic AS topic, l.stage AS stage, h.combined AS combined, "
        f"ROW_NUMBER() OVER (PARTITION BY h.lead, h.topic ORDER BY {_epoch_sql('h.computed_at')} DESC, h.id DESC) AS pick "
        f"FROM score_history h JOIN lead l ON l.id = h.lead WHERE {_OUTCOME_FILTER} "
        f"AND {_epoch_sql('h.computed_at')} <= {_epoch_sql('l.outcome_at')}"
        ") ranked WHERE pick = 1")
    return [OutcomeScore(int(r["lead"]), int(r["topic"]), str(r["stage"]), float(r["combined"])) for r in rows]


async def closed_loop(topic_id: int | None = None) -> ClosedLoop:
    """Score bands against outcomes, for one topic or all of them."""
    scores = await outcome_scores()
    counted = await Lead.raw(f"SELECT COUNT(*) AS n FROM lead l WHERE {_OUTCOME_FILTER}")
    with_outcome = int(counted[0]["n"])
    bands = score_bands(scores, topic_id)
    in_bands = sum(band.leads for band in bands)
    return ClosedLoop(bands, topic_id, with_outcome, max(with_outcome - in_bands, 0))


# Rule reach


@dataclass(frozen=True)
class RuleReach:
    """A scoring rule and how many distinct leads it touched: for an event rule, leads with a
    matching event in the window; for a profile rule, leads whose attributes match now."""

    rule: Rule
    active: bool
    leads: int


def _rule(row: Mapping[str, Any]) -> Rule:
    match = row["property_match"] or {}
    if isinstance(match, str):
        match = json.loads(match or "{}")
    return Rule(id=row["id"], name=row["name"], event_type=row["event_type"] or "", points=row["points"],
                topic_id=row["topic"], property_match=match if isinstance(match, dict) else {},
                daily_cap=row["daily_cap"], half_life_days=row["half_life_days"], kind=row["kind"] or "event")


def reach_counts(rules: Sequence[Rule], leads: LeadArrays, events: EventArrays, topic_ids: Sequence[int]) -> list[int]:
    """Per rule: the distinct leads it gives points to, on any topic.

    The matching is the scoring engine's own (`scoring.engine.rule_points`): event type,
    topic (an event without one counts for every topic), property globs, daily caps,
    profile attributes. Events after a lead's `as_of` do not count.
    """
    if not rules or not len(leads) or not topic_ids:
        return [0] * len(rules)
    counts = rule_points(rules, leads, events, topic_ids).counts  # (rules, leads, topics)
    return [int(n) for n in (counts > 0).any(axis=2).sum(axis=1)]


def _no_events() -> EventArrays:
    empty = np.zeros(0, dtype=np.int64)
    return EventArrays(empty, empty, [], empty, np.zeros(0), np.zeros(0, dtype=bool), [])


PROFILE_CHUNK = 20_000


async def _profile_reach(rules: list[Rule], topic_ids: list[int], now: datetime) -> list[int]:
    """Leads (that can be scored: not historical, not erased) matching each profile rule now."""
    totals = [0] * len(rules)
    last = 0
    while True:
        rows = await Lead.select(Lead.id, Lead.attributes, Lead.source).where(
            (Lead.id > last) & (Lead.historical == False) & Lead.erased_at.is_null()  # noqa: E712
        ).order_by(Lead.id).limit(PROFILE_CHUNK).output(load_json=True)
        if not rows:
            return totals
        last = rows[-1]["id"]
        stamp = now.timestamp()
        leads = LeadArrays(np.array([r["id"] for r in rows], dtype=np.int64), np.full(len(rows), stamp),
                           np.full(len(rows), stamp), [r["attributes"] if isinstance(r["attributes"], dict) else {}
                                                       for r in rows],
                           [r["source"] or "" for r in rows], [{} for _ in rows])
        touched = reach_counts(rules, leads, _no_events(), topic_ids)
        totals = [a + b for a, b in zip(totals, touched)]


async def rule_reach(now: datetime | None = None, days: int = REACH_DAYS) -> list[RuleReach]:
    """Every scoring rule (inactive ones too: what they would touch) with its reach over the last `days`."""
    now = now or utcnow()
    rows = await ScoringRule.select().order_by(ScoringRule.id).output(load_json=True)
    rules = [_rule(row) for row in rows]
    active = {row["id"]: bool(row["active"]) for row in rows}
    topic_ids = [topic.id for topic in await load_topics()]
    leads_by_rule: dict[int, int] = {}
    event_rules = [rule for rule in rules if rule.kind != "profile"]
    profile_rules = [rule for rule in rules if rule.kind == "profile"]
    if event_rules and topic_ids:
        since = now - timedelta(days=days)
        property_types = {rule.event_type for rule in event_rules if rule.property_match}
        # The same two arguments serve both filters, in the same order.
        leads, events, _ = await load_batch(
            "historical = {} AND erased_at IS NULL AND id IN (SELECT lead FROM event WHERE occurred_at >= {})",
            [False, since], now, property_types,
            event_filter="lead IN (SELECT id FROM lead WHERE historical = {} AND erased_at IS NULL) AND occurred_at >= {}")
        leads_by_rule |= dict(zip([rule.id for rule in event_rules], reach_counts(event_rules, leads, events, topic_ids)))
    if profile_rules and topic_ids:
        leads_by_rule |= dict(zip([rule.id for rule in profile_rules], await _profile_reach(profile_rules, topic_ids, now)))
    return [RuleReach(rule, active[rule.id], leads_by_rule.get(rule.id, 0)) for rule in rules]


# The last training run (nightly, or queued from the admin)


def training_note(report: TrainReport, finished_at: datetime) -> dict[str, Any]:
    """What the page says about a training run, including one that trained nothing (too few labels)."""
    return {"finished_at": finished_at.isoformat(), "trained": report.trained, "promoted": report.promoted,
            "version": report.version, "algorithm": report.algorithm, "labels": report.labels,
            "positives": report.positives, "notes": list(report.notes), "seconds": round(report.seconds, 1)}


async def record_training(redis: Any, report: TrainReport, now: datetime | None = None) -> None:
    """Keep the last run's outcome for the Scoring page. A trained model is in its table
    anyway; this is how "too few labels" reaches the person who clicked "Train"."""
    note = training_note(report, now or utcnow())
    try:
        await redis.set(LAST_TRAINING_KEY, json.dumps(note), ex=LAST_TRAINING_SECONDS)
    except Exception:  # noqa: BLE001 - the training itself is done and stored; only the note is lost
        log.exception("could not record the last training run")


async def last_training(redis: Any) -> dict[str, Any] | None:
    """The last training run's outcome, or None (none in the last 30 days, or no Redis)."""
    if redis is None:
        return None
    try:
        raw = await redis.get(LAST_TRAINING_KEY)
    except Exception:  # noqa: BLE001 - the page works without it
        log.warning("could not read the last training run", exc_info=True)
        return None
    if not raw:
        return None
    try:
        note = json.loads(raw)
    except ValueError:
        return None
    if isinstance(note, dict) and note.get("finished_at"):
        try:
            note["finished_at"] = datetime.fromisoformat(note["finished_at"])
        except ValueError:
            return None
        return note
    return None
