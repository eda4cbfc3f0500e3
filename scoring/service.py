"""Scoring in the database: load leads and events, score them, store scores, history and
"became hot" events; train and promote models; import CRM exports."""

from __future__ import annotations

import asyncio
import json
import uuid
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from piccolo.engine import engine_finder
from piccolo.engine.sqlite import SQLiteEngine

from content.delivery import email_hash
from content.tables import Suppression, SuppressionReason
from landing.tables import Conversion, Event, Lead, Topic
from scoring import model as models
from scoring.engine import (
    NO_TOPIC,
    EventArrays,
    FeatureSpec,
    LeadArrays,
    Rule,
    describe,
    feature_matrices,
    rule_points,
)
from scoring.importer import ImportOptions, ImportProblem, profile as profile_file, read_rows, typed_value
from scoring.rules import MODEL_WEIGHT, combine, contributions as rule_contributions, explain as explain_rules
from scoring.tables import LeadAttribute, Score, ScoreHistory, ScoringModel, ScoringRule

log = logging.getLogger("leadkiln.scoring")

BECAME_HOT = "became_hot"
LABEL_AFTER_DAYS = 90
"""A lead with no outcome this many days after it arrived counts as a negative label."""
POSITIVE_STAGES = ("won", "qualified")
NEGATIVE_STAGES = ("lost",)
EXPLAIN_LIMIT = 5
CHUNK = 20_000
"""Leads per batch when rescoring everyone: bounded memory whatever the database holds."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Loading


CACHE_SECONDS = 10.0
"""Rules, topics and the active model are re-read at most this often per process: an edit
in the admin applies within seconds, and a rescore after an event skips three queries."""
_cache: dict[str, Any] = {}


async def _cached(name: str, load: Any, fresh: bool = False) -> Any:
    hit = _cache.get(name)
    if not fresh and hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
        return hit[1]
    value = await load()
    _cache[name] = (time.monotonic(), value)
    return value


def forget_cached() -> None:
    """Re-read rules, topics and the model on next use (after training, and in tests)."""
    _cache.clear()


async def cached_rules(fresh: bool = False) -> list[Rule]:
    return await _cached("rules", load_rules, fresh)


async def cached_topics(fresh: bool = False) -> list["TopicInfo"]:
    return await _cached("topics", load_topics, fresh)


async def load_rules() -> list[Rule]:
    rows = await ScoringRule.select().where(ScoringRule.active == True).output(load_json=True)  # noqa: E712
    return [
        Rule(id=r["id"], name=r["name"], event_type=r["event_type"], points=r["points"], topic_id=r["topic"],
             property_match=r["property_match"] or {}, daily_cap=r["daily_cap"], half_life_days=r["half_life_days"],
             kind=r["kind"] or "event")
        for r in rows
    ]


@dataclass
class TopicInfo:
    id: int
    name: str
    hot_threshold: float


async def load_topics() -> list[TopicInfo]:
    rows = await Topic.select(Topic.id, Topic.name, Topic.hot_threshold).order_by(Topic.id)
    return [TopicInfo(r["id"], r["name"], r["hot_threshold"]) for r in rows]


def _epoch_sql(column: str) -> str:
    if isinstance(engine_finder(), SQLiteEngine):
        return f"((julianday({column}) - 2440587.5) * 86400.0)"
    return f"EXTRACT(EPOCH FROM {column})::float8"


async def load_batch(lead_filter: str, args: list[Any], now: datetime, property_types: set[str],
                     as_of: dict[int, float] | None = None, event_filter: str | None = None,
                     ) -> tuple[LeadArrays, EventArrays, list[dict[str, Any]]]:
    """The leads matching `lead_filter` (SQL on table `lead`) and all their events, as arrays.

    Events come back with their times as epoch seconds straight from SQL; properties only
    for the event types some rule reads them on.
    """
    lead_rows = await Lead.raw(
        f"SELECT id, {_epoch_sql('created_at')} AS created, {_epoch_sql('updated_at')} AS updated, attributes, source, "
        f"first_touch, topic, stage, historical, "
        f"{_epoch_sql('outcome_at')} AS outcome FROM lead WHERE {lead_filter} ORDER BY id", *args
    )
    stamp = now.timestamp()
    ids = np.array([r["id"] for r in lead_rows], dtype=np.int64)
    leads = LeadArrays(
        ids=ids,
        as_of=np.array([(as_of or {}).get(r["id"], stamp) for r in lead_rows], dtype=float),
        created=np.array([r["created"] or stamp for r in lead_rows], dtype=float),
        attributes=[_json(r["attributes"]) for r in lead_rows],
        sources=[r["source"] or "" for r in lead_rows],
        first_touch=[_json(r["first_touch"]) for r in lead_rows],
    )
    if not len(ids):
        return leads, _no_events(), lead_rows
    wanted = ", ".join(f"'{t}'" for t in sorted(property_types) if t.replace("_", "").isalnum()) or "''"
    event_rows = await Event.raw(
        f"SELECT lead, type, topic, {_epoch_sql('occurred_at')} AS ts, "
        f"CASE WHEN type = 'page_view' AND CAST(properties AS TEXT) LIKE '%pricing%' THEN 1 ELSE 0 END AS pricing, "
        f"CASE WHEN type IN ({wanted}) THEN properties ELSE NULL END AS props "
        f"FROM event WHERE {event_filter or f'lead IN (SELECT id FROM lead WHERE {lead_filter})'} "
        f"AND type <> '{BECAME_HOT}'", *args
    )
    row_of = {int(lead_id): i for i, lead_id in enumerate(ids)}
    type_names = sorted({r["type"] for r in event_rows})
    type_index = {t: i for i, t in enumerate(type_names)}
    events = EventArrays(
        lead_row=np.array([row_of[r["lead"]] for r in event_rows], dtype=np.int64),
        type_code=np.array([type_index[r["type"]] for r in event_rows], dtype=np.int64),
        type_names=type_names,
        topic=np.array([NO_TOPIC if r["topic"] is None else r["topic"] for r in event_rows], dtype=np.int64),
        ts=np.array([r["ts"] for r in event_rows], dtype=float),
        pricing=np.array([bool(r["pricing"]) for r in event_rows], dtype=bool),
        properties=[r["props"] for r in event_rows] if property_types else None,
    )
    return leads, events, lead_rows


def _no_events() -> EventArrays:
    empty = np.zeros(0, dtype=np.int64)
    return EventArrays(empty, empty, [], empty, np.zeros(0), np.zeros(0, dtype=bool), None)


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        loaded = json.loads(value or "{}")
    except (TypeError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


# The active model, cached per process


@dataclass
class ActiveModel:
    version: str
    model: models.Model


_loaded_models: dict[str, ActiveModel] = {}


async def _load_active_model() -> ActiveModel | None:
    row = await ScoringModel.select(ScoringModel.version).where(ScoringModel.active == True).first()  # noqa: E712
    if row is None:
        return None
    version = row["version"]
    if version not in _loaded_models:
        full = await ScoringModel.objects().output(load_json=True).where(ScoringModel.version == version).first()
        _loaded_models.clear()
        _loaded_models[version] = ActiveModel(version, models.load_model(full.algorithm, full.artifact, full.spec))
    return _loaded_models[version]


async def active_model(fresh: bool = False) -> ActiveModel | None:
    """The promoted model, or None (rules only); re-read at most every 10 s."""
    return await _cached("model", _load_active_model, fresh)


# Scoring


@dataclass
class ScoreRow:
    lead: int
    topic: int
    rule_points: float
    probability: float | None
    combined: float
    hot: bool
    explanation: list[dict[str, Any]]
    model_version: str


def compute_scores(leads: LeadArrays, events: EventArrays, rules: list[Rule], topics: list[TopicInfo],
                   active: ActiveModel | None, explain_model: str = "hot") -> list[ScoreRow]:
    """Every lead's score on every topic. `explain_model`: "all", "hot" (model factors only
    for hot leads: pred_contrib costs 100x a prediction) or "none"."""
    topic_ids = [t.id for t in topics]
    points = rule_points(rules, leads, events, topic_ids)
    totals = points.total()
    n = len(leads)
    matrices: list[np.ndarray] = []
    probabilities = None
    if active is not None:
        matrices = feature_matrices(active.model.spec, leads, events, topic_ids)
        # One prediction call for every topic's rows: the call, not the rows, is the cost.
        probabilities = active.model.predict(np.vstack(matrices))
    out: list[ScoreRow] = []
    for j, topic in enumerate(topics):
        probability = None if probabilities is None else probabilities[j * n:(j + 1) * n]
        matrix = matrices[j] if matrices else None
        combined = combine(totals[:, j], probability)
        hot = combined >= topic.hot_threshold
        explain_rows = np.zeros(len(leads), dtype=bool)
        if active is not None and explain_model != "none":
            explain_rows = np.ones(len(leads), dtype=bool) if explain_model == "all" else hot
        model_factors: dict[int, list[dict[str, Any]]] = {}
        if explain_rows.any() and matrix is not None and probability is not None:
            rows = np.flatnonzero(explain_rows)
            contributions = active.model.contributions(matrix[rows])
            for k, i in enumerate(rows):
                model_factors[int(i)] = model_explanation(active.model.spec, matrix[i], contributions[k],
                                                          float(probability[i]), topic.name, leads.attributes[i],
                                                          leads.sources[i], leads.first_touch[i])
        for i in range(len(leads)):
            rules_part = explain_rules(rule_contributions(points.points[:, i, j], points.counts[:, i, j], rules, topic.id),
                                       EXPLAIN_LIMIT)
            weight = 1.0 if probability is None else (1 - MODEL_WEIGHT)
            for factor in rules_part:
                factor["effect"] = round(weight * factor["points"], 1)
            factors = sorted(rules_part + model_factors.get(i, []), key=lambda f: abs(f["effect"]), reverse=True)
            out.append(ScoreRow(int(leads.ids[i]), topic.id, round(float(totals[i, j]), 2),
                                None if probability is None else round(float(probability[i]), 4),
                                float(combined[i]), bool(hot[i]), factors[: EXPLAIN_LIMIT * 2],
                                active.version if active else "rules"))
    return out


def model_explanation(spec: FeatureSpec, row: np.ndarray, contributions: np.ndarray, probability: float,
                      topic_name: str, attributes: dict[str, Any], source: str, first_touch: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's top factors for one lead: each feature's effect on the 0-100 score."""
    logit = float(np.log(max(probability, 1e-9) / max(1 - probability, 1e-9)))
    names = spec.names()
    factors = []
    for index in np.argsort(-np.abs(contributions[:-1]))[:EXPLAIN_LIMIT]:
        value = float(contributions[index])
        if abs(value) < 1e-6:
            continue
        without = 1.0 / (1.0 + np.exp(-(logit - value)))
        effect = MODEL_WEIGHT * 100.0 * (probability - without)
        name = names[index]
        raw = None
        if name.startswith(("num:", "cat:")):
            raw = attributes.get(name[4:])
        elif name == "source":
            raw = source
        elif name.startswith("utm:"):
            raw = first_touch.get(name[4:])
        factors.append({"factor": name, "source": "model", "effect": round(effect, 1), "log_odds": round(value, 3),
                        "text": describe(name, float(row[index]), topic_name, raw)})
    return factors


WRITE_SLICE = 2000
"""Scores written per transaction (18,000 parameters, under SQLite's 32,766): write locks of
a fraction of a second, so captures never wait long."""


async def _write_scores(rows: list[ScoreRow], now: datetime) -> int:
    """Upsert the scores; history where a score moved; one became_hot event per crossing.

    Each slice reads the previous scores and writes the new ones in one transaction (rows
    locked on PostgreSQL; SQLite's IMMEDIATE transaction serialises writers), so two
    rescorings of one lead at once cannot both record its crossing into hot.
    """
    became_hot = 0
    for start in range(0, len(rows), WRITE_SLICE):
        async with Score._meta.db.transaction():
            became_hot += await _write_slice(rows[start:start + WRITE_SLICE], now)
    return became_hot


async def _write_slice(chunk: list[ScoreRow], now: datetime) -> int:
    lead_ids = sorted({r.lead for r in chunk})
    query = Score.select(Score.lead, Score.topic, Score.combined, Score.hot).where(Score.lead.is_in(lead_ids))
    if not isinstance(engine_finder(), SQLiteEngine):
        # The leads, not their scores, are locked: a first score has no row to lock yet, and
        # two rescorings of a new lead must still agree on one crossing into hot.
        await Lead.select(Lead.id).where(Lead.id.is_in(lead_ids)).lock_rows()
    previous = {(p["lead"], p["topic"]): p for p in await query}
    await _upsert(chunk, now)
    moved = [r for r in chunk
             if (r.lead, r.topic) not in previous or abs(previous[(r.lead, r.topic)]["combined"] - r.combined) >= 0.5]
    if moved:
        await ScoreHistory.raw(
            "INSERT INTO score_history (lead, topic, combined, computed_at) VALUES "
            + ", ".join(["({}, {}, {}, {})"] * len(moved)),
            *[value for r in moved for value in (r.lead, r.topic, r.combined, now)])
    crossings = [r for r in chunk if r.hot and not (previous.get((r.lead, r.topic)) or {}).get("hot")]
    if crossings:
        await Event.insert(*[
            Event(type=BECAME_HOT, lead=r.lead, topic=r.topic, occurred_at=now,
                  properties={"combined": r.combined, "model_version": r.model_version})
            for r in crossings
        ])
    return len(crossings)


SCORE_COLUMNS = ("lead", "topic", "rule_points", "model_probability", "combined", "hot", "explanation",
                 "model_version", "computed_at")


async def _upsert(chunk: list[ScoreRow], now: datetime) -> None:
    """One INSERT … ON CONFLICT statement for the slice (both databases speak it): building a
    table object per score cost more than the database's work."""
    placeholders = ", ".join(["(" + ", ".join(["{}"] * len(SCORE_COLUMNS)) + ")"] * len(chunk))
    updates = ", ".join(f"{c} = excluded.{c}" for c in SCORE_COLUMNS[2:])
    args: list[Any] = []
    for r in chunk:
        args += [r.lead, r.topic, r.rule_points, r.probability, r.combined, r.hot, json.dumps(r.explanation),
                 r.model_version, now]
    await Score.raw(f"INSERT INTO score ({', '.join(SCORE_COLUMNS)}) VALUES {placeholders} "
                    f"ON CONFLICT (lead, topic) DO UPDATE SET {updates}", *args)


async def rescore_lead(lead_id: int, now: datetime | None = None, explain_model: str = "hot") -> dict[int, float]:
    """Recompute and store every topic score of one lead; returns combined score by topic."""
    now = now or utcnow()
    rules = await cached_rules()
    topics = await cached_topics()
    active = await active_model()
    property_types = {r.event_type for r in rules if r.property_match and r.kind == "event"}
    # One transaction for the read and the write: one connection instead of one per query,
    # and the previous scores cannot change between reading them and writing new ones.
    async with Score._meta.db.transaction():
        leads, events, _ = await load_batch("id = {} AND erased_at IS NULL", [lead_id], now, property_types, event_filter="lead = {}")
        if not len(leads) or not topics:
            return {}
        rows = compute_scores(leads, events, rules, topics, active, explain_model)
        await _write_slice(rows, now)
    return {r.topic: r.combined for r in rows}


@dataclass
class RescoreReport:
    leads: int
    scores: int
    became_hot: int
    seconds: float
    model_version: str


async def rescore_all(now: datetime | None = None, chunk: int = CHUNK) -> RescoreReport:
    """Rescore every lead that can be mailed, in chunks of lead ids: decay shows, new rules apply."""
    started = time.perf_counter()
    now = now or utcnow()
    rules = await cached_rules(fresh=True)
    topics = await cached_topics(fresh=True)
    active = await active_model(fresh=True)
    property_types = {r.event_type for r in rules if r.property_match and r.kind == "event"}
    bounds = await Lead.raw("SELECT MIN(id) AS low, MAX(id) AS high FROM lead WHERE historical = {} AND erased_at IS NULL", False)
    low, high = bounds[0]["low"], bounds[0]["high"]
    leads_done = scores = hot = 0
    if low is not None and topics:
        for start in range(low, high + 1, chunk):
            leads, events, _ = await load_batch("id >= {} AND id < {} AND historical = {} AND erased_at IS NULL", [start, start + chunk, False],
                                                now, property_types)
            if not len(leads):
                continue
            rows = compute_scores(leads, events, rules, topics, active)
            hot += await _write_scores(rows, now)
            leads_done += len(leads)
            scores += len(rows)
    return RescoreReport(leads_done, scores, hot, time.perf_counter() - started, active.version if active else "rules")


async def top_leads(limit: int = 10) -> dict[str, list[dict[str, Any]]]:
    """The highest scores per topic, for `leadkiln score`."""
    out = {}
    for topic in await load_topics():
        rows = await Score.select(Score.lead.email, Score.lead.id, Score.combined, Score.hot, Score.explanation).where(
            Score.topic == topic.id).order_by(Score.combined, ascending=False).limit(limit).output(load_json=True)
        out[topic.name] = rows
    return out


# Training


@dataclass
class TrainingSet:
    leads: LeadArrays
    events: EventArrays
    labels: np.ndarray
    topics: list[int | None]
    times: np.ndarray


async def training_set(now: datetime, label_after_days: int = LABEL_AFTER_DAYS) -> TrainingSet:
    """Labelled leads: won or qualified or converted = 1; lost, or no outcome after
    `label_after_days`, = 0. Features are taken as of the outcome, never after it."""
    converted_at = {r["lead"]: r["at"] for r in await Conversion.raw(
        f"SELECT lead, MIN({_epoch_sql('occurred_at')}) AS at FROM conversion GROUP BY lead")}
    cutoff = (now - timedelta(days=label_after_days)).timestamp()
    # Erased leads are not learned from: erasure means their data is no longer processed.
    leads, events, rows = await load_batch("erased_at IS NULL", [], now, set())
    labels, keep, as_of = [], [], {}
    timed_out: list[int] = []
    for i, row in enumerate(rows):
        stage = row["stage"]
        created = leads.created[i]
        # The outcome's time: set when the stage changed; a lead closed before that was
        # recorded falls back to its last update, never to now (which would read events
        # that came after the outcome).
        closed = row["outcome"] or row["updated"]
        if stage in POSITIVE_STAGES or row["id"] in converted_at:
            label = 1
            at = row["outcome"] or converted_at.get(row["id"]) or closed
        elif stage in NEGATIVE_STAGES:
            label = 0
            at = closed
        elif created <= cutoff and not row["historical"]:
            label = 0
            at = created + label_after_days * 86400
            timed_out.append(i)
        else:
            continue
        labels.append(label)
        keep.append(i)
        as_of[i] = at
    # Leads without an outcome are read at a delay after arrival drawn from the positives'
    # delays (the same for the same lead), not all at day 90: otherwise recency and the
    # window counts would tell the labelling rule apart from interest.
    delays = sorted(as_of[i] - leads.created[i] for i, label in zip(keep, labels) if label == 1
                    and as_of[i] - leads.created[i] > 0)
    for i in timed_out:
        if delays:
            pick = delays[int(leads.ids[i]) * 2654435761 % len(delays)]
            as_of[i] = leads.created[i] + min(pick, label_after_days * 86400)
    keep_arr = np.array(keep, dtype=np.int64)
    selected = LeadArrays(leads.ids[keep_arr], np.array([as_of[i] for i in keep], dtype=float), leads.created[keep_arr],
                          [leads.attributes[i] for i in keep], [leads.sources[i] for i in keep],
                          [leads.first_touch[i] for i in keep])
    remap = np.full(len(leads), -1, dtype=np.int64)
    remap[keep_arr] = np.arange(len(keep))
    mask = remap[events.lead_row] >= 0 if len(events) else np.zeros(0, dtype=bool)
    selected_events = EventArrays(remap[events.lead_row[mask]], events.type_code[mask], events.type_names,
                                  events.topic[mask], events.ts[mask], events.pricing[mask], None)
    most_common = _most_common_topic(events, len(leads))
    topics = [rows[i]["topic"] if rows[i]["topic"] is not None else most_common.get(i) for i in keep]
    return TrainingSet(selected, selected_events, np.array(labels, dtype=np.int64), topics, selected.created)


def _most_common_topic(events: EventArrays, n: int) -> dict[int, int]:
    """Each lead's most frequent event topic (lead row -> topic id), for leads with no topic set."""
    has = events.topic != NO_TOPIC
    if not has.any():
        return {}
    pairs, counts = np.unique(np.column_stack([events.lead_row[has], events.topic[has]]), axis=0, return_counts=True)
    order = np.lexsort((-counts, pairs[:, 0]))
    pairs = pairs[order]
    first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
    return {int(row): int(topic) for row, topic in pairs[first]}


def training_matrix(spec: FeatureSpec, data: TrainingSet) -> np.ndarray:
    """Each labelled lead's features for its own topic of interest."""
    matrix = np.zeros((len(data.labels), len(spec.names())))
    topics = sorted(set(data.topics), key=lambda t: (t is None, t or 0))
    for topic, by_topic in zip(topics, feature_matrices(spec, data.leads, data.events, topics)):
        rows = np.array([i for i, t in enumerate(data.topics) if t == topic])
        matrix[rows] = by_topic[rows]
    return matrix


@dataclass
class TrainReport:
    trained: bool
    promoted: bool
    version: str | None
    algorithm: str | None
    labels: int
    positives: int
    metrics: dict[str, Any]
    notes: list[str]
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return self.__dict__ | {}


async def train(now: datetime | None = None, label_after_days: int = LABEL_AFTER_DAYS, exclude: tuple[str, ...] = ()) -> TrainReport:
    """Train LightGBM and the logistic baseline, validate both on the same data, keep the
    better one as a new version, and promote it only if it beats the active model there."""
    started = time.perf_counter()
    now = now or utcnow()
    data = await training_set(now, label_after_days)
    notes: list[str] = []
    problem = models.label_problem(data.labels)
    if problem:
        return TrainReport(False, False, None, None, len(data.labels), int(data.labels.sum()), {}, [problem],
                           time.perf_counter() - started)
    excluded = {r["name"] for r in await LeadAttribute.select(LeadAttribute.name).where(LeadAttribute.excluded == True)}  # noqa: E712
    excluded |= set(exclude)
    use_events = len(data.events) > 0
    spec, spec_notes = FeatureSpec.fit(data.leads, excluded, use_events)
    notes += spec_notes
    if not use_events:
        notes.append("no events among the labelled leads: the model reads lead attributes only")
    matrix = training_matrix(spec, data)
    validation, holdout, fitted = await asyncio.to_thread(_validate_and_fit, matrix, data, spec)
    report: dict[str, Any] = {"cv": validation.report(), "cv_scheme": validation.scheme,
                              "holdout": holdout.report() if holdout else None,
                              "holdout_scheme": holdout.scheme if holdout else "skipped: the leads' times do not differ"}
    cv = report["cv"]
    best = max(models.ALGORITHMS, key=lambda name: cv[name]["roc_auc"])
    if best != "lightgbm":
        notes.append(f"LightGBM ({cv['lightgbm']['roc_auc']}) did not beat the logistic baseline "
                     f"({cv['logistic']['roc_auc']}) on this data: the baseline is the candidate")
    if cv[best]["roc_auc"] > models.LEAKAGE_AUC:
        notes.append(f"WARNING: ROC-AUC {cv[best]['roc_auc']} is suspiciously high: look for columns filled in after "
                     f"the outcome (mark them excluded under Scoring > Lead attributes)")
    candidate = fitted[best]
    version = f"m{now.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    report["chosen"] = best
    if best == "lightgbm":
        report["importances"] = dict(sorted(candidate.importances().items(), key=lambda kv: -kv[1])[:20])

    active = await active_model(fresh=True)
    promote = True
    if active is not None:
        # The active model's recipe (its algorithm and its features) retrained on the same
        # folds: out-of-fold against out-of-fold. Scoring the active model itself on these
        # leads would flatter it, since it was trained on most of them.
        active_matrix = training_matrix(active.model.spec, data)
        recipe = {active.model.algorithm: models.ALGORITHMS[active.model.algorithm]}
        active_cv = await asyncio.to_thread(models.cross_validate, active_matrix, data.labels, active.model.spec,
                                            algorithms=recipe)
        active_auc = models.metrics(data.labels, active_cv.predictions[active.model.algorithm])["roc_auc"]
        report["active"] = {"version": active.version, "algorithm": active.model.algorithm, "cv_roc_auc": active_auc}
        # At least as good: new labels refresh the model; worse: the active one stays.
        promote = cv[best]["roc_auc"] >= active_auc
        notes.append(f"{'promoted' if promote else 'not promoted'}: {best} CV ROC-AUC {cv[best]['roc_auc']} vs "
                     f"{active.version}'s recipe {active_auc} on the same folds of {len(data.labels)} leads")
    async with ScoringModel._meta.db.transaction():
        if promote:
            await ScoringModel.update({ScoringModel.active: False}).where(ScoringModel.active == True)  # noqa: E712
        await ScoringModel.insert(ScoringModel(
            version=version, algorithm=best, metrics=report, active=promote, trained_at=now, spec=spec.to_json(),
            artifact=candidate.artifact(), labels=len(data.labels), notes="\n".join(notes)))
    forget_cached()
    return TrainReport(True, promote, version, best, len(data.labels), int(data.labels.sum()), report, notes,
                       time.perf_counter() - started)


def _validate_and_fit(matrix: np.ndarray, data: TrainingSet, spec: FeatureSpec):
    validation = models.cross_validate(matrix, data.labels, spec)
    holdout = models.time_holdout(matrix, data.labels, data.times, spec)
    fitted = {name: algorithm.fit(matrix, data.labels, spec) for name, algorithm in models.ALGORITHMS.items()}  # type: ignore[attr-defined]
    return validation, holdout, fitted


# Import


@dataclass
class ImportReport:
    rows: int
    created: int
    updated: int
    historical: int
    labelled: int
    positives: int
    skipped: list[str]
    notes: list[str]
    encoding: str
    delimiter: str


async def import_leads(options: ImportOptions, batch: int = 500) -> ImportReport:
    """Import a CRM export in one transaction; rows that cannot be imported are skipped and
    reported with their line and reason, the rest are written whole or not at all."""
    from landing.forms import normalise_email

    file = await asyncio.to_thread(profile_file, options)
    attribute_columns = file.attribute_columns(options)
    now = utcnow()
    topic_id: int | None = None
    created = updated = historical = labelled = positives = 0
    skipped: list[str] = []

    positive = (file.positive or "").lower()

    def stage_of(value: str) -> str:
        if not value:
            return "new"
        return "won" if value.lower() == positive else "lost"

    async def flush(pending: list[dict[str, Any]]) -> None:
        nonlocal created, updated
        emails = [p["email"] for p in pending if p["email"]]
        ids = [p["external_id"] for p in pending if p["external_id"]]
        existing: dict[tuple[str, str], int] = {}
        if emails:
            for r in await Lead.select(Lead.id, Lead.email).where(Lead.email.is_in(emails)):
                existing[("email", r["email"])] = r["id"]
        if ids:
            for r in await Lead.select(Lead.id, Lead.external_id).where(Lead.external_id.is_in(ids)):
                existing[("id", r["external_id"])] = r["id"]
        new = []
        for p in pending:
            lead_id = existing.get(("email", p["email"])) or existing.get(("id", p["external_id"]))
            if lead_id is None:
                new.append(Lead(email=p["email"], external_id=p["external_id"], historical=p["email"] is None, created_at=now,
                                stage=p["stage"], topic=topic_id, source="import", attributes=p["attributes"],
                                outcome_at=now if p["stage"] != "new" else None))
                continue
            values = {Lead.attributes: p["attributes"]}
            if p["external_id"]:
                values[Lead.external_id] = p["external_id"]
            if p["stage"] != "new":
                values |= {Lead.stage: p["stage"], Lead.outcome_at: now}
            await Lead.update(values).where(Lead.id == lead_id)
            updated += 1
        if new:
            await Lead.insert(*new)
            created += len(new)

    async with Lead._meta.db.transaction():
        if options.topic:
            topic_id = await _topic_for_import(options.topic, file.notes)
        pending: list[dict[str, Any]] = []
        seen_in_batch: set[str] = set()
        # Addresses erased on request stay out, whatever a CRM export still holds.
        erased = {r["email_hash"] for r in await Suppression.select(Suppression.email_hash).where(
            Suppression.reason == SuppressionReason.erased)}
        rows_iter = read_rows(options.path, file.encoding, file.delimiter)
        while True:
            # The CSV is read in a thread, a batch at a time: the event loop stays free.
            chunk = await asyncio.to_thread(_take, rows_iter, batch)
            if not chunk:
                break
            for line, row in chunk:
                email = None
                if options.email_column and row.get(options.email_column):
                    try:
                        email = normalise_email(row[options.email_column])
                    except ValueError as exc:
                        skipped.append(f"line {line}: {exc}")
                        continue
                    if email_hash(email) in erased:
                        skipped.append(f"line {line}: this address was erased on request and is not imported again")
                        continue
                external_id = (row.get(options.id_column) or "")[:200] or None if options.id_column else None
                # A lead seen earlier in this batch (by email or by id) is written first, so
                # this row updates it instead of inserting a second one.
                keys = {k for k in (email and f"e:{email}", external_id and f"i:{external_id}") if k}
                if keys & seen_in_batch:
                    await flush(pending)
                    pending, seen_in_batch = [], set()
                seen_in_batch |= keys
                attributes = {}
                for column in attribute_columns:
                    value = typed_value(column, row.get(column.name, ""))
                    if value is not None:
                        attributes[column.name] = value
                stage = stage_of(row.get(options.outcome, ""))
                labelled += stage != "new"
                positives += stage == "won"
                historical += email is None
                pending.append({"email": email, "external_id": external_id, "stage": stage, "attributes": attributes})
            if len(pending) >= batch:
                await flush(pending)
                pending, seen_in_batch = [], set()
        if pending:
            await flush(pending)
        for column in attribute_columns:
            await LeadAttribute.insert(LeadAttribute(name=column.name[:200], kind=column.kind, updated_at=now)).on_conflict(
                target=LeadAttribute.name, action="DO UPDATE", values=[LeadAttribute.kind, LeadAttribute.updated_at])
        for name in options.exclude:
            await LeadAttribute.insert(LeadAttribute(name=name[:200], excluded=True, note="excluded at import",
                                                     updated_at=now)).on_conflict(
                target=LeadAttribute.name, action="DO UPDATE", values=[LeadAttribute.excluded, LeadAttribute.note])
    if not options.email_column and not options.id_column:
        file.notes.append("no --email or --id: importing this file again adds its rows again")
    return ImportReport(file.rows, created, updated, historical, labelled, positives, skipped, file.notes,
                        file.encoding, file.delimiter)


def _take(rows, count: int) -> list:
    out = []
    for item in rows:
        out.append(item)
        if len(out) >= count:
            break
    return out


async def _topic_for_import(name: str, notes: list[str]) -> int:
    row = await Topic.select(Topic.id).where((Topic.name == name) | (Topic.slug == name)).first()
    if row is not None:
        return row["id"]
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")[:100] or "imported"
    rows = await Topic.insert(Topic(name=name[:100], slug=slug)).returning(Topic.id)
    notes.append(f"created the topic {name!r}")
    return rows[0]["id"]


__all__ = ["ImportOptions", "ImportProblem", "import_leads", "rescore_all", "rescore_lead", "train", "top_leads"]
