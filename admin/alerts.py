"""When a lead turns hot, tell sales: a letter to the lead's owner (or the sales list) and the CRM webhooks.

Scoring writes a `became_hot` event for each crossing of a topic's threshold. The hand-off
job turns each new one into a HotAlert (the letter's ledger row, unique per event) and one
webhook delivery per endpoint, in one transaction, so running it twice tells nobody twice.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from html import escape
from typing import Any

import aiosmtplib

from admin import webhooks
from admin.tables import AlertStatus, HotAlert, WebhookDelivery, WebhookStatus
from content.letters import RenderedLetter
from content.mail import LETTER_POLICY, DeliveryUncertain, HandOver, Relay, SmtpReplyError, address_of
from landing.tables import Event
from scoring.service import BECAME_HOT
from scoring.tables import Score
from server.settings import get_settings

log = logging.getLogger("leadkiln.alerts")

LEAD_HOT = "lead.hot"
WINDOW = timedelta(days=1)
"""Crossings older than this are not announced: on first start (or after a day's outage) the
old `became_hot` events are history, not news for sales."""
BATCH = 500
MAX_ATTEMPTS = 6
REASONS = 5
ERASED_EVENT = "erased"
"""The event erasure writes (landing.rights): the cheap way to find erased leads."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class HotLead:
    """One crossing into hot, with what sales need to act on it."""

    event_id: int
    lead_id: int
    email: str
    first_name: str
    last_name: str
    company: str
    stage: str
    owner_email: str
    """The owner's address if the lead has an active owner with one, else ""."""
    topic_id: int | None
    topic_name: str
    combined: float
    threshold: float
    reasons: list[dict[str, Any]]
    occurred_at: datetime
    erased: bool

    @property
    def event_key(self) -> str:
        return f"{LEAD_HOT}:{self.event_id}"

    @property
    def name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)


def lead_url(lead_id: int) -> str:
    """The lead's page on the sales desk: timeline, scores and why, stage and owner."""
    return f"{get_settings().public_url}/desk/leads/{lead_id}"


async def load_hot_leads(event_ids: list[int]) -> dict[int, HotLead]:
    """The crossings for these became_hot events, with the lead, its owner, topic and score now."""
    if not event_ids:
        return {}
    rows = await Event.select(
        Event.id, Event.lead, Event.topic, Event.occurred_at, Event.properties,
        Event.lead.email.as_alias("email"), Event.lead.first_name.as_alias("first_name"),
        Event.lead.last_name.as_alias("last_name"), Event.lead.company.as_alias("company"),
        Event.lead.stage.as_alias("stage"), Event.lead.erased_at.as_alias("erased_at"),
        Event.lead.owner.email.as_alias("owner_email"), Event.lead.owner.active.as_alias("owner_active"),
        Event.topic.name.as_alias("topic_name"), Event.topic.hot_threshold.as_alias("threshold"),
    ).where(Event.id.is_in(event_ids) & Event.lead.is_not_null()).output(load_json=True)
    scores = {}
    lead_ids = sorted({row["lead"] for row in rows})
    if lead_ids:
        for score in await Score.select(Score.lead, Score.topic, Score.combined, Score.explanation).where(
                Score.lead.is_in(lead_ids)).output(load_json=True):
            scores[(score["lead"], score["topic"])] = score
    out = {}
    for row in rows:
        score = scores.get((row["lead"], row["topic"])) or {}
        properties = row["properties"] if isinstance(row["properties"], dict) else {}
        combined = score.get("combined", properties.get("combined", 0.0))
        reasons = [{key: factor.get(key) for key in ("factor", "source", "effect", "text")}
                   for factor in (score.get("explanation") or [])[:REASONS] if isinstance(factor, dict)]
        out[row["id"]] = HotLead(
            event_id=row["id"], lead_id=row["lead"], email=row["email"] or "", first_name=row["first_name"] or "",
            last_name=row["last_name"] or "", company=row["company"] or "", stage=row["stage"] or "",
            owner_email=(row["owner_email"] or "") if row["owner_active"] else "",
            topic_id=row["topic"], topic_name=row["topic_name"] or "", combined=round(float(combined or 0.0), 1),
            threshold=float(row["threshold"] or 0.0), reasons=reasons, occurred_at=row["occurred_at"],
            erased=row["erased_at"] is not None,
        )
    return out


def payload_of(hot: HotLead) -> dict[str, Any]:
    """The lead.hot webhook body."""
    return {
        "event": LEAD_HOT,
        "id": hot.event_key,
        "occurred_at": hot.occurred_at.astimezone(timezone.utc).isoformat(),
        "lead": {"id": hot.lead_id, "email": hot.email or None, "first_name": hot.first_name, "last_name": hot.last_name,
                 "company": hot.company, "stage": hot.stage, "owner": hot.owner_email or None,
                 "url": lead_url(hot.lead_id)},
        "topic": {"id": hot.topic_id, "name": hot.topic_name},
        "score": {"combined": hot.combined, "threshold": hot.threshold, "reasons": hot.reasons},
    }


async def record_crossings(now: datetime | None = None, limit: int = BATCH) -> int:
    """Record an alert and the webhook deliveries for each recent crossing not recorded yet.

    One transaction per crossing: the alert row (unique per event) and its deliveries land
    together or not at all, and a second job that got there first makes this one a no-op.
    Returns the crossings recorded.
    """
    now = now or utcnow()
    new = await Event.select(Event.id).where(
        (Event.type == BECAME_HOT) & (Event.occurred_at >= now - WINDOW) & Event.lead.is_not_null()
        & Event.id.not_in(HotAlert.select(HotAlert.event))
    ).order_by(Event.id).limit(limit)
    crossings = await load_hot_leads([row["id"] for row in new])
    recorded = 0
    for hot in crossings.values():
        async with HotAlert._meta.db.transaction():
            rows = await HotAlert.insert(HotAlert(
                event=hot.event_id, lead=hot.lead_id, topic=hot.topic_id, created_at=now, next_attempt_at=now,
                status=AlertStatus.skipped if hot.erased else AlertStatus.pending,
                smtp_reply="the lead was erased" if hot.erased else "",
            )).on_conflict(target=HotAlert.event, action="DO NOTHING").returning(HotAlert.id)
            if not rows or hot.erased:
                continue
            await webhooks.record_deliveries(LEAD_HOT, hot.event_key, hot.lead_id, payload_of(hot), now)
        recorded += 1
    return recorded


# The letter


def _line(value: str, limit: int = 120) -> str:
    """Lead-typed text fit for one line of a header or a letter: control characters become spaces."""
    cleaned = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in value)
    return " ".join(cleaned.split())[:limit]


def compose(hot: HotLead) -> RenderedLetter:
    """The letter to sales: who, on which topic, how hot and why, and the link to the lead.

    Names and companies are what a visitor typed: plain text, escaped in the HTML."""
    who = _line(hot.name) or _line(hot.email) or f"Lead {hot.lead_id}"
    company = _line(hot.company)
    topic = _line(hot.topic_name) or "a topic"
    subject = f"Hot lead: {who}{f' ({company})' if company else ''} on {topic}, score {hot.combined:.0f}"
    facts = [("Email", hot.email or "(none)"), ("Name", _line(hot.name) or "(not given)"),
             ("Company", company or "(not given)"), ("Stage", hot.stage),
             ("Score", f"{hot.combined:.0f} of 100 (hot from {hot.threshold:.0f})")]
    reasons = [f"{_line(str(r.get('text') or r.get('factor') or ''), 200)}: {float(r.get('effect') or 0):+.1f}"
               for r in hot.reasons]
    link = lead_url(hot.lead_id)
    intro = f"{who} turned hot on {topic}."
    text = "\n".join([intro, ""] + [f"{label}: {value}" for label, value in facts] + [""]
                     + (["Why:"] + [f"- {reason}" for reason in reasons] + [""] if reasons else [])
                     + [f"Open the lead: {link}", ""])
    rows = "".join(f"<tr><th align=left>{escape(label)}</th><td>{escape(value)}</td></tr>" for label, value in facts)
    why = ("<p>Why:</p><ul>" + "".join(f"<li>{escape(reason)}</li>" for reason in reasons) + "</ul>") if reasons else ""
    html = (f"<p>{escape(intro)}</p><table>{rows}</table>{why}"
            f'<p><a href="{escape(link, quote=True)}">Open the lead</a></p>')
    return RenderedLetter(subject=_line(subject, 250), text=text, html=html)


def build_alert(letter: RenderedLetter, to_address: str, message_id: str, sent_at: datetime) -> EmailMessage:
    """An internal notification: no unsubscribe headers (staff are not a mailing list), and
    Auto-Submitted so out-of-office replies stay away (RFC 3834)."""
    settings = get_settings()
    message = EmailMessage(policy=LETTER_POLICY)
    message["From"] = formataddr((settings.mail_from.split("<")[0].strip() or "leadkiln", address_of(settings.mail_from)))
    message["To"] = to_address
    message["Subject"] = letter.subject
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(letter.text)
    message.add_alternative(f"<!doctype html><html><body>{letter.html}</body></html>", subtype="html")
    return message


def recipient(hot: HotLead) -> str:
    """The lead's owner, else the sales list, else nobody ("")."""
    return hot.owner_email or get_settings().sales_alert_to


@dataclass(frozen=True)
class AlertResult:
    status: str
    detail: str = ""
    retry_at: datetime | None = None


async def _claim(alert_id: int, now: datetime) -> dict[str, Any] | None:
    rows = await HotAlert.update(
        # next_attempt_at doubles as "claimed at", for spotting a worker that died mid-send.
        {HotAlert.status: AlertStatus.sending, HotAlert.attempts: HotAlert.attempts + 1, HotAlert.next_attempt_at: now}
    ).where(
        (HotAlert.id == alert_id) & HotAlert.status.is_in([AlertStatus.pending, AlertStatus.failed])
        & (HotAlert.next_attempt_at <= now) & (HotAlert.attempts < MAX_ATTEMPTS)
    ).returning(HotAlert.id, HotAlert.event, HotAlert.attempts)
    return rows[0] if rows else None


async def _finish(alert_id: int, status: AlertStatus, reply: str, **more: Any) -> None:
    values = {HotAlert.status: status, HotAlert.smtp_reply: reply[:500]}
    values.update({getattr(HotAlert, key): value for key, value in more.items()})
    await HotAlert.update(values).where(HotAlert.id == alert_id)


async def send_alert(alert_id: int, relay: Relay, now: datetime | None = None) -> AlertResult:
    """Send one alert letter, claimed before SMTP so a second job finds it taken."""
    now = now or utcnow()
    alert = await _claim(alert_id, now)
    if alert is None:
        return AlertResult("already")
    hot = (await load_hot_leads([alert["event"]])).get(alert["event"])
    if hot is None or hot.erased:
        await _finish(alert_id, AlertStatus.skipped, "the lead was erased")
        return AlertResult("skipped", "erased")
    to_address = recipient(hot)
    if not to_address:
        await _finish(alert_id, AlertStatus.skipped, "the lead has no owner and SALES_ALERT_TO is not set")
        return AlertResult("skipped", "nobody to tell")
    settings = get_settings()
    message_id = f"<lk.h{alert_id}@{settings.mail_domain}>"
    try:
        letter = compose(hot)
        message = build_alert(letter, to_address, message_id, now)
    except Exception as exc:  # noqa: BLE001 - a letter that cannot be built is recorded, not retried blindly
        return await _failed(alert_id, alert["attempts"], f"not sent: {type(exc).__name__}: {exc}", now)
    await HotAlert.update({HotAlert.to_address: to_address[:254], HotAlert.subject: letter.subject[:300],
                           HotAlert.message_id: message_id}).where(HotAlert.id == alert_id)
    in_flight = HandOver()
    try:
        reply = await relay.send(message, before_data=in_flight)
    except asyncio.CancelledError:
        if in_flight.done:
            await asyncio.shield(_finish(alert_id, AlertStatus.unknown, "cancelled while the relay had the letter"))
        else:
            await asyncio.shield(_finish(alert_id, AlertStatus.failed, "not sent: the job was cancelled", next_attempt_at=now))
        raise
    except SmtpReplyError as exc:
        if exc.recipient_refused:
            await _finish(alert_id, AlertStatus.failed, f"{exc}: the address {to_address} was refused",
                          attempts=MAX_ATTEMPTS)
            log.error("hot alert %s: the relay refused %s: %s", alert_id, to_address, exc)
            return AlertResult("refused", str(exc))
        return await _failed(alert_id, alert["attempts"], f"{exc} (at {exc.stage.upper()})", now)
    except DeliveryUncertain as exc:
        await _finish(alert_id, AlertStatus.unknown, str(exc))
        log.warning("hot alert %s may have been delivered (%s); not resent", alert_id, exc)
        return AlertResult("unknown", str(exc))
    except (OSError, aiosmtplib.SMTPException) as exc:
        return await _failed(alert_id, alert["attempts"], f"relay unreachable: {exc}", now)
    await _finish(alert_id, AlertStatus.sent, reply, sent_at=utcnow())
    return AlertResult("sent", reply)


async def _failed(alert_id: int, attempts: int, reason: str, now: datetime) -> AlertResult:
    if attempts >= MAX_ATTEMPTS:
        await _finish(alert_id, AlertStatus.failed, reason)
        log.error("hot alert %s: gave up after %d attempts: %s", alert_id, attempts, reason)
        return AlertResult("gave_up", reason)
    retry_at = now + timedelta(minutes=2 ** (attempts - 1))
    await _finish(alert_id, AlertStatus.failed, reason, next_attempt_at=retry_at)
    return AlertResult("retry", reason, retry_at)


async def due_alerts(now: datetime | None = None, limit: int = 1000) -> list[tuple[int, int]]:
    """(id, attempts) of alert letters to send now; alerts whose worker died mid-send are
    marked unknown (a letter is not resent on a guess)."""
    now = now or utcnow()
    stuck = await HotAlert.update({HotAlert.status: AlertStatus.unknown, HotAlert.smtp_reply: "worker died during SMTP"}).where(
        (HotAlert.status == AlertStatus.sending)
        & (HotAlert.next_attempt_at < now - timedelta(seconds=get_settings().send_stuck_after))
    ).returning(HotAlert.id)
    for row in stuck:
        log.warning("hot alert %s was being sent when its worker died; marked unknown, not resent", row["id"])
    rows = await HotAlert.select(HotAlert.id, HotAlert.attempts).where(
        HotAlert.status.is_in([AlertStatus.pending, AlertStatus.failed]) & (HotAlert.next_attempt_at <= now)
        & (HotAlert.attempts < MAX_ATTEMPTS)
    ).order_by(HotAlert.id).limit(limit)
    return [(row["id"], row["attempts"]) for row in rows]


def alert_job_id(alert_id: int, attempts: int) -> str:
    return f"hot-alert:{alert_id}:{attempts}"


async def forget_erased() -> int:
    """Empty what the hand-off logged about leads erased since (subjects name the lead, webhook
    payloads and answers hold its address); what was not sent yet is not sent. Returns the
    rows emptied; two reads when there is nothing to do."""
    # Erasure writes an "erased" event: the indexed way to the few erased leads.
    erased = Event.select(Event.lead).where(Event.type == ERASED_EVENT)
    alerts = [row["id"] for row in await HotAlert.select(HotAlert.id).where(
        HotAlert.lead.is_in(erased)
        & ((HotAlert.subject != "") | HotAlert.status.is_in([AlertStatus.pending, AlertStatus.failed])))]
    deliveries = [row["id"] for row in await WebhookDelivery.raw(
        "SELECT id FROM webhook_delivery WHERE lead IN (SELECT lead FROM event WHERE type = {}) "
        "AND (CAST(payload AS TEXT) <> {} OR response_body <> '' OR status IN ('pending', 'failed'))",
        ERASED_EVENT, "{}")]
    if alerts:
        await HotAlert.update({HotAlert.status: AlertStatus.skipped, HotAlert.smtp_reply: "the lead was erased"}).where(
            HotAlert.id.is_in(alerts) & HotAlert.status.is_in([AlertStatus.pending, AlertStatus.failed]))
        await HotAlert.update({HotAlert.subject: ""}).where(HotAlert.id.is_in(alerts))
    if deliveries:
        await WebhookDelivery.update({WebhookDelivery.status: WebhookStatus.gave_up,
                                      WebhookDelivery.error: "the lead was erased"}).where(
            WebhookDelivery.id.is_in(deliveries)
            & WebhookDelivery.status.is_in([WebhookStatus.pending, WebhookStatus.failed]))
        await WebhookDelivery.update({WebhookDelivery.payload: {}, WebhookDelivery.response_body: ""}).where(
            WebhookDelivery.id.is_in(deliveries))
    return len(alerts) + len(deliveries)
