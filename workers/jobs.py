"""ARQ job functions: thin wrappers that call the domain services; each is safe to run twice."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any


from content.chains import EnrollmentDue, all_due, queue_send, queue_sends
from content.delivery import report_stuck_deliveries, send_due_step, stuck_after
from content.lifecycle import enroll_hot, enroll_waiting, refresh_waiting_counts
from content.ebooks import EbookUnavailable, rendered_ebook
from content.notices import due_notices, notice_job_id, send_notice as send_notice_service
from server.piccolo_conf import checkpoint
from scoring.report import record_training
from scoring.service import rescore_all, train
from scoring.service import rescore_lead as rescore_lead_service

log = logging.getLogger("leadkiln.worker")


async def send_step(ctx: dict[str, Any], enrollment_id: int) -> str:
    """Send an enrollment's due letter and queue the next one."""
    result = await send_due_step(enrollment_id, ctx["relay"])
    if result.next_due is not None:
        await queue_send(ctx["redis"], result.next_due)
    if result.outcome.value in ("retry", "bounced", "unknown", "gave_up"):
        log.warning("enrollment %s: %s %s", enrollment_id, result.outcome.value, result.detail)
    return result.outcome.value


async def follow_up(ctx: dict[str, Any], lead_id: int | None, notice_id: int | None = None,
                    due: tuple[int, int, str] | None = None) -> None:
    """What a capture, a confirmation or an event leaves to do: queue the letter a visitor
    asked for and the chain's next letter, and rescore the lead. One job, so the web
    process spends one Redis round trip on it."""
    if notice_id is not None:
        await ctx["redis"].enqueue_job("send_notice", notice_id, _job_id=notice_job_id(notice_id))
    if due is not None:
        enrollment_id, position, due_at = due
        await queue_send(ctx["redis"], EnrollmentDue(enrollment_id, position, datetime.fromisoformat(due_at)))
    if lead_id is not None:
        await rescore_lead(ctx, lead_id)


async def send_notice(ctx: dict[str, Any], notice_id: int) -> str:
    """Send a letter a visitor asked for (confirmation, download link, data request)."""
    result = await send_notice_service(notice_id, ctx["relay"])
    if result.status not in ("sent", "already"):
        log.warning("notice %s: %s %s", notice_id, result.status, result.detail)
    return result.status


async def render_ebook(ctx: dict[str, Any], ebook_id: int) -> str:
    """Render an edited ebook now, so the first download after the edit does not wait."""
    try:
        path = await rendered_ebook(ebook_id)
    except EbookUnavailable as exc:
        return f"not rendered: {exc}"
    return str(path)


async def render_stale_ebooks(ctx: dict[str, Any]) -> int:
    """Render every ebook whose text changed since its last rendering (edits in the admin)."""
    from content.tables import Ebook

    rendered = 0
    for row in await Ebook.select(Ebook.id).where(Ebook.uploaded_pdf.is_null() | (Ebook.uploaded_pdf == "")):
        result = await render_ebook(ctx, row["id"])
        rendered += not result.startswith("not rendered")
    return rendered


async def rescore_lead(ctx: dict[str, Any], lead_id: int) -> None:
    """Recompute a lead's topic scores after a new event; a lead that turned hot on a topic
    whose chain takes hot leads joins it at once."""
    await rescore_lead_service(lead_id)
    for due in await enroll_hot(lead_id):
        await queue_send(ctx["redis"], due)


async def rescore_everyone(ctx: dict[str, Any]) -> int:
    """Rescore every lead, so decay shows and rule changes apply."""
    report = await rescore_all()
    log.info("rescored %d leads in %.1fs (model %s); %d became hot", report.leads, report.seconds,
             report.model_version, report.became_hot)
    joined = 0
    for due in await enroll_hot(limit=1_000_000):
        joined += await queue_send(ctx["redis"], due)
    if joined:
        log.info("%d hot leads joined their topic's chain", joined)
    return report.leads


async def train_model(ctx: dict[str, Any]) -> str:
    """Train on the outcomes sales recorded (nightly, or queued by the admin's "Train a model
    now"); promote only a better model. The outcome is kept for the Scoring page."""
    report = await train()
    for note in report.notes:
        log.info("training: %s", note)
    await record_training(ctx["redis"], report)
    return report.version or "no model"


async def sweep(ctx: dict[str, Any]) -> int:
    """Queue every due step the database knows of: recovers what Redis lost."""
    await report_stuck_deliveries()
    await checkpoint()
    queued = 0
    # Leads that waited for a chain (an activation, a scheduled start) are enrolled first,
    # so their first letters go out in this same sweep.
    await enroll_waiting()
    await refresh_waiting_counts()
    try:
        # Every due step, page by page: a backlog (a day of downtime, a send window opening
        # on 100,000 letters) is queued in one sweep; what is queued already costs one EXISTS.
        async for dues in all_due():
            batch = await queue_sends(ctx["redis"], dues, stuck_after())
            queued += batch.queued
            for job_id in batch.freed:
                log.warning("%s: freed the job of a worker that died; it runs again", job_id)
    except Exception:  # noqa: BLE001 - the notices below still go; the next sweep retries
        log.exception("sweeper could not queue the due letters")
    for notice_id, attempts in await due_notices():
        try:
            queued += bool(await ctx["redis"].enqueue_job("send_notice", notice_id, _job_id=notice_job_id(notice_id, attempts)))
        except Exception:  # noqa: BLE001
            log.exception("sweeper could not queue notice %s", notice_id)
    if queued:
        log.info("sweeper queued %d due letters", queued)
    return queued


async def hand_off_hot_leads(ctx: dict[str, Any]) -> int:
    """Tell sales about leads that turned hot: record each crossing's letter and webhook
    deliveries once, then queue every letter and delivery that is due (retries too)."""
    from admin.alerts import alert_job_id, due_alerts, forget_erased, record_crossings
    from admin.webhooks import delivery_job_id, due_deliveries

    await forget_erased()
    recorded = await record_crossings()
    if recorded:
        log.info("%d leads turned hot: sales and the webhooks are told", recorded)
    queued = 0
    for alert_id, attempts in await due_alerts():
        queued += bool(await ctx["redis"].enqueue_job("send_hot_alert", alert_id, _job_id=alert_job_id(alert_id, attempts)))
    for delivery_id, attempts in await due_deliveries():
        queued += bool(await ctx["redis"].enqueue_job("post_webhook", delivery_id,
                                                      _job_id=delivery_job_id(delivery_id, attempts)))
    return queued


async def send_hot_alert(ctx: dict[str, Any], alert_id: int) -> str:
    """Send the letter telling a lead's owner (or the sales list) that it turned hot."""
    from admin.alerts import send_alert

    result = await send_alert(alert_id, ctx["relay"])
    if result.status not in ("sent", "already", "skipped"):
        log.warning("hot alert %s: %s %s", alert_id, result.status, result.detail)
    return result.status


async def post_webhook(ctx: dict[str, Any], delivery_id: int) -> str:
    """Attempt one webhook delivery (a failure is retried by the hand-off cron after its backoff)."""
    from admin.webhooks import deliver

    result = await deliver(delivery_id)
    if result.status not in ("delivered", "already"):
        log.warning("webhook delivery %s: %s %s", delivery_id, result.status, result.detail)
    return result.status


async def send_weekly_report(ctx: dict[str, Any], early: bool = False) -> str:
    """The weekly sales report, once a week at REPORT_AT (or now, from the desk's button)."""
    from admin.report import send_weekly_report as send_report

    result = await send_report(ctx["relay"], early=early)
    if result.status not in ("sent", "not_yet", "already"):
        log.warning("weekly report: %s %s", result.status, result.detail)
    return result.status
