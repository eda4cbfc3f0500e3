"""The weekly sales report: its content (inert lead text), the PDF, the schedule, one letter a week."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.test_hot_alerts import hot_lead
from tests.staff import csrf_token, desk_login, make_staff

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
MONDAY_NINE = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)  # after the default "mon 07:00" UTC


def pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def report_letters(sink) -> list:
    return [m for m in sink.messages() if str(m["Message-ID"]).startswith("<lk.report")]


@pytest.fixture
async def relay(sink):
    from content.mail import Relay
    from server.settings import _parse_smtp_url

    relay = Relay(_parse_smtp_url(sink.url))
    yield relay
    await relay.close()


async def test_the_report_shows_hot_leads_with_reasons_and_lead_text_stays_text(client, catalog) -> None:
    from admin.report import gather, render_pdf, report_html

    lead = await hot_lead(client, "xss@example.com", first_name=SCRIPT, company=IMG)
    html = report_html(await gather())
    assert SCRIPT not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "xss@example.com" in html and "SEO" in html
    assert html.count("<svg") >= 2  # the funnel and hot leads per topic
    text = pdf_text(render_pdf(html))
    assert "alert(1)" in text and "xss@example.com" in text  # printed as the visitor typed it, nothing run
    assert "Hot leads per topic" in text and "Chains" in text
    assert lead.id


async def test_the_report_goes_out_once_a_week_at_its_hour(client, catalog, sink, relay) -> None:
    from admin.report import send_weekly_report
    from admin.tables import WeeklyReport

    await make_staff("sam", "sales")
    await make_staff("cleo", "content")
    await hot_lead(client, "hot@example.com", first_name="Hana")
    early = await send_weekly_report(relay, now=MONDAY_NINE - timedelta(hours=3))
    assert early.status == "not_yet" and not await WeeklyReport.count()
    first = await send_weekly_report(relay, now=MONDAY_NINE)
    again = await send_weekly_report(relay, now=MONDAY_NINE + timedelta(hours=5))
    assert (first.status, again.status) == ("sent", "already")
    letters = report_letters(sink)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["To"] == "sam@example.com"  # sales (and admins), not content
    attachment = next(part for part in letter.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    pdf = attachment.get_content()
    assert pdf.startswith(b"%PDF") and "Hana" in pdf_text(pdf)
    row = await WeeklyReport.objects().get(WeeklyReport.week_start == "2026-11-23")
    assert row.status == "sent" and row.recipients == "sam@example.com" and row.sent_at is not None
    next_week = await send_weekly_report(relay, now=MONDAY_NINE + timedelta(days=7))
    assert next_week.status == "sent" and len(report_letters(sink)) == 2


async def test_nobody_to_send_to_is_recorded_not_retried(catalog, sink, relay) -> None:
    from admin.report import MAX_ATTEMPTS, send_weekly_report
    from admin.tables import WeeklyReport

    result = await send_weekly_report(relay, now=MONDAY_NINE)
    assert result.status == "nobody" and not report_letters(sink)
    row = await WeeklyReport.objects().get(WeeklyReport.week_start == "2026-11-23")
    assert row.status == "failed" and row.attempts == MAX_ATTEMPTS and "REPORT_TO" in row.error
    assert (await send_weekly_report(relay, now=MONDAY_NINE + timedelta(hours=1))).status == "already"


async def test_a_relay_outage_fails_the_attempt_and_the_next_run_sends_it(catalog, sink, relay) -> None:
    from admin.report import send_weekly_report
    from admin.tables import WeeklyReport
    from content.mail import Relay
    from server.embedded import free_port
    from server.settings import _parse_smtp_url

    await make_staff("sam", "sales")
    down = Relay(_parse_smtp_url(f"smtp://127.0.0.1:{free_port()}"))
    failed = await send_weekly_report(down, now=MONDAY_NINE)
    await down.close()
    assert failed.status == "failed"
    row = await WeeklyReport.objects().get(WeeklyReport.week_start == "2026-11-23")
    assert row.status == "failed" and row.attempts == 1 and "relay" in row.error
    assert (await send_weekly_report(relay, now=MONDAY_NINE + timedelta(minutes=10))).status == "sent"
    assert len(report_letters(sink)) == 1
    assert (await WeeklyReport.objects().get(WeeklyReport.week_start == "2026-11-23")).attempts == 2


async def test_sales_download_the_pdf_and_content_cannot(client, catalog) -> None:
    await hot_lead(client, "pdf@example.com", first_name=SCRIPT)
    await make_staff("sam", "sales")
    await make_staff("cleo", "content")
    client.cookies.clear()
    await desk_login(client, "sam")
    page = await client.get("/desk/report", headers={"accept": "text/html"})
    assert page.status_code == 200 and "Download the PDF" in page.text and SCRIPT not in page.text
    pdf = await client.get("/desk/report/weekly.pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    assert "attachment" in pdf.headers["content-disposition"]
    client.cookies.clear()
    await desk_login(client, "cleo")
    assert (await client.get("/desk/report/weekly.pdf")).status_code == 403
    assert (await client.get("/desk/report", headers={"accept": "text/html"})).status_code == 403


async def test_send_now_queues_one_job_a_week(client, catalog) -> None:
    from arq import create_pool

    from workers.settings import redis_settings

    await make_staff("sam", "sales")
    await desk_login(client, "sam")
    token = await csrf_token(client, "/desk/report")
    first = await client.post("/desk/report/send", data={"_csrf_token": token})
    second = await client.post("/desk/report/send", data={"_csrf_token": token})
    assert first.headers["location"] == "/desk/report?sent=queued"
    assert second.headers["location"] == "/desk/report?sent=already"
    pool = await create_pool(redis_settings())
    try:
        queued = [job for job in await pool.queued_jobs() if job.function == "send_weekly_report"]
    finally:
        await pool.aclose()
    assert len(queued) == 1 and queued[0].args == (True,)


async def test_a_report_sent_this_week_is_not_offered_again(client, catalog, sink, relay) -> None:
    from arq import create_pool

    from admin.report import send_weekly_report
    from workers.settings import redis_settings

    await make_staff("sam", "sales")
    assert (await send_weekly_report(relay, early=True)).status == "sent"
    await desk_login(client, "sam")
    page = await client.get("/desk/report", headers={"accept": "text/html"})
    assert "sent</span>" in page.text and "Send this week's report now" not in page.text
    token = await csrf_token(client, "/desk/report")
    again = await client.post("/desk/report/send", data={"_csrf_token": token})
    assert again.headers["location"] == "/desk/report?sent=already"
    pool = await create_pool(redis_settings())
    try:
        assert not [job for job in await pool.queued_jobs() if job.function == "send_weekly_report"]
    finally:
        await pool.aclose()
    assert len(report_letters(sink)) == 1


async def test_a_job_cancelled_while_building_the_pdf_leaves_the_week_to_the_next_run(catalog, sink, relay, monkeypatch) -> None:
    import asyncio

    from admin import report
    from admin.tables import WeeklyReport

    await make_staff("sam", "sales")
    real = report.report_pdf

    async def cancelled(now=None):
        raise asyncio.CancelledError

    monkeypatch.setattr(report, "report_pdf", cancelled)
    with pytest.raises(asyncio.CancelledError):
        await report.send_weekly_report(relay, now=MONDAY_NINE)
    row = await WeeklyReport.objects().where(WeeklyReport.week_start == "2026-11-23").first()
    assert row is None or row.status == "failed"  # nothing claimed for good
    monkeypatch.setattr(report, "report_pdf", real)
    assert (await report.send_weekly_report(relay, now=MONDAY_NINE + timedelta(minutes=10))).status == "sent"
    assert len(report_letters(sink)) == 1


async def test_a_report_that_cannot_be_built_says_why_and_is_tried_again(catalog, sink, relay, monkeypatch) -> None:
    from admin import report
    from admin.tables import WeeklyReport

    await make_staff("sam", "sales")
    real = report.render_pdf

    def broken(html: str) -> bytes:
        raise RuntimeError("fonts missing")

    monkeypatch.setattr(report, "render_pdf", broken)
    assert (await report.send_weekly_report(relay, now=MONDAY_NINE)).status == "failed"
    row = await WeeklyReport.objects().get(WeeklyReport.week_start == "2026-11-23")
    assert row.status == "failed" and "fonts missing" in row.error and row.attempts == 1
    monkeypatch.setattr(report, "render_pdf", real)
    assert (await report.send_weekly_report(relay, now=MONDAY_NINE + timedelta(minutes=10))).status == "sent"
    assert len(report_letters(sink)) == 1
