"""Rule points and model features for a batch of leads, vectorised with numpy.

One code path serves one lead after a new event, the nightly rescoring of everyone and
training: the caller loads `LeadArrays` and `EventArrays` (one row per lead, one per event)
and gets matrices back. Every time is in epoch seconds, every age in days counted back
from the lead's `as_of` (now when scoring, the outcome time when training), and events
after `as_of` are ignored, so a model never learns from what happened after the outcome.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

DAY = 86400.0
NO_TOPIC = -1

FEATURE_KINDS = ("page_view", "pricing_view", "download", "form_submit", "email_open", "email_click", "reply")
"""Event kinds the model counts. `pricing_view` is a page view whose URL mentions pricing."""
WINDOWS = (7, 30, 90)
"""Days over which events are counted: this week, this month, this quarter."""
MAX_CATEGORIES = 100
"""Values kept per categorical attribute; rarer ones share one code, so a column with
50,000 distinct values cannot blow up the model."""


@dataclass
class LeadArrays:
    """The leads of a batch, one entry per lead, in row order."""

    ids: np.ndarray
    as_of: np.ndarray
    created: np.ndarray
    attributes: list[Mapping[str, Any]]
    sources: list[str]
    first_touch: list[Mapping[str, Any]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class EventArrays:
    """The events of a batch's leads; `type_code` indexes `type_names`."""

    lead_row: np.ndarray
    type_code: np.ndarray
    type_names: list[str]
    topic: np.ndarray
    ts: np.ndarray
    pricing: np.ndarray
    properties: list[Any] | None = None
    """Parsed dicts or JSON text per event; None where no rule reads properties."""

    def __len__(self) -> int:
        return len(self.lead_row)

    def code_of(self, type_name: str) -> int:
        try:
            return self.type_names.index(type_name)
        except ValueError:
            return -2  # matches no event


@dataclass(frozen=True)
class Rule:
    """A scoring rule as plain data."""

    id: int
    name: str
    event_type: str
    points: float
    topic_id: int | None = None
    property_match: Mapping[str, str] = field(default_factory=dict)
    daily_cap: int | None = None
    half_life_days: float = 30.0
    kind: str = "event"


@dataclass
class RulePoints:
    """Decayed points per rule, lead and topic (`points[r, i, t]`), and matching event counts."""

    points: np.ndarray
    counts: np.ndarray
    rules: list[Rule]
    topic_ids: list[int]

    def total(self) -> np.ndarray:
        """Points per lead and topic, summed over rules: shape (leads, topics)."""
        return self.points.sum(axis=0)


def _property_value(properties: Any, key: str) -> Any:
    if properties is None:
        return None
    if isinstance(properties, str):
        try:
            properties = json.loads(properties)
        except ValueError:
            return None
    return properties.get(key) if isinstance(properties, dict) else None


def property_matches(pattern: str, value: Any) -> bool:
    """A glob on the value's text, or a comparison (`>=50`, `<10`) on a number."""
    if value is None:
        return False
    pattern = str(pattern)
    for op in (">=", "<=", ">", "<"):
        if pattern.startswith(op):
            try:
                number, limit = float(value), float(pattern[len(op):])
            except (TypeError, ValueError):
                return False
            return {">=": number >= limit, "<=": number <= limit, ">": number > limit, "<": number < limit}[op]
    return fnmatch.fnmatchcase(str(value), pattern)


def rule_points(rules: Sequence[Rule], leads: LeadArrays, events: EventArrays, topic_ids: Sequence[int]) -> RulePoints:
    """Every rule's decayed, capped points for every lead and topic.

    An event counts for its own topic, an event without a topic for every topic. A daily
    cap keeps a rule's earliest events of each (UTC) day. Profile rules give their points
    once, undecayed, to every topic of a lead whose attributes all match.
    """
    rules = list(rules)
    topic_ids = list(topic_ids)
    n, t = len(leads), len(topic_ids)
    points = np.zeros((len(rules), n, t))
    counts = np.zeros((len(rules), n, t), dtype=np.int64)
    if n == 0:
        return RulePoints(points, counts, rules, topic_ids)
    as_of = leads.as_of[events.lead_row] if len(events) else np.zeros(0)
    age_days = (as_of - events.ts) / DAY
    live = age_days >= 0
    day = np.floor(events.ts / DAY).astype(np.int64)
    for r, rule in enumerate(rules):
        if rule.kind == "profile":
            hits = np.array([_profile_matches(rule, a, s) for a, s in zip(leads.attributes, leads.sources)], dtype=bool)
            for j, topic_id in enumerate(topic_ids):
                if rule.topic_id is None or rule.topic_id == topic_id:
                    points[r, hits, j] = rule.points
                    counts[r, hits, j] = 1
            continue
        base = live & (events.type_code == events.code_of(rule.event_type))
        if rule.property_match and base.any():
            candidates = np.flatnonzero(base)
            props = events.properties or []
            ok = [
                i < len(props) and all(property_matches(p, _property_value(props[i], k)) for k, p in rule.property_match.items())
                for i in candidates
            ]
            base[candidates[~np.array(ok, dtype=bool)]] = False
        for j, topic_id in enumerate(topic_ids):
            if rule.topic_id is not None and rule.topic_id != topic_id:
                continue
            mask = base & ((events.topic == topic_id) | (events.topic == NO_TOPIC))
            if not mask.any():
                continue
            idx = np.flatnonzero(mask)
            if rule.daily_cap is not None:
                idx = _first_per_day(idx, events.lead_row, day, events.ts, int(rule.daily_cap))
            weight = _decay(age_days[idx], rule.half_life_days)
            rows = events.lead_row[idx]
            points[r, :, j] = np.bincount(rows, weights=rule.points * weight, minlength=n)
            counts[r, :, j] = np.bincount(rows, minlength=n)
    return RulePoints(points, counts, rules, topic_ids)


def _profile_matches(rule: Rule, attributes: Mapping[str, Any], source: str) -> bool:
    if not rule.property_match:
        return False
    values = {"source": source, **attributes}
    return all(property_matches(pattern, values.get(key)) for key, pattern in rule.property_match.items())


def _first_per_day(idx: np.ndarray, lead_row: np.ndarray, day: np.ndarray, ts: np.ndarray, cap: int) -> np.ndarray:
    """The earliest `cap` events of each lead and day among `idx`."""
    if cap <= 0:
        return idx[:0]
    order = np.lexsort((ts[idx], day[idx], lead_row[idx]))
    idx = idx[order]
    key = lead_row[idx] * 1_000_000 + day[idx]
    starts = np.r_[True, key[1:] != key[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(idx)), 0))
    return idx[(np.arange(len(idx)) - group_start) < cap]


def _decay(age_days: np.ndarray, half_life_days: float) -> np.ndarray:
    if half_life_days <= 0:
        return np.ones_like(age_days)
    return np.power(0.5, np.maximum(age_days, 0.0) / half_life_days)


# Features


@dataclass
class FeatureSpec:
    """Which features a model reads and how categorical values become codes.

    Built from the training leads (`FeatureSpec.fit`) and stored with the model, so
    scoring builds exactly the columns the model was trained on.
    """

    numeric: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    """Attribute name -> its kept values (code = position; any other value = len)."""
    sources: list[str] = field(default_factory=list)
    utm: dict[str, list[str]] = field(default_factory=dict)
    use_events: bool = True

    def names(self) -> list[str]:
        names = []
        if self.use_events:
            names += [f"ev:{k}:topic:{w}d" for k in FEATURE_KINDS for w in WINDOWS]
            names += [f"ev:{k}:any:90d" for k in FEATURE_KINDS]
            # No lead age: a lead with no outcome becomes a negative label at a fixed age,
            # so age would teach the model the labelling rule instead of interest.
            names += ["recency:topic", "recency:any", "active_days:90d", "topics:90d"]
        names += ["source"] + [f"utm:{key}" for key in self.utm]
        names += [f"num:{name}" for name in self.numeric]
        names += [f"cat:{name}" for name in self.categorical]
        return names

    def categorical_columns(self) -> list[int]:
        """Positions of the categorical features (LightGBM's categorical_feature)."""
        names = self.names()
        return [i for i, name in enumerate(names) if name == "source" or name.startswith(("utm:", "cat:"))]

    def to_json(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categorical": self.categorical, "sources": self.sources, "utm": self.utm,
                "use_events": self.use_events}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FeatureSpec":
        return cls(list(data.get("numeric", [])), dict(data.get("categorical", {})), list(data.get("sources", [])),
                   dict(data.get("utm", {})), bool(data.get("use_events", True)))

    @classmethod
    def fit(cls, leads: LeadArrays, excluded: set[str] = frozenset(), use_events: bool = True) -> tuple["FeatureSpec", list[str]]:
        """A spec from the training leads' attributes, and notes on what was left out and why."""
        notes: list[str] = []
        values: dict[str, list[Any]] = {}
        for attributes in leads.attributes:
            for key, value in attributes.items():
                values.setdefault(key, []).append(value)
        n = len(leads)
        numeric, categorical = [], {}
        for name in sorted(values):
            if name in excluded:
                notes.append(f"{name}: excluded (marked as filled in after the outcome)")
                continue
            present = [v for v in values[name] if v is not None and v != ""]
            if not present:
                notes.append(f"{name}: left out (always empty)")
                continue
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
                if len(set(present)) == len(present) == n and n >= 50 and _looks_like_a_counter(present):
                    notes.append(f"{name}: left out (a different number on every lead: an identifier)")
                    continue
                numeric.append(name)
                continue
            texts = [str(v) for v in present]
            distinct = _top_values(texts, MAX_CATEGORIES + 1)
            if len(set(texts)) == len(texts) == n and n >= 50:
                notes.append(f"{name}: left out (a different value on every lead: an identifier)")
                continue
            if len(distinct) > MAX_CATEGORIES:
                notes.append(f"{name}: {len(set(texts))} distinct values, the {MAX_CATEGORIES} most common kept")
            categorical[name] = distinct[:MAX_CATEGORIES]
        sources = _top_values([s for s in leads.sources if s], MAX_CATEGORIES)
        utm = {key: _top_values([str(t.get(key)) for t in leads.first_touch if t.get(key)], MAX_CATEGORIES)
               for key in ("utm_source", "utm_medium")}
        return cls(numeric, categorical, sources, utm, use_events), notes


def _looks_like_a_counter(values: list[float]) -> bool:
    """Whole numbers, all different: row numbers and CRM ids, not measurements."""
    return all(float(v).is_integer() for v in values)


def _top_values(values: list[str], limit: int) -> list[str]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def _codes(values: Sequence[Any], vocabulary: Sequence[str]) -> np.ndarray:
    lookup = {v: i for i, v in enumerate(vocabulary)}
    other = float(len(vocabulary))
    return np.array([np.nan if v is None or v == "" else lookup.get(str(v), other) for v in values], dtype=float)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def feature_matrix(spec: FeatureSpec, leads: LeadArrays, events: EventArrays, topic_id: int | None) -> np.ndarray:
    """One row per lead, the columns of `spec.names()`, for interest in `topic_id`.

    `topic_id=None` reads every event as on-topic (a lead with no topic of interest yet).
    """
    return feature_matrices(spec, leads, events, [topic_id])[0]


def feature_matrices(spec: FeatureSpec, leads: LeadArrays, events: EventArrays,
                     topic_ids: Sequence[int | None]) -> list[np.ndarray]:
    """`feature_matrix` for several topics, sharing what does not depend on the topic."""
    n = len(leads)
    shared: list[np.ndarray] = [_codes(leads.sources, spec.sources)]
    for key, vocabulary in spec.utm.items():
        shared.append(_codes([t.get(key) for t in leads.first_touch], vocabulary))
    for name in spec.numeric:
        shared.append(np.array([_number(a.get(name)) for a in leads.attributes], dtype=float))
    for name, vocabulary in spec.categorical.items():
        shared.append(_codes([a.get(name) for a in leads.attributes], vocabulary))
    tail = np.column_stack(shared) if n else np.zeros((0, len(shared)))
    if not spec.use_events:
        return [tail for _ in topic_ids]
    events_part = _EventColumns(leads, events)
    return [np.hstack([events_part.for_topic(topic_id), tail]) for topic_id in topic_ids]


class _EventColumns:
    """The event features of a batch: the topic-free parts computed once."""

    def __init__(self, leads: LeadArrays, events: EventArrays) -> None:
        n = self.n = len(leads)
        rows = self.rows = events.lead_row
        age = self.age = (leads.as_of[rows] - events.ts) / DAY if len(events) else np.zeros(0)
        # Strictly before `as_of`: in training, the event that made the outcome is not a feature.
        live = self.live = age > 0
        self.topic = events.topic
        self.kinds = [events.pricing.astype(bool) if kind == "pricing_view" else events.type_code == events.code_of(kind)
                      for kind in FEATURE_KINDS]
        self.windows = [live & (age < window) for window in WINDOWS]
        recent = self.windows[-1] if WINDOWS[-1] == 90 else live & (age < 90)
        any_topic = [np.bincount(rows[recent & kind], minlength=n) for kind in self.kinds]
        days = np.floor(events.ts[recent] / DAY).astype(np.int64)
        with_topic = recent & (events.topic != NO_TOPIC)
        self.tail = np.column_stack(any_topic + [
            _min_per_lead(rows[live], age[live], n),
            _distinct_per_lead(rows[recent], days, n),
            _distinct_per_lead(rows[with_topic], events.topic[with_topic], n),
        ]).astype(float) if n else np.zeros((0, len(FEATURE_KINDS) + 3))

    def for_topic(self, topic_id: int | None) -> np.ndarray:
        n, rows = self.n, self.rows
        on_topic = self.live if topic_id is None else self.live & ((self.topic == topic_id) | (self.topic == NO_TOPIC))
        counts = [np.bincount(rows[on_topic & kind & window], minlength=n)
                  for kind in self.kinds for window in self.windows]
        recency = _min_per_lead(rows[on_topic], self.age[on_topic], n)
        if not n:
            return np.zeros((0, len(counts) + 1 + self.tail.shape[1]))
        # Column order as in FeatureSpec.names(): counts, any-topic counts, recency on the
        # topic, recency anywhere, active days, topics.
        any_counts, rest = self.tail[:, : len(FEATURE_KINDS)], self.tail[:, len(FEATURE_KINDS):]
        return np.column_stack(counts + [any_counts, recency, rest]).astype(float)


def _min_per_lead(rows: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.inf)
    np.minimum.at(out, rows, values)
    out[np.isinf(out)] = np.nan
    return out


def _distinct_per_lead(rows: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    if len(rows) == 0:
        return np.zeros(n)
    values = values.astype(np.int64)
    span = int(values.max() - values.min()) + 1
    keys = np.unique(rows.astype(np.int64) * span + (values - values.min()))
    return np.bincount(keys // span, minlength=n).astype(float)


# Words for sales


KIND_WORDS = {
    "page_view": ("viewed", "{topic} page", "{topic} pages"),
    "pricing_view": ("visited pricing", "once", "{count} times"),
    "download": ("downloaded", "{topic} ebook", "{topic} ebooks"),
    "form_submit": ("filled in", "{topic} form", "{topic} forms"),
    "email_open": ("opened", "{topic} letter", "{topic} letters"),
    "email_click": ("clicked", "link in a {topic} letter", "links in {topic} letters"),
    "reply": ("replied to", "{topic} letter", "{topic} letters"),
}
WINDOW_WORDS = {7: "this week", 30: "this month", 90: "in the last 90 days"}


def describe(feature: str, value: float, topic_name: str, raw: Any = None) -> str:
    """A feature and its value in words a sales person reads; `raw` is the lead's own value
    for attribute features (the text behind a category code)."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if feature.startswith("ev:"):
        _, kind, scope, window = feature.split(":")
        count = 0 if missing else int(value)
        verb, one, many = KIND_WORDS.get(kind, (kind, "time", "times"))
        topic = topic_name if scope == "topic" else "any"
        period = WINDOW_WORDS.get(int(window[:-1]), f"in {window}")
        if kind == "pricing_view":
            amount = "never" if count == 0 else (one if count == 1 else many.format(count=count))
            return f"{verb} {amount} {period}"
        if count == 0:
            return f"{verb} no {many.format(topic=topic)} {period}"
        return f"{verb} {count} {(one if count == 1 else many).format(topic=topic)} {period}"
    if feature == "recency:topic":
        return f"no {topic_name} activity yet" if missing else f"last {topic_name} activity {_days(value)}"
    if feature == "recency:any":
        return "no activity yet" if missing else f"last activity {_days(value)}"
    if feature == "active_days:90d":
        return f"active on {int(value or 0)} days in the last 90"
    if feature == "topics:90d":
        return f"interested in {int(value or 0)} topics lately"
    label = feature.split(":", 1)[-1]
    label = {"source": "source", "utm_source": "first came from", "utm_medium": "first came by"}.get(label, label)
    if raw is None or raw == "":
        return f"{label}: unknown"
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    return f"{label}: {raw}"


def _days(value: float) -> str:
    days = int(round(value))
    return "today" if days == 0 else ("1 day ago" if days == 1 else f"{days} days ago")
