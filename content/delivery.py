"""Sending a chain's next letter through the send ledger: reserve, render, send, record, advance."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiosmtplib

from content.chains import EnrollmentDue, utcnow
from content.letters import render_letter
from content.mail import DeliveryUncertain, Envelope, Relay, SmtpReplyError, address_of, build_message
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
from landing.tables import Event, Lead, Topic
from landing.tokens import preferences_url, unsubscribe_url
from scoring.tables import Score
from server.settings import get_settings

log = logging.getLogger("leadkiln.delivery")



def stuck_after() -> timedelta:
    """How long a letter may stay in flight before its worker counts as dead (SEND_STUCK_AFTER)."""
    return timedelta(seconds=get_settings().send_stuck_after)


class Outcome(str, enum.Enum):
    sent = "sent"
    not_due = "not_due"
    already = "already"
    completed = "completed"
    exited = "exited"
    retry = "retry"
    gave_up = "gave_up"
    bounced = "bounced"
    unknown = "unknown"


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


async def suppress(email: str, reason: SuppressionReason, detail: str = "") -> int | None:
    """Suppress an address at once and stop every chain it is in; returns the lead's id when
    this newly suppressed a known lead (its scores should be recomputed)."""
    async with Suppression._meta.db.transaction():
        inserted = await Suppression.insert(
            Suppression(email_hash=email_hash(email), reason=reason, detail=detail[:500])
        ).on_conflict(action="DO NOTHING").returning(Suppression.id)
        lead = await Lead.objects().where(Lead.email == email.strip().lower()).first()
        if lead is None:
            return None
        if inserted:
            # An event too, once: scoring rules can weigh it (an unsubscribe is a strong "not now").
            await Event.insert(Event(type=reason.value, lead=lead.id, properties={"detail": detail[:200]}))
        await Enrollment.update(
            {Enrollment.status: EnrollmentStatus.exited, Enrollment.exit_reason: reason.value, Enrollment.due_at: None}
        ).where((Enrollment.lead == lead.id) & (Enrollment.status == EnrollmentStatus.active))
    return lead.id if inserted else None


async def lift_suppression(email: str) -> bool:
    """Remove an unsubscribe or erasure after the person opted in again and confirmed it;
    a bounce or a complaint stays. Returns whether one was lifted."""
    rows = await Suppression.delete().where(
        (Suppression.email_hash == email_hash(email))
        & Suppression.reason.is_in([SuppressionReason.unsubscribe, SuppressionReason.erased])
    ).returning(Suppression.id)
    return bool(rows)


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


async def choose_offer(chain: Chain, lead_id: int) -> Offer | None:
    """The hot offer when the lead's topic score is over the chain's threshold, else the cold one."""
    score = await Score.objects().where((Score.lead == lead_id) & (Score.topic == chain.topic)).first()
    kind = OfferKind.hot if score is not None and score.combined >= chain.hot_threshold else OfferKind.cold
    return await Offer.objects().where((Offer.chain == chain.id) & (Offer.kind == kind)).first()


MAX_ATTEMPTS = 8
"""Attempts at one letter before its enrollment gives up (about four hours of backoff)."""


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a ledger row: ours to send, or already settled elsewhere."""

    delivery_id: int | None
    existing_status: str = ""


async def _claim(enrollment_id: int, step_id: int, to_address: str, now: datetime) -> Claim:
    """Claim the ledger row for (enrollment, step); only a new or a failed row can be claimed."""
    rows = (
        await Delivery.insert(
            Delivery(enrollment=enrollment_id, step=step_id, status=DeliveryStatus.claimed, to_address=to_address,
                     attempts=1, reserved_at=now)
        )
        .on_conflict(action="DO NOTHING")
        .returning(Delivery.id)
    )
    if rows:
        return Claim(rows[0]["id"])
    # A row exists: only a failed (never accepted) attempt may be claimed again, and the
    # conditional update lets exactly one of two racing jobs have it.
    rows = (
        await Delivery.update(
            {Delivery.status: DeliveryStatus.claimed, Delivery.attempts: Delivery.attempts + 1, Delivery.reserved_at: now}
        )
        .where((Delivery.enrollment == enrollment_id) & (Delivery.step == step_id) & (Delivery.status == DeliveryStatus.failed))
        .returning(Delivery.id)
    )
    if rows:
        return Claim(rows[0]["id"])
    existing = await Delivery.select(Delivery.status).where(
        (Delivery.enrollment == enrollment_id) & (Delivery.step == step_id)
    ).first()
    return Claim(None, existing["status"] if existing else "")


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff for letters not delivered: 1, 2, 4 … minutes, at most an hour."""
    return timedelta(minutes=min(60, 2 ** max(0, attempts - 1)))


async def _not_delivered(delivery_id: int, enrollment: Enrollment, reason: str, now: datetime) -> SendResult:
    """Mark the row failed (safe to send again) and schedule the retry, or give up for good."""
    rows = await Delivery.select(Delivery.attempts).where(Delivery.id == delivery_id)
    attempts = rows[0]["attempts"] if rows else MAX_ATTEMPTS
    async with Delivery._meta.db.transaction():
        await Delivery.update({Delivery.status: DeliveryStatus.failed, Delivery.smtp_reply: reason[:500]}).where(
            Delivery.id == delivery_id
        )
        if attempts >= MAX_ATTEMPTS:
            await _exit(enrollment.id, f"gave up after {attempts} attempts")  # why: on the delivery row
        else:
            due_at = now + retry_delay(attempts)
            await Enrollment.update({Enrollment.due_at: due_at}).where(Enrollment.id == enrollment.id)
    if attempts >= MAX_ATTEMPTS:
        log.error("enrollment %s: gave up on delivery %s after %d attempts: %s", enrollment.id, delivery_id, attempts, reason)
        return SendResult(Outcome.gave_up, reason)
    # Retried by the sweeper, which reads due_at from the database: a job cannot re-queue
    # its own id while it is running.
    return SendResult(Outcome.retry, reason)


async def _exit(enrollment_id: int, reason: str, status: EnrollmentStatus = EnrollmentStatus.exited) -> None:
    await Enrollment.update({Enrollment.status: status, Enrollment.exit_reason: reason, Enrollment.due_at: None}).where(
        Enrollment.id == enrollment_id
    )


async def _advance(enrollment_id: int, chain_id: int, position: int, sent_at: datetime) -> EnrollmentDue | None:
    """Move the enrollment past `position`: the next step's due time, or completed."""
    next_step = (
        await Step.objects().where((Step.chain == chain_id) & (Step.position > position)).order_by(Step.position).first()
    )
    if next_step is None:
        await _exit(enrollment_id, "finished", EnrollmentStatus.completed)
        return None
    due_at = sent_at + timedelta(minutes=next_step.delay_minutes)
    await Enrollment.update({Enrollment.next_position: next_step.position, Enrollment.due_at: due_at}).where(
        Enrollment.id == enrollment_id
    )
    return EnrollmentDue(enrollment_id, next_step.position, due_at)


async def _settle(coroutine):
    """Finish a ledger write even if the job is cancelled meanwhile (a deploy's SIGTERM)."""
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


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

    claim = await _claim(enrollment.id, step.id, lead.email, now)
    if claim.delivery_id is None:
        if claim.existing_status == DeliveryStatus.sent:
            # Marked sent by a person resolving an `unknown` row: go on with the chain.
            sent_at = utcnow()
            async with Delivery._meta.db.transaction():
                next_due = await _advance(enrollment.id, chain.id, step.position, sent_at)
            return SendResult(Outcome.already, "sent earlier", next_due)
        return SendResult(Outcome.already, f"ledger row is {claim.existing_status or 'taken'}")
    delivery_id = claim.delivery_id

    # Until the letter is handed to the relay, any failure (a template error, a bad sender
    # name, the database, a cancelled job) means nothing was sent: the row goes back to
    # failed and the letter is retried.
    try:
        message, subject, offer_kind = await _compose(chain, step, lead, delivery_id, enrollment.id, now)
        # Recorded before SMTP is spoken: a crash after the relay accepts leaves a row in
        # `sending` that names the letter, so it is reported instead of being sent again.
        await Delivery.update(
            {Delivery.status: DeliveryStatus.sending, Delivery.message_id: str(message["Message-ID"]),
             Delivery.subject: subject[:300], Delivery.offer_kind: offer_kind}
        ).where(Delivery.id == delivery_id)
    except BaseException as exc:
        reason = f"not sent: {type(exc).__name__}: {exc}"
        log.error("chain %s step %s: %s", chain.id, step.position, reason)
        result = await _settle(_not_delivered(delivery_id, enrollment, reason, now))
        if not isinstance(exc, Exception):
            raise
        return result

    try:
        reply = await relay.send(message)
    except SmtpReplyError as exc:
        if exc.recipient_refused:
            await _settle(_bounce(delivery_id, lead.email, str(exc)))
            return SendResult(Outcome.bounced, str(exc))
        if exc.permanent:
            log.error("relay refused a letter at %s (not the address's fault): %s", exc.stage.upper(), exc)
        return await _settle(_not_delivered(delivery_id, enrollment, f"{exc} (at {exc.stage.upper()})", now))
    except DeliveryUncertain as exc:
        await _settle(_mark_unknown(delivery_id, str(exc)))
        return SendResult(Outcome.unknown, str(exc))
    except (OSError, aiosmtplib.SMTPException) as exc:
        return await _settle(_not_delivered(delivery_id, enrollment, f"relay unreachable: {exc}", now))

    next_due = await _settle(_record_sent(delivery_id, enrollment.id, chain.id, step.position, reply))
    return SendResult(Outcome.sent, reply, next_due)


async def _compose(chain: Chain, step: Step, lead: Lead, delivery_id: int, enrollment_id: int, now: datetime):
    """The letter for this step (the hot or cold offer on an offer step), as a MIME message."""
    topic = await Topic.objects().where(Topic.id == chain.topic).first()
    subject, body, offer_kind = step.subject, step.body_markdown, ""
    if step.kind == StepKind.offer:
        offer = await choose_offer(chain, lead.id)
        if offer is not None:
            subject, body, offer_kind = offer.subject, offer.body_markdown, offer.kind
    context = lead_context(lead, topic, chain) | {"unsubscribe_url": unsubscribe_url(lead.id),
                                                  "preferences_url": preferences_url(lead.id)}
    letter = render_letter(subject, body, context, where=f"step {step.position}")
    settings = get_settings()
    envelope = Envelope(
        chain.sender_name or "leadkiln",
        chain.sender_email or address_of(settings.mail_from),
        lead.email,
        message_id_for(delivery_id, enrollment_id, step.position),
        context["unsubscribe_url"],
        context["preferences_url"],
    )
    return build_message(letter, envelope, sent_at=now), letter.subject, offer_kind


async def _record_sent(delivery_id: int, enrollment_id: int, chain_id: int, position: int, reply: str) -> EnrollmentDue | None:
    sent_at = utcnow()
    async with Delivery._meta.db.transaction():
        await Delivery.update(
            {Delivery.status: DeliveryStatus.sent, Delivery.sent_at: sent_at, Delivery.smtp_reply: reply[:500]}
        ).where(Delivery.id == delivery_id)
        return await _advance(enrollment_id, chain_id, position, sent_at)


async def _bounce(delivery_id: int, email: str, reply: str) -> None:
    await Delivery.update({Delivery.status: DeliveryStatus.bounced, Delivery.smtp_reply: reply[:500]}).where(
        Delivery.id == delivery_id
    )
    await suppress(email, SuppressionReason.bounce, reply)


async def _mark_unknown(delivery_id: int, reason: str) -> None:
    await Delivery.update({Delivery.status: DeliveryStatus.unknown, Delivery.smtp_reply: reason[:500]}).where(
        Delivery.id == delivery_id
    )
    log.warning("delivery %s may have been delivered (%s); marked unknown for review, not resent", delivery_id, reason)


async def report_stuck_deliveries(now: datetime | None = None) -> int:
    """Settle rows whose worker died: `sending` becomes `unknown` (reported, never resent
    blindly); `claimed` becomes `failed` (never handed to the relay, so safe to retry)."""
    now = now or utcnow()
    stale = Delivery.reserved_at < now - stuck_after()
    unknown = (
        await Delivery.update({Delivery.status: DeliveryStatus.unknown, Delivery.smtp_reply: "worker died during SMTP"})
        .where((Delivery.status == DeliveryStatus.sending) & stale)
        .returning(Delivery.id)
    )
    for row in unknown:
        log.warning("delivery %s was being sent when its worker died; marked unknown for review", row["id"])
    released = (
        await Delivery.update({Delivery.status: DeliveryStatus.failed, Delivery.smtp_reply: "worker died before SMTP"})
        .where((Delivery.status == DeliveryStatus.claimed) & stale)
        .returning(Delivery.id)
    )
    for row in released:
        log.warning("delivery %s was claimed by a worker that died before sending; it will be retried", row["id"])
    return len(unknown) + len(released)
