"""Point rules: an event's points, decayed by age with a half-life and capped per day."""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping


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
    for key, pattern in rule.property_match.items():
        value = event.properties.get(key)
        if value is None or not fnmatch.fnmatchcase(str(value), str(pattern)):
            return False
    return True


def decay(age_days: float, half_life_days: float) -> float:
    """The weight left after `age_days` with the given half-life (1.0 for a fresh event)."""
    if half_life_days <= 0:
        return 1.0
    return 0.5 ** (max(0.0, age_days) / half_life_days)


def rule_points(
    rules: Iterable[Rule], events: Iterable[ScoredEvent], topic_ids: Iterable[int], now: datetime
) -> dict[int, list[Contribution]]:
    """Each topic's contributions, largest first; an event without a topic counts for every topic."""
    events = sorted(events, key=lambda e: e.occurred_at)
    rules = list(rules)
    result: dict[int, list[Contribution]] = {}
    for topic_id in topic_ids:
        contributions = []
        for rule in rules:
            per_day: dict[object, int] = defaultdict(int)
            total, count = 0.0, 0
            for event in events:
                if not matches(rule, event, topic_id):
                    continue
                day = event.occurred_at.date()
                if rule.daily_cap is not None and per_day[day] >= rule.daily_cap:
                    continue
                per_day[day] += 1
                age = (now - event.occurred_at).total_seconds() / 86400
                total += rule.points * decay(age, rule.half_life_days)
                count += 1
            if count:
                contributions.append(Contribution(rule.id, rule.name, topic_id, total, count))
        contributions.sort(key=lambda c: abs(c.points), reverse=True)
        result[topic_id] = contributions
    return result


def combine(points: float) -> float:
    """Rule points to a 0-100 score (rules only, until a model is active)."""
    return max(0.0, min(100.0, points))


def explain(contributions: list[Contribution], limit: int = 5) -> list[dict[str, Any]]:
    """The top factors in words a sales person reads."""
    return [
        {
            "factor": c.rule_name,
            "source": "rule",
            "points": round(c.points, 1),
            "text": f"{c.rule_name} ({c.events}×)",
        }
        for c in contributions[:limit]
    ]
