"""Chains and enrollment: which chain a lead joins, in which group, and when its next letter is due."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from landing.tables import TopicPreference
from content.tables import (
    Chain,
    ChainStatus,
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentGroup,
    EnrollmentStatus,
    Step,
)


if TYPE_CHECKING:
    from arq.connections import ArqRedis


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def bucket(*parts: object) -> int:
    """A stable number 0-99 for the parts: the same lead lands in the same group every time."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100


def assign_group(chain_id: int, lead_id: int, holdout_percent: int) -> EnrollmentGroup:
    """Control if the lead's bucket falls in the holdout share, else treatment."""
    if bucket("group", chain_id, lead_id) < max(0, min(100, holdout_percent)):
        return EnrollmentGroup.control
    return EnrollmentGroup.treatment


@dataclass(frozen=True)
class EnrollmentDue:
    """An enrollment whose next letter should be queued at `due_at`."""

    enrollment_id: int
    position: int
    due_at: datetime


def send_job_id(due: EnrollmentDue) -> str:
    """One queued job per enrollment and step: ARQ refuses a second job with the same id."""
    return f"send:{due.enrollment_id}:{due.position}"


async def active_chain_for_topic(topic_id: int, now: datetime | None = None) -> Chain | None:
    """The topic's active chain whose start date has come, newest first."""
    now = now or utcnow()
    chains = (
        await Chain.objects()
        .where((Chain.topic == topic_id) & (Chain.status == ChainStatus.active))
        .order_by(Chain.id, ascending=False)
    )
    for chain in chains:
        if chain.starts_at is None or chain.starts_at <= now:
            return chain
    return None


async def enroll(lead_id: int, topic_id: int, now: datetime | None = None) -> EnrollmentDue | None:
    """Enroll a lead in the topic's active chain (once); returns what to queue, if anything.

    Call inside the caller's transaction so the enrollment commits with the capture.
    """
    now = now or utcnow()
    opted_out = await TopicPreference.exists().where(
        (TopicPreference.lead == lead_id) & (TopicPreference.topic == topic_id) & (TopicPreference.subscribed == False)  # noqa: E712
    )
    if opted_out:
        return None
    chain = await active_chain_for_topic(topic_id, now)
    if chain is None:
        return None
    first = await Step.objects().where(Step.chain == chain.id).order_by(Step.position).first()
    if first is None:
        return None
    group = assign_group(chain.id, lead_id, chain.holdout_percent)
    treated = group == EnrollmentGroup.treatment
    due_at = now + timedelta(minutes=first.delay_minutes) if treated else None
    inserted = (
        await Enrollment.insert(
            Enrollment(
                lead=lead_id,
                chain=chain.id,
                group=group,
                variant="A" if bucket("variant", chain.id, lead_id) < 50 else "B",
                status=EnrollmentStatus.active,
                next_position=first.position,
                due_at=due_at,
                enrolled_at=now,
            )
        )
        .on_conflict(action="DO NOTHING")
        .returning(Enrollment.id)
    )
    if not inserted or due_at is None:
        return None
    return EnrollmentDue(enrollment_id=inserted[0]["id"], position=first.position, due_at=due_at)


async def due_enrollments(now: datetime | None = None, limit: int = 10_000) -> list[EnrollmentDue]:
    """Treatment enrollments whose next letter is due: the database, not Redis, decides."""
    now = now or utcnow()
    rows = (
        await Enrollment.select(Enrollment.id, Enrollment.next_position, Enrollment.due_at)
        .where(
            (Enrollment.status == EnrollmentStatus.active)
            & (Enrollment.due_at <= now)
            & (Enrollment.group == EnrollmentGroup.treatment)
        )
        .order_by(Enrollment.due_at)
        .limit(limit)
    )
    if not rows:
        return []
    # A step whose letter is being sent, or may have been (unknown), is not due again:
    # its row settles first, by its job, by report_stuck_deliveries or by a person.
    held = await Delivery.select(Delivery.enrollment, Delivery.step.position.as_alias("position")).where(
        Delivery.enrollment.is_in([r["id"] for r in rows])
        & Delivery.status.is_in([DeliveryStatus.claimed, DeliveryStatus.sending, DeliveryStatus.unknown])
    )
    busy = {(h["enrollment"], h["position"]) for h in held}
    return [
        EnrollmentDue(r["id"], r["next_position"], r["due_at"])
        for r in rows
        if (r["id"], r["next_position"]) not in busy
    ]


async def queue_send(redis: "ArqRedis", due: EnrollmentDue) -> bool:
    """Queue a step's send job for its due time; False if that job is already queued.

    Called only after the transaction that made the step due has committed.
    """
    # An overdue step runs now: a due time in the past would give the job a negative
    # expiry, which Redis refuses (a worker that was down for a day).
    defer_until = due.due_at if due.due_at > utcnow() else None
    job = await redis.enqueue_job("send_step", due.enrollment_id, _job_id=send_job_id(due), _defer_until=defer_until)
    return job is not None
