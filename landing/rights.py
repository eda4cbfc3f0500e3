"""The lead's rights: topic preferences, an export of its data, and erasure."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from content.delivery import email_hash
from content.tables import (
    Delivery,
    DownloadLink,
    Enrollment,
    EnrollmentStatus,
    Notice,
    NoticeStatus,
    Suppression,
    SuppressionReason,
)
from landing.tables import Consent, Conversion, Event, Lead, Topic, TopicPreference, Visitor
from scoring.tables import Score, ScoreHistory


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in rows]


async def export_lead(lead_id: int) -> dict[str, Any] | None:
    """Everything held about a lead, as plain JSON-ready data (None if there is no such lead)."""
    lead = await Lead.select(
        Lead.id, Lead.email, Lead.first_name, Lead.last_name, Lead.company, Lead.role, Lead.timezone, Lead.source,
        Lead.first_touch, Lead.last_touch, Lead.attributes, Lead.stage, Lead.confirmed, Lead.created_at,
        Lead.updated_at, Lead.erased_at,
    ).where(Lead.id == lead_id).first()
    if lead is None:
        return None
    enrollments = await Enrollment.select(
        Enrollment.id, Enrollment.chain.name.as_alias("chain"), Enrollment.group, Enrollment.status,
        Enrollment.enrolled_at, Enrollment.exit_reason,
    ).where(Enrollment.lead == lead_id)
    return {
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "lead": {k: _plain(v) for k, v in lead.items()},
        "consents": _rows(await Consent.select(
            Consent.text, Consent.version, Consent.page_url, Consent.ip, Consent.user_agent, Consent.given_at
        ).where(Consent.lead == lead_id).order_by(Consent.given_at)),
        "events": _rows(await Event.select(
            Event.type, Event.topic.name.as_alias("topic"), Event.properties, Event.occurred_at
        ).where(Event.lead == lead_id).order_by(Event.occurred_at)),
        "visitors": _rows(await Visitor.select(
            Visitor.cookie_id, Visitor.user_agent, Visitor.first_seen_at, Visitor.last_seen_at
        ).where(Visitor.lead == lead_id)),
        "topic_preferences": _rows(await TopicPreference.select(
            TopicPreference.topic.name.as_alias("topic"), TopicPreference.subscribed, TopicPreference.updated_at
        ).where(TopicPreference.lead == lead_id)),
        "enrollments": _rows(enrollments),
        "letters": _rows(await Delivery.select(
            Delivery.subject, Delivery.to_address, Delivery.status, Delivery.sent_at, Delivery.opened_at,
            Delivery.clicked_at,
        ).where(Delivery.enrollment.is_in([e["id"] for e in enrollments] or [-1])))
        + _rows(await Notice.select(Notice.subject, Notice.to_address, Notice.status, Notice.sent_at).where(
            Notice.lead == lead_id)),
        "scores": _rows(await Score.select(
            Score.topic.name.as_alias("topic"), Score.combined, Score.hot, Score.rule_points, Score.model_probability,
            Score.explanation, Score.computed_at,
        ).where(Score.lead == lead_id)),
        "conversions": _rows(await Conversion.select(Conversion.kind, Conversion.value, Conversion.occurred_at).where(
            Conversion.lead == lead_id)),
    }


async def erase_lead(lead_id: int, detail: str = "erased on request") -> bool:
    """Remove a lead's personal data, keep the row for counts (stage, source, dates, event
    types), and suppress its address by hash so it is neither mailed nor re-imported.

    Returns False if there was nothing to erase (no such lead, or erased before).
    """
    now = datetime.now(timezone.utc)
    async with Lead._meta.db.transaction():
        lead = await Lead.select(Lead.email, Lead.erased_at).where(Lead.id == lead_id).first()
        if lead is None or lead["erased_at"] is not None:
            return False
        if lead["email"]:
            # Erased outranks an earlier unsubscribe or bounce: it also keeps imports out.
            await Suppression.insert(
                Suppression(email_hash=email_hash(lead["email"]), reason=SuppressionReason.erased, detail=detail[:500])
            ).on_conflict(target=Suppression.email_hash, action="DO UPDATE",
                          values=[Suppression.reason, Suppression.detail])
        await Lead.update({
            Lead.email: None, Lead.external_id: None, Lead.first_name: "", Lead.last_name: "", Lead.company: "",
            Lead.role: "", Lead.timezone: "", Lead.first_touch: {}, Lead.last_touch: {}, Lead.attributes: {},
            Lead.erased_at: now,
        }).where(Lead.id == lead_id)
        # The cookie would join a returning browser to the erased row: the visitor goes.
        await Visitor.delete().where(Visitor.lead == lead_id)
        await Event.update({Event.properties: {}}).where(Event.lead == lead_id)
        await Consent.update({Consent.ip: "", Consent.user_agent: ""}).where(Consent.lead == lead_id)
        enrollment_ids = [e["id"] for e in await Enrollment.select(Enrollment.id).where(Enrollment.lead == lead_id)]
        await Enrollment.update(
            {Enrollment.status: EnrollmentStatus.exited, Enrollment.exit_reason: "erased", Enrollment.due_at: None}
        ).where((Enrollment.lead == lead_id) & (Enrollment.status == EnrollmentStatus.active))
        if enrollment_ids:
            # SMTP replies often quote the address ("550 <ann@…>: no such user").
            await Delivery.update({Delivery.to_address: "", Delivery.subject: "", Delivery.smtp_reply: ""}).where(
                Delivery.enrollment.is_in(enrollment_ids))
        await Notice.update({Notice.status: NoticeStatus.skipped}).where(
            (Notice.lead == lead_id) & Notice.status.is_in([NoticeStatus.pending, NoticeStatus.failed]))
        await Notice.update({Notice.to_address: "", Notice.subject: "", Notice.payload: {}, Notice.smtp_reply: ""}).where(
            Notice.lead == lead_id)
        await DownloadLink.delete().where(DownloadLink.lead == lead_id)
        await TopicPreference.delete().where(TopicPreference.lead == lead_id)
        await Score.delete().where(Score.lead == lead_id)
        await ScoreHistory.delete().where(ScoreHistory.lead == lead_id)
        await Event.insert(Event(type="erased", lead=lead_id, occurred_at=now))
    return True


async def topic_choices(lead_id: int) -> list[dict[str, Any]]:
    """Every topic with whether the lead gets its letters (yes unless it said no)."""
    topics = await Topic.select(Topic.id, Topic.name).order_by(Topic.name)
    choices = {
        row["topic"]: row["subscribed"]
        for row in await TopicPreference.select(TopicPreference.topic, TopicPreference.subscribed).where(
            TopicPreference.lead == lead_id)
    }
    return [{"id": t["id"], "name": t["name"], "subscribed": choices.get(t["id"], True)} for t in topics]


async def set_topic_preferences(lead_id: int, subscribed_topic_ids: set[int]) -> list[int]:
    """Record the lead's choice for every topic; chains of topics it left stop at once.
    Returns the topics it left."""
    from content.tables import Chain

    now = datetime.now(timezone.utc)
    topics = [t["id"] for t in await Topic.select(Topic.id)]
    left = [t for t in topics if t not in subscribed_topic_ids]
    async with Lead._meta.db.transaction():
        for topic_id in topics:
            await TopicPreference.insert(
                TopicPreference(lead=lead_id, topic=topic_id, subscribed=topic_id in subscribed_topic_ids, updated_at=now)
            ).on_conflict(
                target=(TopicPreference.lead, TopicPreference.topic), action="DO UPDATE",
                values=[TopicPreference.subscribed, TopicPreference.updated_at],
            )
        if left:
            chains = [c["id"] for c in await Chain.select(Chain.id).where(Chain.topic.is_in(left))]
            if chains:
                await Enrollment.update(
                    {Enrollment.status: EnrollmentStatus.exited, Enrollment.exit_reason: "left the topic",
                     Enrollment.due_at: None}
                ).where((Enrollment.lead == lead_id) & Enrollment.chain.is_in(chains)
                        & (Enrollment.status == EnrollmentStatus.active))
    return left
