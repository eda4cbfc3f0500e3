"""Sending a chain's next letter through the send ledger: reserve, render, send, record, advance."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from types import SimpleNamespace
from typing import Any

import aiosmtplib

from content.chains import EnrollmentDue, instant, next_send_time, utcnow, zone
from content.letters import render_letter
from content.mail import DeliveryUncertain, Envelope, Relay, SmtpReplyError, address_of, build_message
from content.throttle import ThrottleBusy, ThrottleUnavailable
from content.tracking import track
from content.tables import (
    Chain,
    ChainStatus,
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
from landing.tables import Event, Lead, LeadStage, Topic
from landing.tokens import preferences_url, unsubscribe_url
from scoring.tables import Score
from server.settings import get_settings
from piccolo.engine import engine_finder
from piccolo.engine.sqlite import SQLiteEngine
from piccolo.utils.encoding import dump_json

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
    deferred = "deferred"


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
        "topic": {"name": topic.name if topic else "", "slug": topic.slug if topic else ""},
        "chain": {"name": chain.name if chain else ""},
        "site": {"url": get_settings().public_url},
        "offer": {"url": ""},
    }


async def choose_offer(chain: Chain, lead_id: int) -> Offer | None:
    """The hot offer when the lead's topic score is over the chain's threshold, else the cold one."""
    score = await Score.objects().where((Score.lead == lead_id) & (Score.topic == chain.topic)).first()
    kind = OfferKind.hot if score is not None and score.combined >= chain.hot_threshold else OfferKind.cold
    return await Offer.objects().where((Offer.chain == chain.id) & (Offer.kind == kind)).first()


MAX_ATTEMPTS = 8
"""Attempts at one letter before its enrollment gives up (about two hours of backoff). Only
failures of this letter count: a relay outage or our own rate limit never ends a chain."""


class ClaimLost(Exception):
    """The ledger row is no longer this job's claim: the letter must not be sent by it."""


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a ledger row: ours to send, already settled elsewhere, held
    back by the lead's frequency cap until `wait_until`, or refused: the address is suppressed."""

    delivery_id: int | None
    existing_status: str = ""
    wait_until: datetime | None = None
    attempt: int = 0
    """Which attempt this claim is: the row stays ours only while it still says so."""
    suppressed: bool = False


_RECENT_LETTERS = """
SELECT count(*) AS n, min(COALESCE(sent_at, reserved_at)) AS oldest FROM delivery
WHERE lead = {} AND reserved_at > {} AND status IN ('claimed', 'sending', 'sent', 'unknown')
"""


async def _over_cap(lead_id: int, now: datetime) -> datetime | None:
    """When the lead may get its next chain letter if the frequency cap holds it back now.

    Runs in the claim's transaction, with the lead locked, so two chains cannot both take
    the lead's last free slot. Letters a visitor asked for (notices) do not count.
    """
    cap = get_settings().frequency_cap
    if cap is None:
        return None
    if not isinstance(engine_finder(), SQLiteEngine):
        # SQLite's write transactions are serial already (BEGIN IMMEDIATE).
        await Delivery.raw("SELECT pg_advisory_xact_lock(7411, {})", lead_id)
    window = timedelta(seconds=cap.seconds)
    row = (await Delivery.raw(_RECENT_LETTERS, lead_id, now - window))[0]
    if row["n"] < cap.count:
        return None
    return max(instant(row["oldest"]) + window, now + timedelta(seconds=1))


# The claim: a new row, or a failed one taken again; never for a suppressed address (checked
# in the same statement, so an unsubscribe that lands before the claim always wins).
_NEW_CLAIM = """
INSERT INTO delivery (enrollment, step, lead, variant, links, status, offer_kind, to_address, subject, message_id,
                      smtp_reply, attempts, reserved_at)
SELECT {}, {}, {}, '', '[]', 'claimed', '', {}, '', '', '', 1, {}
WHERE NOT EXISTS (SELECT 1 FROM suppression WHERE email_hash = {})
ON CONFLICT DO NOTHING RETURNING id
"""

_FAILED_CLAIM = """
UPDATE delivery SET status = 'claimed', attempts = attempts + 1, reserved_at = {}, lead = {}
WHERE enrollment = {} AND step = {} AND status = 'failed'
  AND NOT EXISTS (SELECT 1 FROM suppression WHERE email_hash = {})
RETURNING id, attempts
"""

_LEDGER_ROW = """
SELECT (SELECT status FROM delivery WHERE enrollment = {} AND step = {}) AS status,
       EXISTS (SELECT 1 FROM suppression WHERE email_hash = {}) AS suppressed
"""


async def _claim(enrollment_id: int, step_id: int, lead_id: int, to_address: str, now: datetime) -> Claim:
    """Claim the ledger row for (enrollment, step); only a new or a failed row can be claimed,
    and none for a suppressed address."""
    if get_settings().frequency_cap is None:
        # One statement is atomic by itself: no transaction (and its round trips) needed.
        return await _take(enrollment_id, step_id, lead_id, to_address, now)
    async with Delivery._meta.db.transaction():
        if await is_suppressed(to_address):
            return Claim(None, suppressed=True)
        wait_until = await _over_cap(lead_id, now)
        if wait_until is not None:
            existing = await Delivery.select(Delivery.status).where(
                (Delivery.enrollment == enrollment_id) & (Delivery.step == step_id)).first()
            if existing is None or existing["status"] == DeliveryStatus.failed:
                return Claim(None, wait_until=wait_until)
            return Claim(None, existing["status"])
        return await _take(enrollment_id, step_id, lead_id, to_address, now)


async def _take(enrollment_id: int, step_id: int, lead_id: int, to_address: str, now: datetime) -> Claim:
    """The claim's statements: a new row, else a failed one, else what the row says."""
    key = email_hash(to_address)
    rows = await Delivery.raw(_NEW_CLAIM, enrollment_id, step_id, lead_id, to_address, now, key)
    if rows:
        return Claim(rows[0]["id"], attempt=1)
    # A row exists (or the address is suppressed): only a failed (never accepted) attempt
    # may be claimed again, and the conditional update lets exactly one of two racing jobs
    # have it.
    rows = await Delivery.raw(_FAILED_CLAIM, now, lead_id, enrollment_id, step_id, key)
    if rows:
        return Claim(rows[0]["id"], attempt=rows[0]["attempts"])
    row = (await Delivery.raw(_LEDGER_ROW, enrollment_id, step_id, key))[0]
    if row["suppressed"]:
        return Claim(None, suppressed=True)
    return Claim(None, row["status"] or "")


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff for letters not delivered: 1, 2, 4 … minutes, at most an hour."""
    return timedelta(minutes=min(60, 2 ** max(0, attempts - 1)))


RELAY_RETRY = timedelta(minutes=5)
"""How often a letter is tried again while the relay is unreachable or refuses our sender."""


async def _not_delivered(delivery_id: int, enrollment: Enrollment, reason: str, now: datetime,
                         counts: bool = True, retry_in: timedelta | None = None) -> SendResult:
    """Mark the row failed (safe to send again) and schedule the retry, or give up for good.
    An attempt that `counts=False` (our own send-rate limit, a relay outage, a cancelled
    job: nothing about this letter) is retried after `retry_in` and does not bring the
    give-up closer."""
    rows = await Delivery.select(Delivery.attempts).where(Delivery.id == delivery_id)
    attempts = rows[0]["attempts"] if rows else MAX_ATTEMPTS
    if not counts:
        attempts -= 1
    async with Delivery._meta.db.transaction():
        changes = {Delivery.status: DeliveryStatus.failed, Delivery.smtp_reply: reason[:500]}
        if not counts:
            changes[Delivery.attempts] = attempts
        await Delivery.update(changes).where(Delivery.id == delivery_id)
        if attempts >= MAX_ATTEMPTS:
            await _exit(enrollment.id, f"gave up after {attempts} attempts")  # why: on the delivery row
        else:
            due_at = now + (retry_in if retry_in is not None else retry_delay(attempts))
            await Enrollment.update({Enrollment.due_at: due_at}).where(Enrollment.id == enrollment.id)
    if attempts >= MAX_ATTEMPTS:
        log.error("enrollment %s: gave up on delivery %s after %d attempts: %s", enrollment.id, delivery_id, attempts, reason)
        return SendResult(Outcome.gave_up, reason)
    # Retried by the sweeper, which reads due_at from the database: a job cannot re-queue
    # its own id while it is running.
    return SendResult(Outcome.retry, reason)


async def _exit(enrollment_id: int, reason: str, status: EnrollmentStatus = EnrollmentStatus.exited) -> None:
    await Enrollment.raw("UPDATE enrollment SET status = {}, exit_reason = {}, due_at = NULL WHERE id = {}",
                         status.value, reason, enrollment_id)


async def _advance(enrollment_id: int, chain_id: int, position: int, sent_at: datetime,
                   from_position: int | None = None) -> EnrollmentDue | None:
    """Move the enrollment past `position`: the next step's due time, or completed. With
    `from_position`, only an enrollment still at that place moves (a late duplicate job
    must not move a lead back)."""
    next_step = (
        await Step.objects().where((Step.chain == chain_id) & (Step.position > position)).order_by(Step.position).first()
    )
    if next_step is None:
        await _exit(enrollment_id, "finished", EnrollmentStatus.completed)
        return None
    due_at = sent_at + timedelta(minutes=next_step.delay_minutes)
    where = Enrollment.id == enrollment_id
    if from_position is not None:
        where &= Enrollment.next_position == from_position
    moved = await Enrollment.update({Enrollment.next_position: next_step.position, Enrollment.due_at: due_at}).where(
        where).returning(Enrollment.id)
    return EnrollmentDue(enrollment_id, next_step.position, due_at) if moved else None


async def _settle(coroutine):
    """Finish a ledger write even if the job is cancelled meanwhile (a deploy's SIGTERM)."""
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


STAGE_RANK = {LeadStage.new: 0, LeadStage.contacted: 1, LeadStage.qualified: 2, LeadStage.won: 3, LeadStage.lost: 3}
"""How far sales have taken a lead; a chain's exit stage is reached at its rank or beyond."""


def exit_reason(converted: bool, lead_stage: str, exit_stage: str, left_topic: bool) -> str:
    """Why the lead should leave the chain before its next letter, or "" to go on: it
    converted since joining, sales took it to the chain's exit stage, or it left the topic."""
    if converted:
        return "converted"
    if exit_stage and STAGE_RANK.get(lead_stage, 0) >= STAGE_RANK.get(exit_stage, 99):
        return f"stage {lead_stage}"
    if left_topic:
        return "left the topic"
    return ""


async def _defer(enrollment_id: int, until: datetime, why: str) -> SendResult:
    """Move the step's due time; the sweeper queues it then. Nothing is dropped."""
    await Enrollment.update({Enrollment.due_at: until}).where(Enrollment.id == enrollment_id)
    return SendResult(Outcome.deferred, f"{why}: until {until.isoformat()}")


# Everything a due step needs, in one statement: the enrollment; its chain (its status read
# here every time, so a paused chain stops at once); the first step at or after the
# enrollment's place (a step renumbered or deleted in a live chain moves the lead on instead
# of ending its chain); the lead; the exit rules' facts; the topic; and on an offer step the
# hot or the cold offer by the lead's score on the chain's topic.
_DUE_LETTER = """
SELECT e.id AS e_id, e.status AS e_status, e."group" AS e_group, e.variant AS e_variant,
       e.next_position AS e_next_position, e.due_at AS e_due_at,
       c.id AS c_id, c.name AS c_name, c.status AS c_status, c.topic AS c_topic, c.exit_stage AS c_exit_stage,
       c.timezone AS c_timezone, c.send_window_start AS c_send_window_start,
       c.send_window_end AS c_send_window_end, c.send_weekdays AS c_send_weekdays,
       c.sender_name AS c_sender_name, c.sender_email AS c_sender_email,
       s.id AS s_id, s.position AS s_position, s.kind AS s_kind, s.subject AS s_subject,
       s.body_markdown AS s_body_markdown, s.subject_b AS s_subject_b, s.body_markdown_b AS s_body_markdown_b,
       l.id AS l_id, l.email AS l_email, l.first_name AS l_first_name, l.last_name AS l_last_name,
       l.company AS l_company, l.role AS l_role, l.timezone AS l_timezone, l.stage AS l_stage,
       l.historical AS l_historical, l.erased_at AS l_erased_at,
       t.name AS t_name, t.slug AS t_slug,
       o.kind AS o_kind, o.subject AS o_subject, o.body_markdown AS o_body_markdown,
       o.call_to_action_url AS o_call_to_action_url,
       EXISTS (SELECT 1 FROM conversion v WHERE v.lead = e.lead AND v.occurred_at >= e.enrolled_at) AS x_converted,
       EXISTS (SELECT 1 FROM topic_preference p
               WHERE p.lead = e.lead AND p.topic = c.topic AND p.subscribed = FALSE) AS x_left_topic
FROM enrollment e
JOIN chain c ON c.id = e.chain
JOIN lead l ON l.id = e.lead
LEFT JOIN topic t ON t.id = c.topic
LEFT JOIN step s ON s.id = (SELECT id FROM step WHERE chain = e.chain AND position >= e.next_position
                            ORDER BY position LIMIT 1)
LEFT JOIN score sc ON s.kind = 'offer' AND sc.lead = e.lead AND sc.topic = c.topic
LEFT JOIN offer o ON s.kind = 'offer' AND o.chain = c.id
                 AND o.kind = CASE WHEN sc.combined >= c.hot_threshold THEN 'hot' ELSE 'cold' END
WHERE e.id = {}
"""


@dataclass(frozen=True)
class _DueLetter:
    """The row of `_DUE_LETTER`, by table: plain values (SQLite's timestamps may be ISO text)."""

    enrollment: SimpleNamespace
    chain: SimpleNamespace
    step: SimpleNamespace | None
    lead: SimpleNamespace
    topic: SimpleNamespace | None
    offer: SimpleNamespace | None
    converted: bool
    left_topic: bool

    @classmethod
    def of(cls, row: dict[str, Any]) -> "_DueLetter":
        parts: dict[str, dict[str, Any]] = {"e": {}, "c": {}, "s": {}, "l": {}, "t": {}, "o": {}, "x": {}}
        for key, value in row.items():
            parts[key[0]][key[2:]] = value
        step, topic, offer = parts["s"], parts["t"], parts["o"]
        return cls(
            SimpleNamespace(**parts["e"]), SimpleNamespace(**parts["c"]),
            SimpleNamespace(**step) if step["id"] is not None else None,
            SimpleNamespace(**parts["l"]),
            SimpleNamespace(**topic) if topic["name"] is not None else None,
            SimpleNamespace(**offer) if offer["kind"] is not None else None,
            bool(parts["x"]["converted"]), bool(parts["x"]["left_topic"]),
        )


_IN_FLIGHT = """
UPDATE delivery SET status = 'sending', message_id = {}, subject = {}, offer_kind = {}, variant = {}, links = {},
                    reserved_at = {}
WHERE id = {} AND status = 'claimed' AND attempts = {} RETURNING id
"""


async def send_due_step(enrollment_id: int, relay: Relay, now: datetime | None = None) -> SendResult:
    """Send the enrollment's next letter if due; safe to call twice for the same step."""
    now = now or utcnow()
    rows = await Enrollment.raw(_DUE_LETTER, enrollment_id)
    if not rows or rows[0]["e_status"] != EnrollmentStatus.active:
        return SendResult(Outcome.already, "enrollment not active")
    due = _DueLetter.of(rows[0])
    enrollment, chain, step, lead = due.enrollment, due.chain, due.step, due.lead
    due_at = instant(enrollment.due_at)
    if enrollment.group != EnrollmentGroup.treatment or due_at is None or due_at > now:
        return SendResult(Outcome.not_due)
    if chain.status != ChainStatus.active:
        # Paused: the step stays due and is sent on resume; its ledger row keeps it single.
        return SendResult(Outcome.not_due, f"chain is {chain.status}")
    if step is None:
        await _exit(enrollment.id, "no more steps", EnrollmentStatus.completed)
        return SendResult(Outcome.completed)
    if not lead.email or lead.historical or lead.erased_at is not None:
        await _exit(enrollment.id, "no address")
        return SendResult(Outcome.exited, "no address")
    reason = exit_reason(due.converted, lead.stage, chain.exit_stage, due.left_topic)
    opens = next_send_time(now, lead.timezone if zone(lead.timezone) else chain.timezone,
                           chain.send_window_start, chain.send_window_end, chain.send_weekdays)
    if reason or opens > now:
        # A suppressed address leaves before anything else; on the way to a letter, the
        # claim itself checks it.
        if await is_suppressed(lead.email):
            await _exit(enrollment.id, "suppressed")
            return SendResult(Outcome.exited, "suppressed")
        if reason:
            await _exit(enrollment.id, reason)
            return SendResult(Outcome.exited, reason)
        return await _defer(enrollment.id, opens, "outside the send window")

    claim = await _claim(enrollment.id, step.id, lead.id, lead.email, now)
    if claim.suppressed:
        await _exit(enrollment.id, "suppressed")
        return SendResult(Outcome.exited, "suppressed")
    if claim.wait_until is not None:
        return await _defer(enrollment.id, claim.wait_until, "frequency cap")
    if claim.delivery_id is None:
        if claim.existing_status == DeliveryStatus.sent:
            # Marked sent by a person resolving an `unknown` row: go on with the chain.
            sent_at = utcnow()
            async with Delivery._meta.db.transaction():
                next_due = await _advance(enrollment.id, chain.id, step.position, sent_at, enrollment.next_position)
            return SendResult(Outcome.already, "sent earlier", next_due)
        return SendResult(Outcome.already, f"ledger row is {claim.existing_status or 'taken'}")
    delivery_id = claim.delivery_id

    # Until the letter is handed to the relay, any failure (a template error, a bad sender
    # name, the database, a refusal, a cancelled job) means nothing was sent: the row goes
    # back to failed and the letter is retried.
    try:
        composed = compose_letter(chain, step, lead, due.topic, due.offer, delivery_id, enrollment.id,
                                  enrollment.variant, now)
    except BaseException as exc:
        reason = f"not sent: {type(exc).__name__}: {exc}"
        log.error("chain %s step %s: %s", chain.id, step.position, reason)
        result = await _settle(_not_delivered(delivery_id, enrollment, reason, now))
        if not isinstance(exc, Exception):
            raise
        return result

    handed_over = False

    async def in_flight() -> None:
        # Recorded once the relay has taken the recipient, just before the letter's data:
        # a crash after this leaves a row in `sending` that names the letter, so it is
        # reported instead of being sent again. Only while the claim is still ours: a job
        # that waited so long for a connection that its claim was released (and maybe
        # taken by another job) must not send.
        nonlocal handed_over
        taken = await Delivery.raw(
            _IN_FLIGHT, str(composed.message["Message-ID"]), composed.subject[:300], composed.offer_kind,
            composed.variant, dump_json(composed.links), utcnow(), delivery_id, claim.attempt)
        if not taken:
            raise ClaimLost(f"delivery {delivery_id}: the claim was released while the letter waited")
        handed_over = True

    try:
        reply = await relay.send(composed.message, before_data=in_flight)
    except SmtpReplyError as exc:
        if exc.recipient_refused:
            await _settle(_bounce(delivery_id, lead.email, str(exc)))
            return SendResult(Outcome.bounced, str(exc))
        reason = f"{exc} (at {exc.stage.upper()})"
        if exc.stage in ("connect", "mail"):
            # The relay refused us (login, sender), not this letter: every letter waits the
            # same, so none uses up its attempts and no lead leaves its chain over it.
            log.error("relay refused the sender or login: %s", reason)
            return await _settle(_not_delivered(delivery_id, enrollment, reason, now, counts=False, retry_in=RELAY_RETRY))
        if exc.permanent:
            log.error("relay refused a letter at %s (not the address's fault): %s", exc.stage.upper(), exc)
        return await _settle(_not_delivered(delivery_id, enrollment, reason, now))
    except DeliveryUncertain as exc:
        await _settle(_mark_unknown(delivery_id, str(exc)))
        return SendResult(Outcome.unknown, str(exc))
    except ClaimLost as exc:
        log.warning("%s; not sent by this job", exc)
        return SendResult(Outcome.already, str(exc))
    except (ThrottleBusy, ThrottleUnavailable) as exc:
        # Our own send-rate limit, not the letter: try again soon, without using up an attempt.
        return await _settle(_not_delivered(delivery_id, enrollment, f"not sent: {exc}", now, counts=False,
                                            retry_in=timedelta(seconds=5)))
    except (OSError, aiosmtplib.SMTPException) as exc:
        # An outage of the relay is not the letter's fault: retried every few minutes for as
        # long as it lasts, never giving up on the lead.
        return await _settle(_not_delivered(delivery_id, enrollment, f"relay unreachable: {exc}", now, counts=False,
                                            retry_in=RELAY_RETRY))
    except asyncio.CancelledError:
        if handed_over:
            await _settle(_mark_unknown(delivery_id, "cancelled while the relay had the letter"))
        else:
            await _settle(_not_delivered(delivery_id, enrollment, "not sent: the job was cancelled", utcnow(),
                                         counts=False, retry_in=timedelta(0)))
        raise

    next_due = await _settle(_record_sent(delivery_id, enrollment.id, chain.id, step.position, reply,
                                          enrollment.next_position))
    return SendResult(Outcome.sent, reply, next_due)


@dataclass(frozen=True)
class Composed:
    """A step's letter for one lead, and what the ledger records about it."""

    message: EmailMessage
    subject: str
    offer_kind: str
    variant: str
    links: list[str]


def step_version(step: Step, variant: str) -> tuple[str, str, str]:
    """(subject, body, variant) to send: B's text for a lead in group B when the step has a B
    version; the recorded variant is empty when the step is not an A/B test."""
    has_b = bool(step.subject_b.strip() or step.body_markdown_b.strip())
    if not has_b:
        return step.subject, step.body_markdown, ""
    if variant == "B":
        return step.subject_b.strip() or step.subject, step.body_markdown_b.strip() or step.body_markdown, "B"
    return step.subject, step.body_markdown, "A"


async def compose(chain: Chain, step: Step, lead: Lead, delivery_id: int, enrollment_id: int, variant: str,
                  now: datetime, tracked: bool = True, message_id: str | None = None) -> Composed:
    """The letter for this step (the hot or cold offer on an offer step), as a MIME message
    with tracked links and an open pixel."""
    topic = await Topic.objects().where(Topic.id == chain.topic).first()
    offer = await choose_offer(chain, lead.id) if step.kind == StepKind.offer else None
    return compose_letter(chain, step, lead, topic, offer, delivery_id, enrollment_id, variant, now, tracked, message_id)


def compose_letter(chain: Any, step: Any, lead: Any, topic: Any, offer: Any, delivery_id: int, enrollment_id: int,
                   variant: str, now: datetime, tracked: bool = True, message_id: str | None = None) -> Composed:
    """`compose` with the topic and the chosen offer (None: not an offer step, or no such
    offer) already read; rows or anything with their fields."""
    subject, body, variant = step_version(step, variant)
    offer_kind = ""
    context = lead_context(lead, topic, chain) | {"unsubscribe_url": unsubscribe_url(lead.id),
                                                  "preferences_url": preferences_url(lead.id)}
    if step.kind == StepKind.offer and offer is not None:
        subject, body, offer_kind, variant = offer.subject, offer.body_markdown, offer.kind, ""
        context["offer"] = {"url": offer.call_to_action_url}
    letter = render_letter(subject, body, context, where=f"step {step.position}")
    links: list[str] = []
    if tracked:
        tracking = track(letter.html, delivery_id)
        letter, links = replace(letter, html=tracking.html), tracking.links
    settings = get_settings()
    envelope = Envelope(
        chain.sender_name or "leadkiln",
        chain.sender_email or address_of(settings.mail_from),
        lead.email,
        message_id or message_id_for(delivery_id, enrollment_id, step.position),
        context["unsubscribe_url"],
        context["preferences_url"],
    )
    return Composed(build_message(letter, envelope, sent_at=now), letter.subject, offer_kind, variant, links)


# Sent, and the step after it as it is now (read in the same transaction: a step added or
# moved while the letter waited for the relay counts).
_SENT = """
UPDATE delivery SET status = 'sent', sent_at = {}, smtp_reply = {} WHERE id = {}
RETURNING (SELECT position FROM step WHERE chain = {} AND position > {} ORDER BY position LIMIT 1) AS next_position,
          (SELECT delay_minutes FROM step WHERE chain = {} AND position > {} ORDER BY position LIMIT 1) AS next_delay
"""

_MOVE_ON = "UPDATE enrollment SET next_position = {}, due_at = {} WHERE id = {} AND next_position = {} RETURNING id"

# PostgreSQL does both in one statement, atomic by itself: one round trip instead of four.
_SENT_AND_MOVED_ON = """
WITH sent AS (UPDATE delivery SET status = 'sent', sent_at = {}, smtp_reply = {} WHERE id = {} RETURNING id),
next AS (SELECT position, delay_minutes FROM step WHERE chain = {} AND position > {} ORDER BY position LIMIT 1),
moved AS (UPDATE enrollment SET next_position = next.position,
                                due_at = CAST({} AS timestamptz) + make_interval(mins => next.delay_minutes)
          FROM next WHERE enrollment.id = {} AND enrollment.next_position = {} RETURNING enrollment.id),
finished AS (UPDATE enrollment SET status = 'completed', exit_reason = 'finished', due_at = NULL
             WHERE id = {} AND NOT EXISTS (SELECT 1 FROM next) RETURNING id)
SELECT (SELECT position FROM next) AS next_position, (SELECT delay_minutes FROM next) AS next_delay,
       EXISTS (SELECT 1 FROM moved) AS moved
"""


async def _record_sent(delivery_id: int, enrollment_id: int, chain_id: int, position: int, reply: str,
                       from_position: int) -> EnrollmentDue | None:
    sent_at = utcnow()
    if not isinstance(engine_finder(), SQLiteEngine):
        row = (await Delivery.raw(_SENT_AND_MOVED_ON, sent_at, reply[:500], delivery_id, chain_id, position,
                                  sent_at, enrollment_id, from_position, enrollment_id))[0]
        if row["next_position"] is None or not row["moved"]:
            return None
        return EnrollmentDue(enrollment_id, row["next_position"], sent_at + timedelta(minutes=row["next_delay"]))
    async with Delivery._meta.db.transaction():
        rows = await Delivery.raw(_SENT, sent_at, reply[:500], delivery_id, chain_id, position, chain_id, position)
        if not rows:
            # The row is gone (its enrollment or step deleted meanwhile): move on all the same.
            return await _advance(enrollment_id, chain_id, position, sent_at, from_position)
        next_position = rows[0]["next_position"]
        if next_position is None:
            await _exit(enrollment_id, "finished", EnrollmentStatus.completed)
            return None
        due_at = sent_at + timedelta(minutes=rows[0]["next_delay"])
        # Only an enrollment still at that place moves: a late duplicate job must not move a lead back.
        moved = await Enrollment.raw(_MOVE_ON, next_position, due_at, enrollment_id, from_position)
    return EnrollmentDue(enrollment_id, next_position, due_at) if moved else None


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
