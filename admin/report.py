"""The weekly sales report: hot leads per topic with their reasons, the funnel and the chains'
results, drawn with the same SVG charts as the desk pages, rendered to PDF by WeasyPrint, and
sent once a week (a ledger row per week, so a schedule never sends it twice)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any
from zoneinfo import ZoneInfo

import aiosmtplib
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from admin import charts
from admin.tables import ReportStatus, Role, StaffRole, WeeklyReport
from content.dashboard import ChainSummary, Funnel, Period, chain_summaries, lead_funnel
from content.mail import LETTER_POLICY, DeliveryUncertain, HandOver, Relay, SmtpReplyError, address_of
from scoring.ranking import LeadFilter, RankedLead, ranked_leads
from server.settings import get_settings

log = logging.getLogger("leadkiln.report")

LEADS_PER_TOPIC = 10
MAX_ATTEMPTS = 5
WEEK = Period("week", 7, "The last 7 days")
TEMPLATES = Environment(loader=FileSystemLoader(str(__import__("pathlib").Path(__file__).parent / "templates")),
                        autoescape=select_autoescape(default=True, default_for_string=True))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class TopicLeads:
    topic_id: int
    topic_name: str
    total: int
    leads: list[RankedLead]


@dataclass
class WeeklyData:
    """What the report shows, gathered in one place so the PDF and the desk page agree."""

    start: datetime
    end: datetime
    zone: str
    funnel: Funnel
    topics: list[TopicLeads]
    chains: list[ChainSummary]
    became_hot: int = 0
    won: int = 0
    charts: dict[str, Markup] = field(default_factory=dict)


async def _count_since(kind: str, start: datetime, end: datetime) -> int:
    from landing.tables import Event, LeadChange

    if kind == "became_hot":
        from scoring.service import BECAME_HOT

        return await Event.count().where((Event.type == BECAME_HOT) & (Event.occurred_at >= start) & (Event.occurred_at < end))
    return await LeadChange.count().where((LeadChange.field == "stage") & (LeadChange.new_value == "won")
                                          & (LeadChange.changed_at >= start) & (LeadChange.changed_at < end))


async def gather(now: datetime | None = None) -> WeeklyData:
    """The 7 days up to `now`: hot leads per topic (top ten, with reasons), the funnel, every chain that ran."""
    from scoring.ranking import topics as all_topics

    now = now or utcnow()
    start = now - timedelta(days=7)
    topics = []
    for topic in await all_topics():
        ranking = await ranked_leads(LeadFilter(topic_id=topic["id"], hot_only=True), limit=LEADS_PER_TOPIC)
        topics.append(TopicLeads(topic["id"], topic["name"], ranking.total, ranking.rows))
    chains = [c for c in await chain_summaries(now) if c.state != "draft" or c.total_enrolled]
    data = WeeklyData(start=start, end=now, zone=get_settings().report_timezone, funnel=await lead_funnel(WEEK, now),
                      topics=topics, chains=chains, became_hot=await _count_since("became_hot", start, now),
                      won=await _count_since("won", start, now))
    data.charts = draw(data)
    return data


def draw(data: WeeklyData) -> dict[str, Markup]:
    """The report's charts: the same functions the desk pages draw with."""
    drawn = {
        "funnel": charts.funnel(data.funnel.stages(), title="Visitors to won, last 7 days"),
        "hot_per_topic": charts.bar_chart([t.topic_name for t in data.topics], [t.total for t in data.topics],
                                          title="Hot leads per topic now"),
    }
    for chain in data.chains:
        if chain.experiment is not None:
            drawn[f"chain_{chain.id}"] = charts.lift_chart(chain.experiment, title=f"{chain.name}: conversion, treatment vs control")
    return drawn


def local(moment: datetime | None, zone: str) -> str:
    if moment is None:
        return ""
    return moment.astimezone(ZoneInfo(zone)).strftime("%a %d %b %Y %H:%M")


def report_html(data: WeeklyData) -> str:
    """The report as one self-contained HTML document (no external resources: WeasyPrint fetches nothing)."""
    template = TEMPLATES.get_template("desk/report/weekly.html")
    return template.render(data=data, chart_css=charts.CHART_CSS, local=local,
                           public_url=get_settings().public_url)


def _refuse_everything():
    from weasyprint.urls import URLFetcher

    class NoFetching(URLFetcher):
        def fetch(self, url: str, headers: Any = None):
            raise ValueError(f"the report loads nothing from outside: {url[:80]!r}")

    return NoFetching()


def render_pdf(html: str) -> bytes:
    """HTML to PDF; slow and synchronous: call it in a thread."""
    from weasyprint import HTML

    return HTML(string=html, url_fetcher=_refuse_everything()).write_pdf()


async def report_pdf(now: datetime | None = None) -> tuple[WeeklyData, bytes]:
    data = await gather(now)
    return data, await asyncio.to_thread(render_pdf, report_html(data))


def filename(data: WeeklyData) -> str:
    return f"leadkiln-weekly-{data.end.astimezone(ZoneInfo(data.zone)).date().isoformat()}.pdf"


# Schedule and sending


def scheduled_moment(now: datetime, report_at: tuple[int, int, int], zone: str) -> datetime:
    """This week's sending moment (in the report's zone), which may still be ahead of `now`."""
    weekday, hour, minute = report_at
    here = now.astimezone(ZoneInfo(zone))
    monday = here.date() - timedelta(days=here.weekday())
    day = monday + timedelta(days=weekday)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(zone)).astimezone(timezone.utc)


def week_key(moment: datetime, zone: str) -> str:
    """The ledger key: the Monday (in the report's zone) of the week a scheduled send belongs to."""
    here = moment.astimezone(ZoneInfo(zone)).date()
    return (here - timedelta(days=here.weekday())).isoformat()


async def recipients() -> list[str]:
    """REPORT_TO, else every active admin and sales user with an address."""
    settings = get_settings()
    if settings.report_to:
        return list(settings.report_to)
    from piccolo.apps.user.tables import BaseUser

    rows = await StaffRole.select(StaffRole.user.email.as_alias("email"), StaffRole.user.active.as_alias("active")).where(
        StaffRole.role.is_in([Role.admin.value, Role.sales.value]))
    found = {r["email"].strip() for r in rows if r["active"] and r["email"] and "@" in r["email"]}
    for user in await BaseUser.select(BaseUser.id, BaseUser.email).where(
            (BaseUser.superuser == True) & (BaseUser.active == True)):  # noqa: E712 - superusers without a role row are admins
        if user["email"] and "@" in user["email"] and not await StaffRole.exists().where(StaffRole.user == user["id"]):
            found.add(user["email"].strip())
    return sorted(found)


def build_letter(data: WeeklyData, pdf: bytes, to: list[str], message_id: str, sent_at: datetime) -> EmailMessage:
    settings = get_settings()
    message = EmailMessage(policy=LETTER_POLICY)
    message["From"] = formataddr((settings.mail_from.split("<")[0].strip() or "leadkiln", address_of(settings.mail_from)))
    message["To"] = ", ".join(to)
    message["Subject"] = f"Weekly sales report: {sum(t.total for t in data.topics)} hot leads, {data.became_hot} new this week"
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    lines = [f"The weekly report for {local(data.start, data.zone)} to {local(data.end, data.zone)} is attached.", "",
             f"Leads turned hot: {data.became_hot}. Won: {data.won}.", ""]
    lines += [f"{t.topic_name}: {t.total} hot" for t in data.topics]
    lines += ["", f"Hot leads: {settings.public_url}/desk/hot", ""]
    message.set_content("\n".join(lines))
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename=filename(data))
    return message


@dataclass(frozen=True)
class SendResult:
    status: str
    detail: str = ""


async def this_week(now: datetime | None = None) -> dict[str, Any] | None:
    """This week's ledger row, if the report was asked for or sent this week."""
    key = week_key(now or utcnow(), get_settings().report_timezone)
    return await WeeklyReport.select().where(WeeklyReport.week_start == key).first()


async def _claim(key: str) -> bool:
    """Take this week's row (new, or failed with attempts left) for the SMTP exchange; False if it
    is sent, in flight or given up."""
    await WeeklyReport.insert(WeeklyReport(week_start=key, status=ReportStatus.failed, error="not sent yet")).on_conflict(
        action="DO NOTHING")
    taken = await WeeklyReport.update({WeeklyReport.status: ReportStatus.sending, WeeklyReport.attempts: WeeklyReport.attempts + 1}).where(
        (WeeklyReport.week_start == key) & (WeeklyReport.status == ReportStatus.failed)
        & (WeeklyReport.attempts < MAX_ATTEMPTS)).returning(WeeklyReport.id)
    return bool(taken)


async def send_weekly_report(relay: Relay, now: datetime | None = None, early: bool = False) -> SendResult:
    """Send this week's report once its time has come (or `early`, from the desk's button, which
    then is this week's report).

    Everything slow (the recipients, the PDF) is done before the week's row is claimed, so only
    the SMTP exchange happens under the claim. A job cancelled before the relay had the letter
    hands the row back (`failed`, retried at the next run); once the relay may have it, the row
    stays `sending`: never resent by itself (see README)."""
    settings = get_settings()
    now = now or utcnow()
    if not early and now < scheduled_moment(now, settings.report_at, settings.report_timezone):
        return SendResult("not_yet")
    key = week_key(now, settings.report_timezone)
    row = await WeeklyReport.select(WeeklyReport.status, WeeklyReport.attempts).where(WeeklyReport.week_start == key).first()
    if row is not None and (row["status"] != ReportStatus.failed or row["attempts"] >= MAX_ATTEMPTS):
        return SendResult("already")
    to = await recipients()
    if not to:
        if await _claim(key):
            await _finish(key, ReportStatus.failed, "nobody to send it to: set REPORT_TO or give a sales user an address",
                          attempts=MAX_ATTEMPTS)
        return SendResult("nobody")
    try:
        data, pdf = await report_pdf(now)
        message = build_letter(data, pdf, to, f"<lk.report.{key}@{settings.mail_domain}>", now)
    except Exception as exc:  # noqa: BLE001 - kept on the row for the admin, retried at the next run
        log.exception("weekly report %s not built", key)
        if await _claim(key):
            await _finish(key, ReportStatus.failed, f"not built: {type(exc).__name__}: {exc}")
        return SendResult("failed", str(exc))
    if not await _claim(key):
        return SendResult("already")
    await WeeklyReport.update({WeeklyReport.recipients: ", ".join(to)}).where(WeeklyReport.week_start == key)
    in_flight = HandOver()
    try:
        reply = await relay.send(message, before_data=in_flight)
    except DeliveryUncertain as exc:
        await _finish(key, ReportStatus.sending, f"maybe delivered, not resent: {exc}")
        return SendResult("unknown", str(exc))
    except (SmtpReplyError, OSError, aiosmtplib.SMTPException) as exc:
        await _finish(key, ReportStatus.failed, f"relay: {exc}")
        return SendResult("failed", str(exc))
    except BaseException:
        if in_flight.done:
            await asyncio.shield(_finish(key, ReportStatus.sending, "cancelled while the relay had the letter: not resent"))
        else:
            await asyncio.shield(_finish(key, ReportStatus.failed, "cancelled before the relay had it: sent at the next run"))
        raise
    await _finish(key, ReportStatus.sent, "", sent_at=utcnow())
    log.info("weekly report %s sent to %d recipients (%s)", key, len(to), reply)
    return SendResult("sent", reply)


async def _finish(key: str, status: ReportStatus, error: str, **more: Any) -> None:
    values = {WeeklyReport.status: status, WeeklyReport.error: error[:1000]}
    values.update({getattr(WeeklyReport, name): value for name, value in more.items()})
    await WeeklyReport.update(values).where(WeeklyReport.week_start == key)


async def sent_reports(limit: int = 12) -> list[dict[str, Any]]:
    return await WeeklyReport.select().order_by(WeeklyReport.week_start, ascending=False).limit(limit)
