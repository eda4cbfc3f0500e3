"""Point rules for one lead's events, and how rule points and the model make one 0-100 score.

The arithmetic lives in `scoring.engine` (vectorised, shared with batch rescoring and
training); this module is its readable face for a single lead and the combining rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from scoring.engine import NO_TOPIC, EventArrays, LeadArrays, Rule, property_matches, rule_points as batch_rule_points

__all__ = ["Contribution", "Rule", "ScoredEvent", "combine", "decay", "explain", "matches", "rule_points"]

MODEL_WEIGHT = 0.6
"""With an active model, the combined score is 60% model probability and 40% rule points
(capped at 100): the model ranks, the rules keep what staff know to matter visible."""


@dataclass(frozen=True)
class ScoredEvent:
    """The parts of an event that rules look at."""

    type: str
    occurred_at: datetime
    topic_id: int | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Contribution:
    """How much one rule added to one topic's score, and from how many events."""

    rule_id: int
    rule_name: str
    topic_id: int
    points: float
    events: int


def matches(rule: Rule, event: ScoredEvent, topic_id: int) -> bool:
    """Does the rule apply to this event for this topic? Property values match as glob patterns."""
    if rule.event_type != event.type:
        return False
    if rule.topic_id is not None and rule.topic_id != topic_id:
        return False
    if event.topic_id is not None and event.topic_id != topic_id:
        return False
    return all(property_matches(pattern, event.properties.get(key)) for key, pattern in rule.property_match.items())


def decay(age_days: float, half_life_days: float) -> float:
    """The weight left after `age_days` with the given half-life (1.0 for a fresh event)."""
    if half_life_days <= 0:
        return 1.0
    return 0.5 ** (max(0.0, age_days) / half_life_days)


def single_lead(events: Iterable[ScoredEvent], now: datetime, attributes: Mapping[str, Any] | None = None,
                source: str = "") -> tuple[LeadArrays, EventArrays]:
    """One lead and its events as the engine's arrays."""
    events = list(events)
    type_names = sorted({e.type for e in events})
    stamp = now.timestamp()
    leads = LeadArrays(np.array([0]), np.array([stamp]), np.array([stamp]), [attributes or {}], [source], [{}])
    arrays = EventArrays(
        lead_row=np.zeros(len(events), dtype=np.int64),
        type_code=np.array([type_names.index(e.type) for e in events], dtype=np.int64),
        type_names=type_names,
        topic=np.array([NO_TOPIC if e.topic_id is None else e.topic_id for e in events], dtype=np.int64),
        ts=np.array([e.occurred_at.timestamp() for e in events], dtype=float),
        pricing=np.array([e.type == "page_view" and "pricing" in str(e.properties.get("url", "")) for e in events], dtype=bool),
        properties=[dict(e.properties) for e in events],
    )
    return leads, arrays


def rule_points(
    rules: Iterable[Rule], events: Iterable[ScoredEvent], topic_ids: Iterable[int], now: datetime
) -> dict[int, list[Contribution]]:
    """Each topic's contributions, largest first; an event without a topic counts for every topic."""
    rules, topic_ids = list(rules), list(topic_ids)
    leads, arrays = single_lead(events, now)
    result = batch_rule_points(rules, leads, arrays, topic_ids)
    return {topic_id: contributions(result.points[:, 0, j], result.counts[:, 0, j], rules, topic_id)
            for j, topic_id in enumerate(topic_ids)}


def contributions(points: np.ndarray, counts: np.ndarray, rules: list[Rule], topic_id: int) -> list[Contribution]:
    """One lead-and-topic's rule contributions (from the engine's columns), largest first."""
    found = [Contribution(rule.id, rule.name, topic_id, float(points[r]), int(counts[r]))
             for r, rule in enumerate(rules) if counts[r]]
    found.sort(key=lambda c: abs(c.points), reverse=True)
    return found


def combine(points: Any, probability: Any = None) -> Any:
    """Rule points and the model's probability as one 0-100 score (numbers or numpy arrays).

    Without a model it is the rule points, clamped; with one, a weighted mean of the
    probability (as 0-100) and the clamped points.
    """
    rules_part = np.clip(points, 0.0, 100.0)
    if probability is None:
        return rules_part
    return np.round(MODEL_WEIGHT * 100.0 * probability + (1 - MODEL_WEIGHT) * rules_part, 2)


def explain(contributions: list[Contribution], limit: int = 5) -> list[dict[str, Any]]:
    """The top rule factors in words a sales person reads."""
    return [
        {
            "factor": c.rule_name,
            "source": "rule",
            "points": round(c.points, 1),
            "text": f"{c.rule_name} ({c.events}×)",
        }
        for c in contributions[:limit]
    ]
