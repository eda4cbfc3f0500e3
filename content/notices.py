"""One-off letters a visitor asked for (confirmation, download link, data request), with their own ledger."""

from __future__ import annotations

import asyncio
import json
import logging
from html import escape
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import aiosmtplib

from content.letters import RenderedLetter
from content.mail import DeliveryUncertain, Envelope, HandOver, Relay, SmtpReplyError, address_of, build_message
from content.tables import Notice, NoticeKind, NoticeStatus, Suppression, SuppressionReason
from landing.tables import Lead
from landing.tokens import preferences_url, public_link, sign, unsubscribe_url
from server.settings import get_settings

log = logging.getLogger("leadkiln.notices")

MAX_ATTEMPTS = 6
CONFIRM_LIFETIME = timedelta(days=3)
RIGHTS_LIFETIME = timedelta(hours=1)


async def queue_notice(lead_id: int, kind: NoticeKind, dedupe_key: str, payload: dict[str, Any],
                       now: datetime | None = None) -> int | None:
    """Record a letter to send (inside the caller's transaction); None if that key exists."""
    now = now or datetime.now(timezone.utc)
    rows = await Notice.raw(
        "INSERT INTO notice (lead, kind, dedupe_key, status, payload, to_address, subject, message_id, smtp_reply, "
        "attempts, created_at, next_attempt_at, sent_at) VALUES ({}, {}, {}, 'pending', {}, '', '', '', '', 0, {}, {}, NULL) "
        "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
        lead_id, kind.value, dedupe_key[:120], json.dumps(payload), now, now,
    )
    return rows[0]["id"] if rows else None


def notice_job_id(notice_id: int, attempt: int = 0) -> str:
    return f"notice:{notice_id}:{attempt}"


def _letter(subject: str, lines: list[str], link_text: str, link: str) -> RenderedLetter:
    """A plain transactional letter: a few paragraphs and one link, as text and HTML.

    The lines hold what a visitor typed (a name, an ebook title), so they are escaped as
    text, never read as Markdown: "[Verify](https://evil.example)" stays words, not a link.
    """
    text = "\n\n".join(lines + [f"{link_text}: {link}"]) + "\n"
    html_lines = "".join(f"<p>{escape(line)}</p>" for line in lines)
    html = f'{html_lines}<p><a href="{escape(link, quote=True)}">{escape(link_text)}</a></p>'
    return RenderedLetter(subject=subject, text=text, html=html)


def compose(notice: Notice, email: str, first_name: str) -> RenderedLetter:
    """The letter for a notice; links are signed for this lead only."""
    hello = f"Hello {first_name}," if first_name else "Hello,"
    payload = notice.payload or {}
    title = str(payload.get("title", "your ebook"))[:200]
    if notice.kind == NoticeKind.confirm:
        link = public_link(f"/c/{sign('confirm', {'l': notice.lead, 'p': payload.get('page')})}")
        return _letter(
            f"Please confirm: {title}",
            [hello, f"Someone (we hope you) asked for “{title}” with this address. Confirm it is you, and "
                    "the download starts. If it was not you, ignore this letter: nothing more will come.",
             f"The link works for {CONFIRM_LIFETIME.days} days."],
            "Confirm and download", link)
    if notice.kind == NoticeKind.ebook:
        link = public_link(f"/d/{payload.get('token', '')}")
        return _letter(
            f"Your ebook: {title}",
            [hello, f"Here is “{title}”. The link is yours alone and works for 7 days."],
            "Download the PDF", link)
    action = payload.get("action")
    link = public_link(f"/r/{sign('rights', {'l': notice.lead, 'a': action})}")
    if action == "erase":
        return _letter("Erase your data?",
                       [hello, "You asked us to erase your data. Open the link within an hour and press the button "
                               "to confirm. If it was not you, ignore this letter."],
                       "Erase my data", link)
    return _letter("Your data, as a file",
                   [hello, "You asked for a copy of the data we hold about you. The link works for one hour."],
                   "Download my data", link)


@dataclass(frozen=True)
class NoticeResult:
    """What happened to one notice; `retry_at` when it failed and will be tried again."""

    status: str
    detail: str = ""
    retry_at: datetime | None = None


async def _claim(notice_id: int, now: datetime) -> Notice | None:
    rows = await Notice.update(
        # next_attempt_at doubles as "claimed at", for spotting a worker that died mid-send.
        {Notice.status: NoticeStatus.sending, Notice.attempts: Notice.attempts + 1, Notice.next_attempt_at: now}
    ).where(
        (Notice.id == notice_id)
        & Notice.status.is_in([NoticeStatus.pending, NoticeStatus.failed])
        & (Notice.next_attempt_at <= now)
        & (Notice.attempts < MAX_ATTEMPTS)
    ).returning(Notice.id)
    if not rows:
        return None
    return await Notice.objects().output(load_json=True).get(Notice.id == notice_id)


async def _finish(notice_id: int, status: NoticeStatus, reply: str, **more: Any) -> None:
    values = {Notice.status: status, Notice.smtp_reply: reply[:500]}
    values.update({getattr(Notice, key): value for key, value in more.items()})
    await Notice.update(values).where(Notice.id == notice_id)


async def send_notice(notice_id: int, relay: Relay, now: datetime | None = None) -> NoticeResult:
    """Send a notice once: claimed before SMTP, so a second job (ARQ may run one twice) finds it taken."""
    from content.delivery import email_hash, suppress

    now = now or datetime.now(timezone.utc)
    notice = await _claim(notice_id, now)
    if notice is None:
        return NoticeResult("already")
    lead = await Lead.select(Lead.email, Lead.first_name, Lead.erased_at).where(Lead.id == notice.lead).first()
    if lead is None or not lead["email"] or lead["erased_at"] is not None:
        await _finish(notice.id, NoticeStatus.skipped, "the lead was erased")
        return NoticeResult("skipped", "erased")
    # The person asked for this letter a moment ago, so an unsubscribe does not stop it;
    # an address that bounced or complained is never written to again.
    blocked = await Suppression.exists().where(
        (Suppression.email_hash == email_hash(lead["email"]))
        & Suppression.reason.is_in([SuppressionReason.bounce, SuppressionReason.complaint])
    )
    if blocked:
        await _finish(notice.id, NoticeStatus.skipped, "the address bounced or complained before")
        return NoticeResult("skipped", "suppressed")
    settings = get_settings()
    try:
        letter = compose(notice, lead["email"], lead["first_name"] or "")
        envelope = Envelope(
            settings.mail_from.split("<")[0].strip() or "leadkiln",
            address_of(settings.mail_from),
            lead["email"],
            f"<lk.n{notice.id}@{settings.mail_domain}>",
            unsubscribe_url(notice.lead),
            preferences_url(notice.lead),
        )
        message = build_message(letter, envelope, sent_at=now)
        await Notice.update(
            {Notice.to_address: lead["email"], Notice.subject: letter.subject[:300],
             Notice.message_id: envelope.message_id}
        ).where(Notice.id == notice.id)
    except Exception as exc:
        return await _failed(notice, f"not sent: {type(exc).__name__}: {exc}", now)
    in_flight = HandOver()
    try:
        reply = await relay.send(message, before_data=in_flight)
    except asyncio.CancelledError:
        # Cancelled while waiting for a connection or a send-rate slot: certainly not sent,
        # so retried at once; cancelled during the letter's data: maybe sent, reported.
        if in_flight.done:
            await asyncio.shield(_finish(notice.id, NoticeStatus.unknown, "cancelled while the relay had the letter"))
        else:
            await asyncio.shield(_finish(notice.id, NoticeStatus.failed, "not sent: the job was cancelled",
                                         next_attempt_at=now))
        raise
    except SmtpReplyError as exc:
        if exc.recipient_refused:
            await _finish(notice.id, NoticeStatus.failed, str(exc), attempts=MAX_ATTEMPTS)
            await suppress(lead["email"], SuppressionReason.bounce, str(exc))
            return NoticeResult("bounced", str(exc))
        return await _failed(notice, f"{exc} (at {exc.stage.upper()})", now)
    except DeliveryUncertain as exc:
        await _finish(notice.id, NoticeStatus.unknown, str(exc))
        log.warning("notice %s may have been delivered (%s); not resent", notice.id, exc)
        return NoticeResult("unknown", str(exc))
    except (OSError, aiosmtplib.SMTPException) as exc:
        return await _failed(notice, f"relay unreachable: {exc}", now)
    await _finish(notice.id, NoticeStatus.sent, reply, sent_at=datetime.now(timezone.utc))
    return NoticeResult("sent", reply)


async def _failed(notice: Notice, reason: str, now: datetime) -> NoticeResult:
    attempts = notice.attempts
    if attempts >= MAX_ATTEMPTS:
        await _finish(notice.id, NoticeStatus.failed, reason)
        log.error("notice %s: gave up after %d attempts: %s", notice.id, attempts, reason)
        return NoticeResult("gave_up", reason)
    retry_at = now + timedelta(minutes=2 ** (attempts - 1))
    await _finish(notice.id, NoticeStatus.failed, reason, next_attempt_at=retry_at)
    return NoticeResult("retry", reason, retry_at)


async def due_notices(now: datetime | None = None, limit: int = 1000) -> list[tuple[int, int]]:
    """(id, attempts) of notices to send now: new ones the web process could not queue
    and failed ones whose backoff has passed. Also reports notices whose worker died."""
    now = now or datetime.now(timezone.utc)
    stuck = await Notice.update({Notice.status: NoticeStatus.unknown, Notice.smtp_reply: "worker died during SMTP"}).where(
        (Notice.status == NoticeStatus.sending) & (Notice.next_attempt_at < now - timedelta(seconds=get_settings().send_stuck_after))
    ).returning(Notice.id)
    for row in stuck:
        log.warning("notice %s was being sent when its worker died; marked unknown, not resent", row["id"])
    rows = await Notice.select(Notice.id, Notice.attempts).where(
        Notice.status.is_in([NoticeStatus.pending, NoticeStatus.failed])
        & (Notice.next_attempt_at <= now)
        & (Notice.attempts < MAX_ATTEMPTS)
    ).order_by(Notice.id).limit(limit)
    return [(r["id"], r["attempts"]) for r in rows]
