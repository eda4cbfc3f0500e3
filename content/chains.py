"""Chains and enrollment: which chain a lead joins, in which group, and when its next letter is due."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from content.tables import (
    Chain,
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentGroup,
    EnrollmentStatus,
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


_FIRST_STEP = """
SELECT c.id AS chain, c.holdout_percent AS holdout, s.position AS position, s.delay_minutes AS delay
FROM chain c JOIN step s ON s.chain = c.id
WHERE c.topic = {} AND c.status = 'active' AND (c.starts_at IS NULL OR c.starts_at <= {})
  AND NOT EXISTS (SELECT 1 FROM topic_preference p WHERE p.lead = {} AND p.topic = c.topic AND p.subscribed = FALSE)
ORDER BY c.id DESC, s.position
LIMIT 1
"""


async def enroll(lead_id: int, topic_id: int, now: datetime | None = None) -> EnrollmentDue | None:
    """Enroll a lead in the topic's newest active chain whose start has come (once), unless
    the lead left that topic; returns what to queue, if anything.

    Call inside the caller's transaction so the enrollment commits with the capture. Two
    statements: a capture is on the landing page's hot path.
    """
    now = now or utcnow()
    rows = await Chain.raw(_FIRST_STEP, topic_id, now, lead_id)
    if not rows:
        return None
    first = rows[0]
    group = assign_group(first["chain"], lead_id, first["holdout"])
    treated = group == EnrollmentGroup.treatment
    due_at = now + timedelta(minutes=first["delay"]) if treated else None
    variant = "A" if bucket("variant", first["chain"], lead_id) < 50 else "B"
    inserted = await Enrollment.raw(
        'INSERT INTO enrollment (lead, chain, "group", variant, status, next_position, due_at, exit_reason, enrolled_at) '
        "VALUES ({}, {}, {}, {}, {}, {}, {}, '', {}) ON CONFLICT DO NOTHING RETURNING id",
        lead_id, first["chain"], group.value, variant, EnrollmentStatus.active.value, first["position"], due_at, now,
    )
    if not inserted or due_at is None:
        return None
    return EnrollmentDue(enrollment_id=inserted[0]["id"], position=first["position"], due_at=due_at)


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
