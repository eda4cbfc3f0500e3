"""Scores for sales to read: leads ranked per topic, one lead's scores and their history, reasons in words."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from piccolo.query.functions.aggregate import Max

from content.chains import instant as _instant
from landing.tables import Event, Topic
from scoring.tables import Score, ScoreHistory

NOT_ACTIVITY = ("became_hot", "bounce")
"""Events that are facts about a lead, not things it did: they do not count as its last activity."""

Owner = Literal["anyone", "unassigned"] | int
"""Whose leads: anyone's, nobody's, or one user's (by id)."""


@dataclass(frozen=True)
class Reason:
    """One factor of a score, readable: what, by how much (on the 0-100 scale), from the rules or the model."""

    text: str
    effect: float | None
    source: str

    @property
    def signed(self) -> str:
        """The effect as "+12.5" or "−3.0" ("" when unknown)."""
        if self.effect is None:
            return ""
        return f"+{self.effect:.1f}" if self.effect >= 0 else f"\u2212{abs(self.effect):.1f}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def reasons(explanation: Any, limit: int | None = None) -> list[Reason]:
    """A stored `Score.explanation` as reasons, largest effect first.

    The explanation is a list (JSON text on SQLite) of factors as `scoring.service` writes them:
    rule factors `{"factor", "source": "rule", "points", "effect", "text"}`, model factors
    `{"factor", "source": "model", "effect", "log_odds", "text"}`. Anything malformed is skipped,
    so an old or hand-edited row never breaks a page.
    """
    if isinstance(explanation, (str, bytes)):
        try:
            explanation = json.loads(explanation or "[]")
        except ValueError:
            return []
    if not isinstance(explanation, list):
        return []
    found = []
    for factor in explanation:
        if not isinstance(factor, dict):
            continue
        text = str(factor.get("text") or factor.get("factor") or "").strip()
        if not text:
            continue
        effect = _number(factor.get("effect"))
        if effect is None:
            effect = _number(factor.get("points"))
        source = factor.get("source") if factor.get("source") in ("rule", "model") else "rule"
        found.append(Reason(text, effect, source))
    found.sort(key=lambda r: -abs(r.effect or 0.0))
    return found[:limit] if limit is not None else found


@dataclass(frozen=True)
class LeadFilter:
    """Which scores the hot-leads list shows."""

    topic_id: int | None = None
    stage: str | None = None
    owner: Owner = "anyone"
    hot_only: bool = True
    """False: every score above 0 (leads with some interest in the topic), hot or not."""


@dataclass(frozen=True)
class RankedLead:
    """One row of the hot-leads list: a lead's score on one topic."""

    lead_id: int
    email: str
    first_name: str
    last_name: str
    company: str
    topic_id: int
    topic_name: str
    combined: float
    hot: bool
    hot_threshold: float
    stage: str
    owner_id: int | None
    owner_name: str
    reasons: list[Reason]
    computed_at: datetime | None
    last_activity: datetime | None

    @property
    def name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)


@dataclass(frozen=True)
class Ranking:
    rows: list[RankedLead]
    total: int


def _where(selected: LeadFilter):
    where = Score.lead.erased_at.is_null() & (Score.lead.historical == False)  # noqa: E712
    where &= (Score.hot == True) if selected.hot_only else (Score.combined > 0)  # noqa: E712
    if selected.topic_id is not None:
        where &= Score.topic == selected.topic_id
    if selected.stage:
        where &= Score.lead.stage == selected.stage
    if selected.owner == "unassigned":
        where &= Score.lead.owner.is_null()
    elif isinstance(selected.owner, int) and not isinstance(selected.owner, bool):
        where &= Score.lead.owner == selected.owner
    return where


async def ranked_leads(selected: LeadFilter, limit: int = 50, offset: int = 0, reasons_per_row: int = 3) -> Ranking:
    """Scores by combined score, highest first (a lead hot on two topics is a row on each),
    erased and historical leads left out; one page of rows and how many there are in all.

    Three queries whatever the page's size: the count, the page (scores joined to their lead,
    topic and owner) and the page's leads' last activity.
    """
    where = _where(selected)
    total = await Score.count().where(where)
    rows = await Score.select(
        Score.lead.id.as_alias("lead_id"), Score.lead.email.as_alias("email"),
        Score.lead.first_name.as_alias("first_name"), Score.lead.last_name.as_alias("last_name"),
        Score.lead.company.as_alias("company"), Score.lead.stage.as_alias("stage"),
        Score.lead.owner.id.as_alias("owner_id"), Score.lead.owner.username.as_alias("owner_name"),
        Score.topic.id.as_alias("topic_id"), Score.topic.name.as_alias("topic_name"),
        Score.topic.hot_threshold.as_alias("hot_threshold"),
        Score.combined, Score.hot, Score.explanation, Score.computed_at,
    ).where(where).order_by(Score.combined, ascending=False).order_by(Score.lead.id, Score.topic.id).limit(
        limit).offset(offset).output(load_json=True)
    activity = await last_activity({row["lead_id"] for row in rows})
    return Ranking([
        RankedLead(
            lead_id=row["lead_id"], email=row["email"] or "", first_name=row["first_name"] or "",
            last_name=row["last_name"] or "", company=row["company"] or "", topic_id=row["topic_id"],
            topic_name=row["topic_name"] or "", combined=float(row["combined"] or 0.0), hot=bool(row["hot"]),
            hot_threshold=float(row["hot_threshold"] or 0.0), stage=row["stage"] or "", owner_id=row["owner_id"],
            owner_name=row["owner_name"] or "", reasons=reasons(row["explanation"], reasons_per_row),
            computed_at=_instant(row["computed_at"]), last_activity=activity.get(row["lead_id"]),
        )
        for row in rows
    ], total)


async def last_activity(lead_ids: set[int]) -> dict[int, datetime]:
    """Each lead's latest event of its own doing, in one grouped query."""
    if not lead_ids:
        return {}
    rows = await Event.select(Event.lead, Max(Event.occurred_at, alias="last")).where(
        Event.lead.is_in(sorted(lead_ids)) & Event.type.not_in(list(NOT_ACTIVITY))
    ).group_by(Event.lead)
    return {row["lead"]: moment for row in rows if (moment := _instant(row["last"])) is not None}


@dataclass(frozen=True)
class TopicScore:
    """A lead's score on one topic, with everything that made it."""

    topic_id: int
    topic_name: str
    hot_threshold: float
    combined: float
    rule_points: float
    model_probability: float | None
    model_version: str
    hot: bool
    reasons: list[Reason]
    computed_at: datetime | None


async def lead_scores(lead_id: int) -> list[TopicScore]:
    """The lead's score on every topic, highest first."""
    rows = await Score.select(
        Score.topic.id.as_alias("topic_id"), Score.topic.name.as_alias("topic_name"),
        Score.topic.hot_threshold.as_alias("hot_threshold"), Score.combined, Score.rule_points,
        Score.model_probability, Score.model_version, Score.hot, Score.explanation, Score.computed_at,
    ).where(Score.lead == lead_id).order_by(Score.combined, ascending=False).order_by(Score.topic.name).output(
        load_json=True)
    return [TopicScore(row["topic_id"], row["topic_name"] or "", float(row["hot_threshold"] or 0.0),
                       float(row["combined"] or 0.0), float(row["rule_points"] or 0.0),
                       _number(row["model_probability"]), row["model_version"] or "", bool(row["hot"]),
                       reasons(row["explanation"]), _instant(row["computed_at"]))
            for row in rows]


HISTORY_POINTS = 2000
"""The latest points of a lead's score history drawn: years of daily rescoring on every topic."""


@dataclass(frozen=True)
class TopicHistory:
    topic_id: int
    topic_name: str
    hot_threshold: float
    points: list[tuple[datetime, float]]


async def score_history(lead_id: int, limit: int = HISTORY_POINTS) -> list[TopicHistory]:
    """The lead's combined score over time, per topic (oldest point first), the latest `limit` points in all."""
    rows = await ScoreHistory.select(
        ScoreHistory.topic.id.as_alias("topic_id"), ScoreHistory.topic.name.as_alias("topic_name"),
        ScoreHistory.topic.hot_threshold.as_alias("hot_threshold"), ScoreHistory.combined, ScoreHistory.computed_at,
    ).where(ScoreHistory.lead == lead_id).order_by(ScoreHistory.computed_at, ascending=False).order_by(
        ScoreHistory.id, ascending=False).limit(limit)
    by_topic: dict[int, TopicHistory] = {}
    for row in reversed(rows):
        moment = _instant(row["computed_at"])
        if moment is None or row["topic_id"] is None:
            continue
        history = by_topic.get(row["topic_id"])
        if history is None:
            history = by_topic[row["topic_id"]] = TopicHistory(row["topic_id"], row["topic_name"] or "",
                                                               float(row["hot_threshold"] or 0.0), [])
        history.points.append((moment, float(row["combined"])))
    return sorted(by_topic.values(), key=lambda h: h.topic_name)


async def topics() -> list[dict[str, Any]]:
    """Every topic (id, name, hot threshold), by name: the hot-leads filter's choices."""
    return await Topic.select(Topic.id, Topic.name, Topic.hot_threshold).order_by(Topic.name)


__all__ = ["LeadFilter", "Ranking", "RankedLead", "Reason", "TopicHistory", "TopicScore", "last_activity",
           "lead_scores", "ranked_leads", "reasons", "score_history", "topics"]
