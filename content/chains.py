"""Chains and enrollment: which chain a lead joins, in which group, and when its next letter is due."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from content.tables import (
    Chain,
    ChainWait,
    Enrollment,
    EnrollmentGroup,
    EnrollmentStatus,
)
from landing.tables import TopicPreference

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


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo | None:
    """The IANA time zone of that name, or None for a blank or unknown one."""
    try:
        return ZoneInfo(name.strip()) if name and name.strip() else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def next_send_time(now: datetime, zone_name: str, start_hour: int, end_hour: int, weekdays: str) -> datetime:
    """The first moment at or after `now` when a letter may leave: between `start_hour` and
    `end_hour` (local wall-clock hours, end exclusive, 24 = midnight) on one of `weekdays`
    (0 = Monday), in the named zone (UTC when unknown). A window that is empty or inverted
    counts as the whole day: a misconfigured chain sends rather than stalls for ever."""
    tz = zone(zone_name) or timezone.utc
    start, end = max(0, min(23, start_hour)), max(1, min(24, end_hour))
    if end <= start:
        start, end = 0, 24
    days = {int(c) for c in weekdays if c.isdigit() and int(c) < 7} or set(range(7))
    local = now.astimezone(tz)
    for offset in range(8):
        day: date = local.date() + timedelta(days=offset)
        if day.weekday() not in days:
            continue
        opens = datetime(day.year, day.month, day.day, start, tzinfo=tz)
        closes = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(hours=end)
        if end == 24:
            following = day + timedelta(days=1)
            closes = datetime(following.year, following.month, following.day, tzinfo=tz)
        candidate = max(opens, local)
        if candidate < closes:
            return candidate.astimezone(timezone.utc)
    return now  # unreachable: some weekday in the next eight days is allowed


@dataclass(frozen=True)
class EnrollmentDue:
    """An enrollment whose next letter should be queued at `due_at`."""

    enrollment_id: int
    position: int
    due_at: datetime


def send_job_id(due: EnrollmentDue) -> str:
    """One queued job per enrollment and step: ARQ refuses a second job with the same id."""
    return f"send:{due.enrollment_id}:{due.position}"


# The topic's own newest active chain that has started, else the newest fallback chain;
# never for a lead that left the topic.
_FIRST_STEP = """
SELECT c.id AS chain, c.holdout_percent AS holdout, s.position AS position, s.delay_minutes AS delay,
       CASE WHEN c.topic = {topic} THEN 'download' ELSE 'fallback' END AS reason
FROM chain c JOIN step s ON s.chain = c.id
WHERE (c.topic = {topic} OR c.is_fallback) AND c.status = 'active' AND (c.starts_at IS NULL OR c.starts_at <= {now})
  AND NOT EXISTS (SELECT 1 FROM topic_preference p WHERE p.lead = {lead} AND p.topic = {topic} AND p.subscribed = FALSE)
ORDER BY CASE WHEN c.topic = {topic} THEN 0 ELSE 1 END, c.id DESC, s.position
LIMIT 1
"""

_WAIT = "INSERT INTO chain_wait (lead, topic, since) VALUES ({}, {}, {}) ON CONFLICT DO NOTHING"


def _numbered(query: str, **names: object) -> tuple[str, list[object]]:
    """Piccolo's raw queries take positional `{}`; this lets a query name a value twice."""
    values: list[object] = []

    def take(name: str) -> str:
        values.append(names[name])
        return "{}"

    return re.sub(r"\{(\w+)\}", lambda m: take(m.group(1)), query), values


async def insert_enrollment(lead_id: int, chain_id: int, holdout: int, position: int, delay: int, reason: str,
                             now: datetime) -> EnrollmentDue | None:
    """Join the lead to the chain (once: a second call does nothing); what to queue, if anything."""
    group = assign_group(chain_id, lead_id, holdout)
    treated = group == EnrollmentGroup.treatment
    due_at = now + timedelta(minutes=delay) if treated else None
    variant = "A" if bucket("variant", chain_id, lead_id) < 50 else "B"
    inserted = await Enrollment.raw(
        'INSERT INTO enrollment (lead, chain, "group", variant, status, next_position, due_at, exit_reason, reason, enrolled_at) '
        "VALUES ({}, {}, {}, {}, {}, {}, {}, '', {}, {}) ON CONFLICT DO NOTHING RETURNING id",
        lead_id, chain_id, group.value, variant, EnrollmentStatus.active.value, position, due_at, reason, now,
    )
    if not inserted or due_at is None:
        return None
    return EnrollmentDue(enrollment_id=inserted[0]["id"], position=position, due_at=due_at)


async def enroll(lead_id: int, topic_id: int, now: datetime | None = None) -> EnrollmentDue | None:
    """Enroll a lead that asked for the topic's ebook in the topic's active chain, else in the
    fallback chain; with neither, the lead waits (chain_wait) until a chain takes it. Returns
    what to queue, if anything.

    Call inside the caller's transaction so the enrollment commits with the capture. Two
    statements: a capture is on the landing page's hot path.
    """
    now = now or utcnow()
    query, values = _numbered(_FIRST_STEP, topic=topic_id, now=now, lead=lead_id)
    rows = await Chain.raw(query, *values)
    if not rows:
        if not await TopicPreference.exists().where(
            (TopicPreference.lead == lead_id) & (TopicPreference.topic == topic_id) & (TopicPreference.subscribed == False)  # noqa: E712
        ):
            await ChainWait.raw(_WAIT, lead_id, topic_id, now)
        return None
    first = rows[0]
    return await insert_enrollment(lead_id, first["chain"], first["holdout"], first["position"], first["delay"],
                                    first["reason"], now)


# A step whose letter is being sent, or may have been (unknown), is not due again: its row
# settles first, by its job, by report_stuck_deliveries or by a person. Filtered here, not
# after the LIMIT, so rows waiting for a person never crowd out the rest.
_DUE = """
SELECT e.id AS id, e.next_position AS position, e.due_at AS due_at
FROM enrollment e JOIN chain c ON c.id = e.chain
WHERE e.status = 'active' AND e."group" = 'treatment' AND e.due_at <= {} AND c.status = 'active'
  AND (e.due_at > {} OR (e.due_at = {} AND e.id > {}))
  AND NOT EXISTS (
    SELECT 1 FROM delivery d JOIN step s ON s.id = d.step
    WHERE d.enrollment = e.id AND s.position = e.next_position AND d.status IN ('claimed', 'sending', 'unknown'))
ORDER BY e.due_at, e.id
LIMIT {}
"""
_BEGINNING = datetime(1970, 1, 1, tzinfo=timezone.utc)


def instant(value: Any) -> datetime | None:
    """A timestamp read back from the database, aware in UTC (SQLite's raw queries give ISO
    text; None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


async def due_enrollments(now: datetime | None = None, limit: int = 10_000,
                          after: EnrollmentDue | None = None) -> list[EnrollmentDue]:
    """Treatment enrollments of live chains whose next letter is due and not in flight, oldest
    first, the page after `after`: the database, not Redis, decides."""
    since, since_id = (after.due_at, after.enrollment_id) if after is not None else (_BEGINNING, 0)
    rows = await Enrollment.raw(_DUE, now or utcnow(), since, since, since_id, limit)
    return [EnrollmentDue(r["id"], r["position"], instant(r["due_at"])) for r in rows]


async def all_due(now: datetime | None = None, page: int = 10_000, most: int = 1_000_000):
    """Every due step, a page at a time (for the sweeper: a backlog is queued in one sweep)."""
    now = now or utcnow()
    after, seen = None, 0
    while seen < most:
        rows = await due_enrollments(now, page, after)
        if rows:
            yield rows
        if len(rows) < page:
            return
        after, seen = rows[-1], seen + len(rows)


# Queue many send jobs in one round trip, the way ArqRedis.enqueue_job writes one (the job
# under its key, its id in the queue at its due time), skipping ids already queued or with
# a result kept. A queued id whose job a dead worker holds "in progress" (ARQ keeps that mark
# for its longest job timeout, an hour here) is freed when the step has been due for
# SEND_STUCK_AFTER: the ledger shows nobody sending it (due_enrollments filters those), and
# were a live job holding it after all, the ledger's claim still lets only one send.
_ENQUEUE_MANY = """
local queued, freed = {}, {}
for i = 1, #ARGV, 5 do
  local id, payload, score, ttl, old = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if redis.call('EXISTS', KEYS[2] .. id) == 0 and redis.call('EXISTS', KEYS[3] .. id) == 0 then
    redis.call('PSETEX', KEYS[2] .. id, ttl, payload)
    redis.call('ZADD', KEYS[1], score, id)
    table.insert(queued, id)
  elseif old == '1' and redis.call('DEL', KEYS[4] .. id) == 1 then
    table.insert(freed, id)
  end
end
return {queued, freed}
"""


@dataclass(frozen=True)
class Queued:
    """What a batch enqueue did: new jobs, and jobs freed from a dead worker."""

    queued: int
    freed: list[str]


async def queue_sends(redis: "ArqRedis", dues: list[EnrollmentDue], stuck_after: timedelta,
                      batch: int = 1000) -> Queued:
    """Queue the send jobs of many due steps, a thousand per round trip (the sweeper's way;
    `queue_send` is one job's)."""
    from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
    from arq.jobs import serialize_job

    now = utcnow()
    now_ms = int(now.timestamp() * 1000)
    queued, freed = 0, []
    for start in range(0, len(dues), batch):
        args: list[object] = []
        for due in dues[start:start + batch]:
            score = max(now_ms, int(due.due_at.timestamp() * 1000))
            payload = serialize_job("send_step", (due.enrollment_id,), {}, None, now_ms, serializer=redis.job_serializer)
            old = due.due_at <= now - stuck_after
            args += [send_job_id(due), payload, score, score - now_ms + redis.expires_extra_ms, "1" if old else "0"]
        result = await redis.eval(_ENQUEUE_MANY, 4, redis.default_queue_name, job_key_prefix, result_key_prefix,
                                  in_progress_key_prefix, *args)
        queued += len(result[0])
        freed += [x.decode() if isinstance(x, bytes) else x for x in result[1]]
    return Queued(queued, freed)


async def queue_send(redis: "ArqRedis", due: EnrollmentDue) -> bool:
    """Queue a step's send job for its due time; False if that job is already queued.

    Called only after the transaction that made the step due has committed.
    """
    # An overdue step runs now: a due time in the past would give the job a negative
    # expiry, which Redis refuses (a worker that was down for a day).
    defer_until = due.due_at if due.due_at > utcnow() else None
    job = await redis.enqueue_job("send_step", due.enrollment_id, _job_id=send_job_id(due), _defer_until=defer_until)
    return job is not None
