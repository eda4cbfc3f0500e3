"""Capturing a lead from a landing page: one transaction for lead, consent, events and enrollment."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from content.chains import EnrollmentDue, enroll
from content.delivery import lift_suppression
from content.ebooks import new_download_link
from content.letters import markdown_to_html
from content.notices import queue_notice
from content.tables import Ebook, LandingPage, NoticeKind
from landing.forms import CaptureForm
from landing.pageviews import PageView
from landing.tables import Consent, Event, Lead, Topic, Visitor


def new_cookie_id() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class CaptureResult:
    """What the capture wrote, and what to queue once it has committed."""

    lead_id: int
    created: bool
    due: EnrollmentDue | None
    notice_id: int | None
    download_token: str | None
    """Set when the ebook may be downloaded at once (no double opt-in pending)."""
    confirm_needed: bool


@dataclass(frozen=True)
class KnownLead:
    """The lead behind a returning visitor's cookie: what progressive profiling needs."""

    id: int
    email: str
    fields: dict[str, str]


@dataclass(frozen=True)
class PageBundle:
    """A published page with what rendering it needs, cached for a few seconds."""

    page: LandingPage
    ebook: Ebook
    topic: Topic
    body_html: str
    bullets: list[str]


PAGE_CACHE_SECONDS = 5.0
_page_cache: dict[str, tuple[float, PageBundle | None]] = {}


def forget_pages() -> None:
    """Drop cached pages (tests, and after an edit that must show at once)."""
    _page_cache.clear()


async def page_by_slug(slug: str) -> PageBundle | None:
    """A published page with its ebook and topic, or None; edits show within a few seconds."""
    now = time.monotonic()
    cached = _page_cache.get(slug)
    if cached is not None and cached[0] > now:
        return cached[1]
    page = await LandingPage.objects().where((LandingPage.slug == slug) & (LandingPage.published == True)).first()  # noqa: E712
    bundle = None
    if page is not None:
        ebook = await Ebook.objects().get(Ebook.id == page.ebook)
        topic = await Topic.objects().get(Topic.id == ebook.topic)
        bullets = [b.strip() for b in page.bullets.splitlines() if b.strip()]
        bundle = PageBundle(page, ebook, topic, markdown_to_html(page.body_markdown), bullets)
    if len(_page_cache) > 1000:  # unknown slugs from scanners must not grow it without end
        _page_cache.clear()
    _page_cache[slug] = (now + PAGE_CACHE_SECONDS, bundle)
    return bundle


async def _visitor(cookie_id: str, user_agent: str, now: datetime) -> int:
    rows = (
        await Visitor.insert(Visitor(cookie_id=cookie_id, user_agent=user_agent[:500], first_seen_at=now, last_seen_at=now))
        .on_conflict(target=Visitor.cookie_id, action="DO UPDATE", values=[(Visitor.last_seen_at, now)])
        .returning(Visitor.id)
    )
    return rows[0]["id"]


async def known_lead(cookie_id: str) -> KnownLead | None:
    """The lead a visitor cookie belongs to, if it gave its email before (and was not erased)."""
    row = await Visitor.select(
        Visitor.lead.id, Visitor.lead.email, Visitor.lead.first_name, Visitor.lead.last_name, Visitor.lead.company,
        Visitor.lead.role, Visitor.lead.erased_at,
    ).where(Visitor.cookie_id == cookie_id).first()
    if row is None or row["lead.id"] is None or not row["lead.email"] or row["lead.erased_at"] is not None:
        return None
    fields = {name: row[f"lead.{name}"] or "" for name in ("first_name", "last_name", "company", "role")}
    return KnownLead(row["lead.id"], row["lead.email"], fields)


async def write_page_views(views: list[PageView]) -> set[int]:
    """Write a batch of page views in one transaction; returns the known leads among them."""
    latest: dict[str, PageView] = {}
    first_seen: dict[str, datetime] = {}
    for view in views:
        latest[view.cookie_id] = view
        first_seen.setdefault(view.cookie_id, view.occurred_at)
    async with Event._meta.db.transaction():
        # One row per cookie in the upsert: PostgreSQL refuses to update a row twice in one statement.
        await Visitor.insert(*[
            Visitor(cookie_id=cookie, user_agent=view.user_agent[:500], first_seen_at=first_seen[cookie],
                    last_seen_at=view.occurred_at)
            for cookie, view in latest.items()
        ]).on_conflict(target=Visitor.cookie_id, action="DO UPDATE", values=[Visitor.last_seen_at])
        visitors = {
            row["cookie_id"]: row
            for row in await Visitor.select(Visitor.id, Visitor.cookie_id, Visitor.lead).where(
                Visitor.cookie_id.is_in(list(latest)))
        }
        await Event.insert(*[
            Event(type="page_view", visitor=visitors[view.cookie_id]["id"], lead=visitors[view.cookie_id]["lead"],
                  topic=view.topic_id, properties={"page": view.page_slug} | view.properties,
                  occurred_at=view.occurred_at)
            for view in views
        ])
    return {row["lead"] for row in visitors.values() if row["lead"] is not None}


TOUCH_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "referrer")


async def _first_touch(visitor_id: int, fallback: dict[str, str]) -> dict[str, str]:
    """The visitor's first recorded touch (its first page view's UTM and referrer)."""
    first = await Event.select(Event.properties).where(
        (Event.visitor == visitor_id) & (Event.type == "page_view")
    ).order_by(Event.occurred_at).first()
    if first is None:
        return fallback
    properties = first["properties"]
    if isinstance(properties, str):
        properties = json.loads(properties)
    return {k: str(v) for k, v in properties.items() if k in TOUCH_KEYS} or fallback


async def capture(
    bundle: PageBundle,
    form: CaptureForm,
    cookie_id: str,
    ip: str,
    user_agent: str,
    touch: dict[str, str],
    known: KnownLead | None = None,
) -> CaptureResult:
    """Write the lead, its consent and events, and what follows (download link and letter,
    or the confirmation letter; the enrollment), all or nothing.

    `known` is the returning visitor's lead when the form asked for no email.
    """
    page, ebook, topic = bundle.page, bundle.ebook, bundle.topic
    now = datetime.now(timezone.utc)
    async with Lead._meta.db.transaction():
        visitor_id = await _visitor(cookie_id, user_agent, now)
        created = False
        if form.email:
            # Insert-or-nothing first: two submissions of a new address at once make one lead.
            first_touch = await _first_touch(visitor_id, touch)
            inserted = (
                await Lead.insert(
                    Lead(email=form.email, source=first_touch.get("utm_source") or "landing", first_touch=first_touch,
                         last_touch=touch, created_at=now, topic=topic.id, **form.fields)
                )
                .on_conflict(target=Lead.email, action="DO NOTHING")
                .returning(Lead.id, Lead.confirmed)
            )
            created = bool(inserted)
            row = inserted[0] if inserted else await Lead.select(Lead.id, Lead.confirmed).where(Lead.email == form.email).first()
        else:
            assert known is not None, "a capture without an email needs the returning visitor's lead"
            row = await Lead.select(Lead.id, Lead.confirmed).where(Lead.id == known.id).first()
        lead_id, confirmed = row["id"], row["confirmed"]
        if not created:
            updates = {getattr(Lead, k): v for k, v in form.fields.items() if v}
            updates[Lead.last_touch] = touch
            await Lead.update(updates).where(Lead.id == lead_id)
        await Visitor.update({Visitor.lead: lead_id}).where(Visitor.id == visitor_id)
        # The visitor's anonymous history now belongs to the lead.
        await Event.update({Event.lead: lead_id}).where((Event.visitor == visitor_id) & (Event.lead.is_null()))
        consent = await Consent.insert(
            Consent(lead=lead_id, page_url=f"/l/{page.slug}", text=page.consent_text, version=page.consent_version,
                    ip=ip[:45], user_agent=user_agent[:500], given_at=now)
        ).returning(Consent.id)
        consent_id = consent[0]["id"]
        await Event.insert(
            Event(type="form_submit", visitor=visitor_id, lead=lead_id, topic=topic.id,
                  properties={"page": page.slug, "ebook": ebook.slug} | touch, occurred_at=now),
        )
        confirm_needed = page.double_opt_in and not confirmed
        due = None
        download_token = None
        if confirm_needed:
            notice_id = await queue_notice(lead_id, NoticeKind.confirm, f"confirm:{consent_id}",
                                           {"page": page.id, "title": ebook.title}, now)
        else:
            download_token = await new_download_link(lead_id, ebook.id, now)
            notice_id = await queue_notice(lead_id, NoticeKind.ebook, f"ebook:{consent_id}",
                                           {"token": download_token, "title": ebook.title}, now)
            due = await enroll(lead_id, topic.id, now)
    return CaptureResult(lead_id=lead_id, created=created, due=due, notice_id=notice_id,
                         download_token=download_token, confirm_needed=confirm_needed)


@dataclass(frozen=True)
class Confirmation:
    """A confirmed opt-in: the download to offer and what to queue."""

    lead_id: int
    download_token: str
    due: EnrollmentDue | None
    already: bool


async def confirm(lead_id: int, page_id: int) -> Confirmation | None:
    """Confirm a double opt-in: the lead is confirmed, a download link made and the chain
    joined; a second confirmation only makes a fresh link. None if the lead is gone."""
    now = datetime.now(timezone.utc)
    page = await LandingPage.objects().where(LandingPage.id == page_id).first()
    async with Lead._meta.db.transaction():
        lead = await Lead.select(Lead.id, Lead.email, Lead.confirmed, Lead.erased_at).where(Lead.id == lead_id).first()
        if lead is None or page is None or not lead["email"] or lead["erased_at"] is not None:
            return None
        ebook = await Ebook.objects().get(Ebook.id == page.ebook)
        already = lead["confirmed"]
        due = None
        if not already:
            await Lead.update({Lead.confirmed: True}).where(Lead.id == lead_id)
            await Event.insert(Event(type="confirmed", lead=lead_id, topic=ebook.topic,
                                     properties={"page": page.slug}, occurred_at=now))
            # The person confirmed their own address: an earlier unsubscribe or erasure no
            # longer stands (bounces and complaints do).
            await lift_suppression(lead["email"])
            due = await enroll(lead_id, ebook.topic, now)
        token = await new_download_link(lead_id, ebook.id, now)
    return Confirmation(lead_id, token, due, already)


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
