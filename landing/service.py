"""Capturing a lead from a landing page: one transaction for lead, consent, events and enrollment."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from content.chains import EnrollmentDue, enroll
from content.tables import Ebook, LandingPage
from landing.forms import CaptureForm
from landing.tables import Consent, Event, Lead, Topic, Visitor


def new_cookie_id() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class CaptureResult:
    """What the capture wrote, and what to queue once it has committed."""

    lead_id: int
    created: bool
    due: EnrollmentDue | None


async def page_by_slug(slug: str) -> tuple[LandingPage, Ebook, Topic] | None:
    """A published page with its ebook and topic, or None."""
    page = await LandingPage.objects().where((LandingPage.slug == slug) & (LandingPage.published == True)).first()  # noqa: E712
    if page is None:
        return None
    ebook = await Ebook.objects().get(Ebook.id == page.ebook)
    topic = await Topic.objects().get(Topic.id == ebook.topic)
    return page, ebook, topic


async def _visitor(cookie_id: str, user_agent: str, now: datetime) -> int:
    rows = (
        await Visitor.insert(Visitor(cookie_id=cookie_id, user_agent=user_agent[:500], first_seen_at=now, last_seen_at=now))
        .on_conflict(target=Visitor.cookie_id, action="DO UPDATE", values=[(Visitor.last_seen_at, now)])
        .returning(Visitor.id)
    )
    return rows[0]["id"]


async def record_page_view(cookie_id: str, page: LandingPage, topic_id: int, properties: dict[str, Any],
                           user_agent: str) -> int | None:
    """A page view from a (possibly anonymous) visitor; joins its lead when known, and
    returns that lead's id (its scores should be recomputed once this commits)."""
    now = datetime.now(timezone.utc)
    async with Event._meta.db.transaction():
        visitor_id = await _visitor(cookie_id, user_agent, now)
        visitor = await Visitor.select(Visitor.lead).where(Visitor.id == visitor_id).first()
        await Event.insert(
            Event(type="page_view", visitor=visitor_id, lead=visitor["lead"], topic=topic_id,
                  properties={"page": page.slug} | properties, occurred_at=now)
        )
    return visitor["lead"]


async def capture(
    page: LandingPage,
    ebook: Ebook,
    topic: Topic,
    form: CaptureForm,
    cookie_id: str,
    ip: str,
    user_agent: str,
    touch: dict[str, str],
) -> CaptureResult:
    """Write the lead, its consent and events, and its enrollment, all or nothing."""
    now = datetime.now(timezone.utc)
    async with Lead._meta.db.transaction():
        visitor_id = await _visitor(cookie_id, user_agent, now)
        # Insert-or-nothing first: two submissions of a new address at once make one lead.
        inserted = (
            await Lead.insert(
                Lead(email=form.email, source=touch.get("utm_source") or "landing", first_touch=touch,
                     last_touch=touch, created_at=now, topic=topic.id, **form.fields)
            )
            .on_conflict(target=Lead.email, action="DO NOTHING")
            .returning(Lead.id)
        )
        created = bool(inserted)
        if created:
            lead_id = inserted[0]["id"]
        else:
            lead_id = (await Lead.select(Lead.id).where(Lead.email == form.email).first())["id"]
            updates = {getattr(Lead, k): v for k, v in form.fields.items() if v}
            updates[Lead.last_touch] = touch
            await Lead.update(updates).where(Lead.id == lead_id)
        await Visitor.update({Visitor.lead: lead_id}).where(Visitor.id == visitor_id)
        # The visitor's anonymous history now belongs to the lead.
        await Event.update({Event.lead: lead_id}).where((Event.visitor == visitor_id) & (Event.lead.is_null()))
        await Consent.insert(
            Consent(lead=lead_id, page_url=f"/l/{page.slug}", text=page.consent_text, version=page.consent_version,
                    ip=ip[:45], user_agent=user_agent[:500], given_at=now)
        )
        common = {"page": page.slug, "ebook": ebook.slug}
        await Event.insert(
            Event(type="form_submit", visitor=visitor_id, lead=lead_id, topic=topic.id, properties=common | touch, occurred_at=now),
            Event(type="download", visitor=visitor_id, lead=lead_id, topic=topic.id, properties=common, occurred_at=now),
        )
        due = await enroll(lead_id, topic.id, now)
    return CaptureResult(lead_id=lead_id, created=created, due=due)


OUTCOME_STAGES = ("qualified", "won", "lost")


async def stamp_outcome_on_patch(row_id: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Admin hook: a stage moving to qualified, won or lost records when, because training
    reads the lead as of that moment (never with what happened after)."""
    stage = values.get("stage")
    if stage in OUTCOME_STAGES:
        current = await Lead.select(Lead.stage).where(Lead.id == row_id).first()
        if current is not None and current["stage"] != stage:
            values["outcome_at"] = datetime.now(timezone.utc)
    return values


def stamp_outcome_on_save(row: Lead) -> Lead:
    """Admin hook: a lead created with an outcome stage gets its outcome time."""
    if row.stage in OUTCOME_STAGES and row.outcome_at is None:
        row.outcome_at = datetime.now(timezone.utc)
    return row
