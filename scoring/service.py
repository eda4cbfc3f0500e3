"""Rescoring a lead: rule points per topic from its events, written as scores and history."""

from __future__ import annotations

from datetime import datetime, timezone

from landing.tables import Event, Topic
from scoring.rules import Rule, ScoredEvent, combine, explain, rule_points
from scoring.tables import Score, ScoreHistory, ScoringRule

DEFAULT_HOT_THRESHOLD = 60


async def load_rules() -> list[Rule]:
    rows = await ScoringRule.select().where(ScoringRule.active == True).output(load_json=True)  # noqa: E712
    return [
        Rule(
            id=r["id"],
            name=r["name"],
            event_type=r["event_type"],
            points=r["points"],
            topic_id=r["topic"],
            property_match=r["property_match"] or {},
            daily_cap=r["daily_cap"],
            half_life_days=r["half_life_days"],
        )
        for r in rows
    ]


async def rescore_lead(lead_id: int, now: datetime | None = None) -> dict[int, float]:
    """Recompute and store every topic score of one lead; returns combined score by topic."""
    now = now or datetime.now(timezone.utc)
    rules = await load_rules()
    topic_ids = [t["id"] for t in await Topic.select(Topic.id)]
    event_rows = (
        await Event.select(Event.type, Event.occurred_at, Event.topic, Event.properties)
        .where(Event.lead == lead_id)
        .output(load_json=True)
    )
    events = [ScoredEvent(r["type"], r["occurred_at"], r["topic"], r["properties"] or {}) for r in event_rows]
    by_topic = rule_points(rules, events, topic_ids, now)
    combined_by_topic = {}
    async with Score._meta.db.transaction():
        for topic_id, contributions in by_topic.items():
            points = sum(c.points for c in contributions)
            combined = combine(points)
            combined_by_topic[topic_id] = combined
            values = {
                Score.rule_points: points,
                Score.combined: combined,
                Score.hot: combined >= DEFAULT_HOT_THRESHOLD,
                Score.explanation: explain(contributions),
                Score.model_version: "rules",
                Score.computed_at: now,
            }
            await Score.insert(
                Score(lead=lead_id, topic=topic_id, rule_points=points, combined=combined,
                      hot=combined >= DEFAULT_HOT_THRESHOLD, explanation=explain(contributions),
                      model_version="rules", computed_at=now)
            ).on_conflict(target=(Score.lead, Score.topic), action="DO UPDATE", values=list(values))
            await ScoreHistory.insert(ScoreHistory(lead=lead_id, topic=topic_id, combined=combined, computed_at=now))
    return combined_by_topic
