"""Sending a chain's next letter through the send ledger: reserve, render, send, record, advance."""

from __future__ import annotations

import enum
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiosmtplib

from content.chains import EnrollmentDue, utcnow
from content.letters import LetterTemplateError, render_letter
from content.mail import Envelope, Relay, SmtpReplyError, address_of, build_message
from content.tables import (
    Chain,
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentGroup,
    EnrollmentStatus,
    Offer,
    OfferKind,
    Step,
    StepKind,
    Suppression,
    SuppressionReason,
)
from landing.tables import Lead, Topic
from landing.tokens import sign
from scoring.tables import Score
from server.settings import get_settings

log = logging.getLogger("leadkiln.delivery")

STUCK_AFTER = timedelta(minutes=10)


class Outcome(str, enum.Enum):
    sent = "sent"
    not_due = "not_due"
    already = "already"
    completed = "completed"
    exited = "exited"
    retry = "retry"
    bounced = "bounced"


@dataclass(frozen=True)
class SendResult:
    """What happened to one due step, and what to queue next."""

    outcome: Outcome
    detail: str = ""
    next_due: EnrollmentDue | None = None


def email_hash(email: str) -> str:
    """The suppression key of an address: erased leads stay suppressed without their email."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


async def is_suppressed(email: str) -> bool:
    return await Suppression.exists().where(Suppression.email_hash == email_hash(email))


async def suppress(email: str, reason: SuppressionReason, detail: str = "") -> None:
    """Suppress an address at once and stop every chain it is in."""
    async with Suppression._meta.db.transaction():
        await Suppression.insert(
            Suppression(email_hash=email_hash(email), reason=reason, detail=detail[:500])
        ).on_conflict(action="DO NOTHING")
        lead = await Lead.objects().where(Lead.email == email.strip().lower()).first()
        if lead is not None:
            await Enrollment.update(
                {Enrollment.status: EnrollmentStatus.exited, Enrollment.exit_reason: reason.value, Enrollment.due_at: None}
            ).where((Enrollment.lead == lead.id) & (Enrollment.status == EnrollmentStatus.active))


def message_id_for(delivery_id: int, enrollment_id: int, position: int) -> str:
    """Deterministic: a resend attempt of the same ledger row carries the same Message-ID."""
    return f"<lk.{delivery_id}.{enrollment_id}.{position}@{get_settings().mail_domain}>"


def lead_context(lead: Lead, topic: Topic | None, chain: Chain | None) -> dict:
    """What staff templates may use: plain values, never table objects."""
    return {
        "lead": {
            "email": lead.email or "",
            "first_name": lead.first_name or "",
            "last_name": lead.last_name or "",
            "company": lead.company or "",
            "role": lead.role or "",
        },
        "topic": {"name": topic.name if topic else ""},
        "chain": {"name": chain.name if chain else ""},
    }


def unsubscribe_url(lead_id: int) -> str:
    return f"{get_settings().public_url}/u/{sign('unsubscribe', lead_id)}"


async def choose_offer(chain: Chain, lead_id: int) -> Offer | None:
    """The hot offer when the lead's topic score is over the chain's threshold, else the cold one."""
    score = await Score.objects().where((Score.lead == lead_id) & (Score.topic == chain.topic)).first()
    kind = OfferKind.hot if score is not None and score.combined >= chain.hot_threshold else OfferKind.cold
    return await Offer.objects().where((Offer.chain == chain.id) & (Offer.kind == kind)).first()


async def _reserve(enrollment_id: int, step_id: int, to_address: str) -> int | None:
    """Claim the ledger row for (enrollment, step); None if another attempt holds or sent it."""
    rows = (
        await Delivery.insert(
            Delivery(enrollment=enrollment_id, step=step_id, status=DeliveryStatus.sending, to_address=to_address, attempts=1)
        )
        .on_conflict(action="DO NOTHING")
        .returning(Delivery.id)
    )
    if rows:
        return rows[0]["id"]
    # A row exists: only a failed (never accepted) attempt may be claimed again.
    rows = (
        await Delivery.update({Delivery.status: DeliveryStatus.sending, Delivery.attempts: Delivery.attempts + 1, Delivery.reserved_at: utcnow()})
        .where((Delivery.enrollment == enrollment_id) & (Delivery.step == step_id) & (Delivery.status == DeliveryStatus.failed))
        .returning(Delivery.id)
    )
    return rows[0]["id"] if rows else None


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff for temporary SMTP failures: 1, 2, 4 … minutes, at most an hour."""
    return timedelta(minutes=min(60, 2 ** max(0, attempts - 1)))


async def _temporary_failure(delivery_id: int, enrollment: Enrollment, reply: str, now: datetime) -> SendResult:
    delivery = await Delivery.objects().get(Delivery.id == delivery_id)
    due_at = now + retry_delay(delivery.attempts)
    async with Delivery._meta.db.transaction():
        await Delivery.update({Delivery.status: DeliveryStatus.failed, Delivery.smtp_reply: reply[:500]}).where(Delivery.id == delivery_id)
        await Enrollment.update({Enrollment.due_at: due_at}).where(Enrollment.id == enrollment.id)
    return SendResult(Outcome.retry, reply, EnrollmentDue(enrollment.id, enrollment.next_position, due_at))


async def _exit(enrollment_id: int, reason: str, status: EnrollmentStatus = EnrollmentStatus.exited) -> None:
    await Enrollment.update({Enrollment.status: status, Enrollment.exit_reason: reason, Enrollment.due_at: None}).where(
        Enrollment.id == enrollment_id
    )


async def send_due_step(enrollment_id: int, relay: Relay, now: datetime | None = None) -> SendResult:
    """Send the enrollment's next letter if due; safe to call twice for the same step."""
    now = now or utcnow()
    enrollment = await Enrollment.objects().where(Enrollment.id == enrollment_id).first()
    if enrollment is None or enrollment.status != EnrollmentStatus.active:
        return SendResult(Outcome.already, "enrollment not active")
    if enrollment.group != EnrollmentGroup.treatment or enrollment.due_at is None or enrollment.due_at > now:
        return SendResult(Outcome.not_due)
    chain = await Chain.objects().get(Chain.id == enrollment.chain)
    step = await Step.objects().where((Step.chain == chain.id) & (Step.position == enrollment.next_position)).first()
    if step is None:
        await _exit(enrollment.id, "no more steps", EnrollmentStatus.completed)
        return SendResult(Outcome.completed)
    lead = await Lead.objects().get(Lead.id == enrollment.lead)
    if not lead.email or lead.historical:
        await _exit(enrollment.id, "no address")
        return SendResult(Outcome.exited, "no address")
    if await is_suppressed(lead.email):
        await _exit(enrollment.id, "suppressed")
        return SendResult(Outcome.exited, "suppressed")

    delivery_id = await _reserve(enrollment.id, step.id, lead.email)
    if delivery_id is None:
        return SendResult(Outcome.already, "ledger row already taken")

    topic = await Topic.objects().where(Topic.id == chain.topic).first()
    subject, body, offer_kind = step.subject, step.body_markdown, ""
    if step.kind == StepKind.offer:
        offer = await choose_offer(chain, lead.id)
        if offer is not None:
            subject, body, offer_kind = offer.subject, offer.body_markdown, offer.kind
    context = lead_context(lead, topic, chain) | {"unsubscribe_url": unsubscribe_url(lead.id)}
    try:
        letter = render_letter(subject, body, context, where=f"step {step.position}")
    except LetterTemplateError as exc:
        log.error("chain %s: %s", chain.id, exc)
        return await _temporary_failure(delivery_id, enrollment, f"template error: {exc}", now)

    settings = get_settings()
    message_id = message_id_for(delivery_id, enrollment.id, step.position)
    sender_email = chain.sender_email or address_of(settings.mail_from)
    sender_name = chain.sender_name or "leadkiln"
    # Recorded before SMTP is spoken: a crash after the relay accepts leaves a row
    # that names the letter, so it is reported instead of being sent again.
    await Delivery.update(
        {Delivery.message_id: message_id, Delivery.subject: letter.subject[:300], Delivery.offer_kind: offer_kind}
    ).where(Delivery.id == delivery_id)
    message = build_message(
        letter,
        Envelope(sender_name, sender_email, lead.email, message_id, context["unsubscribe_url"]),
        sent_at=now,
    )
    try:
        reply = await relay.send(message)
    except SmtpReplyError as exc:
        if exc.permanent:
            await Delivery.update({Delivery.status: DeliveryStatus.bounced, Delivery.smtp_reply: str(exc)[:500]}).where(
                Delivery.id == delivery_id
            )
            await suppress(lead.email, SuppressionReason.bounce, str(exc))
            return SendResult(Outcome.bounced, str(exc))
        return await _temporary_failure(delivery_id, enrollment, str(exc), now)
    except (OSError, aiosmtplib.SMTPException) as exc:
        return await _temporary_failure(delivery_id, enrollment, f"relay unreachable: {exc}", now)

    next_step = (
        await Step.objects().where((Step.chain == chain.id) & (Step.position > step.position)).order_by(Step.position).first()
    )
    sent_at = utcnow()
    next_due = None
    async with Delivery._meta.db.transaction():
        await Delivery.update(
            {Delivery.status: DeliveryStatus.sent, Delivery.sent_at: sent_at, Delivery.smtp_reply: reply[:500]}
        ).where(Delivery.id == delivery_id)
        if next_step is None:
            await _exit(enrollment.id, "finished", EnrollmentStatus.completed)
        else:
            due_at = sent_at + timedelta(minutes=next_step.delay_minutes)
            await Enrollment.update({Enrollment.next_position: next_step.position, Enrollment.due_at: due_at}).where(
                Enrollment.id == enrollment.id
            )
            next_due = EnrollmentDue(enrollment.id, next_step.position, due_at)
    return SendResult(Outcome.sent, reply, next_due)


async def report_stuck_deliveries(now: datetime | None = None) -> int:
    """Mark rows left `sending` by a dead worker as `unknown`: reported, never resent blindly."""
    now = now or utcnow()
    rows = (
        await Delivery.update({Delivery.status: DeliveryStatus.unknown})
        .where((Delivery.status == DeliveryStatus.sending) & (Delivery.reserved_at < now - STUCK_AFTER))
        .returning(Delivery.id)
    )
    for row in rows:
        log.warning("delivery %s was being sent when its worker died; marked unknown for review", row["id"])
    return len(rows)
