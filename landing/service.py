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
from content.ebooks import LINK_LIFETIME, new_download_link
from content.letters import markdown_to_html
from content.notices import queue_notice
from content.tables import Ebook, LandingPage, NoticeKind
from landing.forms import CaptureForm
from landing.outcomes import OUTCOME_STAGES, stamp_outcome_on_save  # noqa: F401  (moved; importable from here too)
from landing.pageviews import PageView
from landing.tables import Consent, Event, Lead, Topic, Visitor
from landing.tokens import sign


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


PAGE_VIEW_CHUNK = 500
"""Views per statement: far under SQLite's limit on parameters."""


async def write_page_views(views: list[PageView]) -> set[int]:
    """Write a batch of page views in one transaction, two statements a chunk (raw SQL both
    databases speak: building ORM rows cost more than the database's work); returns the
    known leads among the visitors."""
    if Event._meta.db.engine_type == "postgres":
        return await _write_page_views_postgres(views)
    leads: set[int] = set()
    async with Event._meta.db.transaction():
        for start in range(0, len(views), PAGE_VIEW_CHUNK):
            leads |= await _write_page_view_chunk(views[start:start + PAGE_VIEW_CHUNK])
    return leads


async def _fetch_postgres(query: str, *args: Any) -> list[Any]:
    """One statement straight through asyncpg, with `$n` placeholders: the statements on the
    landing page's hot path are prepared once per connection and run in one round trip."""
    engine = Lead._meta.db
    if engine.pool is not None:
        async with engine.pool.acquire() as connection:
            return await connection.fetch(query, *args)
    connection = await engine.get_new_connection()
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


# One prepared statement whatever the batch's size (arrays, not a VALUES list per size):
# PostgreSQL plans it once, and asyncpg encodes arrays far faster than a long argument list.
_PAGE_VIEWS_PG = """
WITH v AS (
  INSERT INTO visitor (cookie_id, lead, user_agent, first_seen_at, last_seen_at)
  SELECT cookie, NULL, agent, first_at, last_at
  FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) AS u(cookie, agent, first_at, last_at)
  ON CONFLICT (cookie_id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at
  RETURNING id, cookie_id, lead),
e AS (
  INSERT INTO event (type, visitor, lead, topic, properties, occurred_at)
  SELECT 'page_view', v.id, v.lead, x.topic, x.properties::json, x.at
  FROM unnest($5::text[], $6::int[], $7::text[], $8::timestamptz[]) AS x(cookie, topic, properties, at)
  JOIN v ON v.cookie_id = x.cookie)
SELECT DISTINCT lead FROM v WHERE lead IS NOT NULL"""


def _per_visitor(views: list[PageView]) -> tuple[dict[str, PageView], dict[str, datetime]]:
    """Each cookie's latest view and first time in the batch: one visitor row per cookie
    (PostgreSQL refuses to update a row twice in one statement)."""
    latest: dict[str, PageView] = {}
    first_seen: dict[str, datetime] = {}
    for view in views:
        latest[view.cookie_id] = view
        first_seen.setdefault(view.cookie_id, view.occurred_at)
    return latest, first_seen


async def _write_page_views_postgres(views: list[PageView]) -> set[int]:
    latest, first_seen = _per_visitor(views)
    cookies = list(latest)
    args = [
        cookies, [latest[c].user_agent[:500] for c in cookies], [first_seen[c] for c in cookies],
        [latest[c].occurred_at for c in cookies],
        [v.cookie_id for v in views], [v.topic_id for v in views],
        [json.dumps({"page": v.page_slug} | v.properties) for v in views], [v.occurred_at for v in views],
    ]
    return {row["lead"] for row in await _fetch_postgres(_PAGE_VIEWS_PG, *args)}


async def _write_page_view_chunk(views: list[PageView]) -> set[int]:
    latest, first_seen = _per_visitor(views)
    args: list[Any] = []
    for cookie, view in latest.items():
        args += [cookie, view.user_agent[:500], first_seen[cookie], view.occurred_at]
    visitors = await Visitor.raw(
        "INSERT INTO visitor (cookie_id, lead, user_agent, first_seen_at, last_seen_at) VALUES "
        + ", ".join(["({}, NULL, {}, {}, {})"] * len(latest))
        + " ON CONFLICT (cookie_id) DO UPDATE SET last_seen_at = excluded.last_seen_at RETURNING id, cookie_id, lead",
        *args,
    )
    by_cookie = {row["cookie_id"]: row for row in visitors}
    args = []
    for view in views:
        visitor = by_cookie[view.cookie_id]
        args += [visitor["id"], visitor["lead"], view.topic_id, json.dumps({"page": view.page_slug} | view.properties),
                 view.occurred_at]
    await Event.raw(
        "INSERT INTO event (type, visitor, lead, topic, properties, occurred_at) VALUES "
        + ", ".join(["('page_view', {}, {}, {}, {}, {})"] * len(views)),
        *args,
    )
    return {row["lead"] for row in visitors if row["lead"] is not None}


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
    return {k: str(v) for k, v in properties.items() if k in TOUCH_KEYS and v not in (None, "")} or fallback


_UPSERT_VISITOR = (
    "INSERT INTO visitor (cookie_id, lead, user_agent, first_seen_at, last_seen_at) VALUES ({}, NULL, {}, {}, {}) "
    "ON CONFLICT (cookie_id) DO UPDATE SET last_seen_at = excluded.last_seen_at RETURNING id, lead, first_seen_at"
)
# One statement makes or finds the lead: a new address inserts it; a known one only gains the
# fields it had left empty (anyone can type someone else's address: they must not rename
# that lead) and takes this visit as its last touch.
_UPSERT_LEAD = (
    "INSERT INTO lead (email, external_id, first_name, last_name, company, role, timezone, source, first_touch, "
    "last_touch, attributes, stage, owner, topic, outcome_at, historical, confirmed, erased_at, created_at, updated_at) "
    "VALUES ({}, NULL, {}, {}, {}, {}, '', {}, {}, {}, {}, 'new', NULL, {}, NULL, FALSE, FALSE, NULL, {}, {}) "
    "ON CONFLICT (email) DO UPDATE SET "
    + ", ".join(f"{f} = CASE WHEN lead.{f} = '' THEN excluded.{f} ELSE lead.{f} END"
                for f in ("first_name", "last_name", "company", "role"))
    + ", last_touch = excluded.last_touch, updated_at = excluded.updated_at RETURNING id, confirmed, created_at"
)
_UPDATE_KNOWN_LEAD = (
    "UPDATE lead SET "
    + ", ".join(f"{f} = CASE WHEN {{}} <> '' THEN {{}} ELSE {f} END" for f in ("first_name", "last_name", "company", "role"))
    + ", last_touch = {}, updated_at = {} WHERE id = {} RETURNING id, confirmed, created_at"
)
_INSERT_EVENT = "INSERT INTO event (type, visitor, lead, topic, properties, occurred_at) VALUES ({}, {}, {}, {}, {}, {})"


_TOUCH_SQL = ", ".join(f"'{k}'" for k in TOUCH_KEYS)
_FIELDS = ("first_name", "last_name", "company", "role")
_LEAD_UPSERT_PG = f"""
  INSERT INTO lead (email, external_id, first_name, last_name, company, role, timezone, source, first_touch, last_touch,
                    attributes, stage, owner, topic, outcome_at, historical, confirmed, erased_at, created_at, updated_at)
  SELECT $4, NULL, $5, $6, $7, $8, '', LEFT(COALESCE(NULLIF(ft.touch->>'utm_source', ''), 'landing'), 100), ft.touch, $9::json, '{{}}'::json,
         'new', NULL, $10, NULL, FALSE, FALSE, NULL, $3, $3
  FROM (SELECT COALESCE(
          (SELECT json_object_agg(key, value) FROM json_each((
             SELECT e.properties FROM event e JOIN visitor vv ON vv.id = e.visitor
             WHERE vv.cookie_id = $1 AND e.type = 'page_view' ORDER BY e.occurred_at LIMIT 1))
           WHERE key IN ({_TOUCH_SQL})),
          $9::json) AS touch) ft
  WHERE $22::int IS NULL
  ON CONFLICT (email) DO UPDATE SET
    {", ".join(f"{f} = CASE WHEN lead.{f} = '' THEN EXCLUDED.{f} ELSE lead.{f} END" for f in _FIELDS)},
    last_touch = EXCLUDED.last_touch, updated_at = EXCLUDED.updated_at
  RETURNING id, confirmed, created_at"""
_LEAD_KNOWN_PG = f"""
  UPDATE lead SET {", ".join(f"{f} = CASE WHEN ${n} <> '' THEN ${n} ELSE {f} END" for n, f in enumerate(_FIELDS, start=5))},
    last_touch = $9::json, updated_at = $3
  WHERE id = $22 AND $4::text IS NULL
  RETURNING id, confirmed, created_at"""
# The whole capture in one statement (PostgreSQL runs data-modifying CTEs in one snapshot and
# one implicit transaction): one round trip instead of a dozen. The chain's group and variant
# are the same stable buckets as content.chains.bucket (the first four bytes of a SHA-256).
_CAPTURE_PG = """
WITH l AS ({lead}),
v AS (
  INSERT INTO visitor (cookie_id, lead, user_agent, first_seen_at, last_seen_at)
  SELECT $1, l.id, $2, $3, $3 FROM l
  ON CONFLICT (cookie_id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at, lead = EXCLUDED.lead
  RETURNING id),
history AS (
  UPDATE event SET lead = l.id FROM l
  WHERE event.visitor = (SELECT id FROM visitor WHERE cookie_id = $1) AND event.lead IS NULL),
c AS (
  INSERT INTO consent (lead, page_url, text, version, ip, user_agent, given_at)
  SELECT l.id, $11, $12, $13, $14, $2, $3 FROM l RETURNING id),
f AS (
  INSERT INTO event (type, visitor, lead, topic, properties, occurred_at)
  SELECT 'form_submit', (SELECT id FROM v), l.id, $10, $15::json, $3 FROM l),
need AS (SELECT l.id, ($16::boolean AND NOT l.confirmed) AS confirm FROM l),
d AS (
  INSERT INTO download_link (nonce, lead, ebook, created_at, expires_at, downloads, last_download_at)
  SELECT $17, need.id, $18, $3, $19, 0, NULL FROM need WHERE NOT need.confirm),
n AS (
  INSERT INTO notice (lead, kind, dedupe_key, status, payload, to_address, subject, message_id, smtp_reply, attempts,
                      created_at, next_attempt_at, sent_at)
  SELECT need.id, CASE WHEN need.confirm THEN 'confirm' ELSE 'ebook' END, $20, 'pending',
         CASE WHEN need.confirm THEN $21::json ELSE $23::json END, '', '', '', '', 0, $3, $3, NULL FROM need
  ON CONFLICT (dedupe_key) DO NOTHING RETURNING id),
left_topic AS (
  SELECT 1 FROM need, topic_preference p WHERE p.lead = need.id AND p.topic = $10 AND p.subscribed = FALSE),
ch AS (
  SELECT c.id AS chain, LEAST(GREATEST(c.holdout_percent, 0), 100) AS holdout, s.position, s.delay_minutes, need.id AS lead,
         CASE WHEN c.topic = $10 THEN 'download' ELSE 'fallback' END AS reason
  FROM need, chain c JOIN step s ON s.chain = c.id
  WHERE NOT need.confirm AND (c.topic = $10 OR c.is_fallback) AND c.status = 'active'
    AND (c.starts_at IS NULL OR c.starts_at <= $3) AND NOT EXISTS (SELECT 1 FROM left_topic)
  ORDER BY CASE WHEN c.topic = $10 THEN 0 ELSE 1 END, c.id DESC, s.position LIMIT 1),
w AS (
  INSERT INTO chain_wait (lead, topic, since)
  SELECT need.id, $10, $3 FROM need
  WHERE NOT need.confirm AND NOT EXISTS (SELECT 1 FROM ch) AND NOT EXISTS (SELECT 1 FROM left_topic)
  ON CONFLICT DO NOTHING),
g AS (
  SELECT ch.*,
    ('x' || encode(substring(sha256(convert_to('group:' || ch.chain || ':' || ch.lead, 'UTF8')) from 1 for 4), 'hex'))::bit(32)::bigint % 100 AS group_bucket,
    ('x' || encode(substring(sha256(convert_to('variant:' || ch.chain || ':' || ch.lead, 'UTF8')) from 1 for 4), 'hex'))::bit(32)::bigint % 100 AS variant_bucket
  FROM ch),
en AS (
  INSERT INTO enrollment (lead, chain, "group", variant, status, next_position, due_at, exit_reason, reason, enrolled_at)
  SELECT lead, chain, CASE WHEN group_bucket < holdout THEN 'control' ELSE 'treatment' END,
         CASE WHEN variant_bucket < 50 THEN 'A' ELSE 'B' END, 'active', position,
         CASE WHEN group_bucket < holdout THEN NULL ELSE $3 + delay_minutes * interval '1 minute' END, '', reason, $3
  FROM g ON CONFLICT DO NOTHING RETURNING id, next_position, due_at)
SELECT l.id, l.confirmed, l.created_at, need.confirm,
       (SELECT id FROM n) AS notice, (SELECT id FROM en) AS enrollment,
       (SELECT next_position FROM en) AS position, (SELECT due_at FROM en) AS due_at
FROM l, need"""
_CAPTURE_PG_NEW = _CAPTURE_PG.format(lead=_LEAD_UPSERT_PG)
_CAPTURE_PG_KNOWN = _CAPTURE_PG.format(lead=_LEAD_KNOWN_PG)


async def _capture_postgres(bundle: PageBundle, form: CaptureForm, cookie_id: str, ip: str, user_agent: str,
                            touch: dict[str, str], known: KnownLead | None, now: datetime) -> CaptureResult:
    page, ebook, topic = bundle.page, bundle.ebook, bundle.topic
    nonce = secrets.token_hex(12)
    download_token = sign("download", nonce)
    args = [
        cookie_id, user_agent[:500], now, form.email or None, *[form.fields.get(f, "") for f in _FIELDS],
        json.dumps(touch), topic.id, f"/l/{page.slug}", page.consent_text, page.consent_version, ip[:45],
        json.dumps({"page": page.slug, "ebook": ebook.slug} | touch), page.double_opt_in, nonce, ebook.id, now + LINK_LIFETIME,
        f"capture:{nonce}", json.dumps({"page": page.id, "title": ebook.title}),
    ]
    query = _CAPTURE_PG_NEW
    if not form.email:
        assert known is not None, "a capture without an email needs the returning visitor's lead"
        query = _CAPTURE_PG_KNOWN
    args += [known.id if known and not form.email else None, json.dumps({"token": download_token, "title": ebook.title})]
    row = (await _fetch_postgres(query, *args))[0]
    due = None
    if row["enrollment"] is not None and row["due_at"] is not None:
        due = EnrollmentDue(row["enrollment"], row["position"], row["due_at"])
    return CaptureResult(lead_id=row["id"], created=row["created_at"] == now, due=due, notice_id=row["notice"],
                         download_token=None if row["confirm"] else download_token, confirm_needed=row["confirm"])


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

    `known` is the returning visitor's lead when the form asked for no email. Raw SQL that
    both databases speak, one statement per row written: this is the landing page's hot path.
    """
    now = datetime.now(timezone.utc)
    if Lead._meta.db.engine_type == "postgres":
        return await _capture_postgres(bundle, form, cookie_id, ip, user_agent, touch, known, now)
    page, ebook, topic = bundle.page, bundle.ebook, bundle.topic
    fields = [form.fields.get(f, "") for f in _FIELDS]
    touch_json = json.dumps(touch)
    async with Lead._meta.db.transaction():
        visitor = (await Visitor.raw(_UPSERT_VISITOR, cookie_id, user_agent[:500], now, now))[0]
        # A visitor first seen just now has no history to join and no earlier touch.
        fresh_visitor = _same_instant(visitor["first_seen_at"], now)
        if form.email:
            first_touch = touch if fresh_visitor else await _first_touch(visitor["id"], touch)
            row = (await Lead.raw(
                _UPSERT_LEAD, form.email, *fields, (first_touch.get("utm_source") or "landing")[:100], json.dumps(first_touch),
                touch_json, "{}", topic.id, now, now,
            ))[0]
        else:
            assert known is not None, "a capture without an email needs the returning visitor's lead"
            row = (await Lead.raw(_UPDATE_KNOWN_LEAD, *[v for f in fields for v in (f, f)], touch_json, now, known.id))[0]
        lead_id, confirmed = row["id"], bool(row["confirmed"])
        created = _same_instant(row["created_at"], now)
        if visitor["lead"] != lead_id:
            await Visitor.raw("UPDATE visitor SET lead = {} WHERE id = {}", lead_id, visitor["id"])
            if not fresh_visitor:
                # The visitor's anonymous history now belongs to the lead.
                await Event.raw("UPDATE event SET lead = {} WHERE visitor = {} AND lead IS NULL", lead_id, visitor["id"])
        consent = await Consent.raw(
            "INSERT INTO consent (lead, page_url, text, version, ip, user_agent, given_at) "
            "VALUES ({}, {}, {}, {}, {}, {}, {}) RETURNING id",
            lead_id, f"/l/{page.slug}", page.consent_text, page.consent_version, ip[:45], user_agent[:500], now,
        )
        consent_id = consent[0]["id"]
        await Event.raw(_INSERT_EVENT, "form_submit", visitor["id"], lead_id, topic.id,
                        json.dumps({"page": page.slug, "ebook": ebook.slug} | touch), now)
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


def _same_instant(stored: Any, now: datetime) -> bool:
    """Whether a timestamp read back is the one this statement wrote (SQLite returns text)."""
    if isinstance(stored, str):
        stored = datetime.fromisoformat(stored)
    if stored.tzinfo is None:
        stored = stored.replace(tzinfo=timezone.utc)
    return stored == now


@dataclass(frozen=True)
class Confirmation:
    """A confirmed opt-in: the download to offer and what to queue."""

    lead_id: int
    download_token: str
    due: EnrollmentDue | None
    already: bool


async def confirm(lead_id: int, page_id: int) -> Confirmation | None:
    """Confirm a double opt-in: the lead is confirmed, a download link made and the page's
    chain joined (a repeated confirmation joins nothing twice). None if the lead is gone."""
    now = datetime.now(timezone.utc)
    page = await LandingPage.objects().where(LandingPage.id == page_id).first()
    async with Lead._meta.db.transaction():
        lead = await Lead.select(Lead.id, Lead.email, Lead.confirmed, Lead.erased_at).where(Lead.id == lead_id).first()
        if lead is None or page is None or not lead["email"] or lead["erased_at"] is not None:
            return None
        ebook = await Ebook.objects().get(Ebook.id == page.ebook)
        # Conditional: of two confirmations at once (a double click), one confirms.
        confirmed_now = await Lead.update({Lead.confirmed: True}).where(
            (Lead.id == lead_id) & (Lead.confirmed == False)  # noqa: E712
        ).returning(Lead.id)
        already = not confirmed_now
        if not already:
            await Event.insert(Event(type="confirmed", lead=lead_id, topic=ebook.topic,
                                     properties={"page": page.slug}, occurred_at=now))
            # The person confirmed their own address: an earlier unsubscribe or erasure no
            # longer stands (bounces and complaints do).
            await lift_suppression(lead["email"])
        # Every confirmation enrolls (once per chain): a lead confirming a second page, on
        # another topic, joins that topic's chain too.
        due = await enroll(lead_id, ebook.topic, now)
        token = await new_download_link(lead_id, ebook.id, now)
    return Confirmation(lead_id, token, due, already)
