"""Desk pages: the weekly sales report, previewed, downloaded as a PDF, or sent now."""

from __future__ import annotations

from arq.connections import ArqRedis
from litestar import Controller, Request, Response, get, post
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER

from admin import report
from admin.charts import CHART_CSS
from admin.desk.auth import page_context, requires
from admin.roles import SALES
from server.settings import get_settings


class ReportController(Controller):
    path = "/desk/report"
    guards = [requires(SALES)]

    @get("/")
    async def page(self, request: Request, sent: str | None = None) -> Template:
        """The report as it would go out now, its schedule, recipients and the weeks already sent."""
        settings = get_settings()
        data = await report.gather()
        next_send = report.scheduled_moment(data.end, settings.report_at, settings.report_timezone)
        return Template("desk/report/page.html", context=page_context(
            request, data=data, chart_css=CHART_CSS, local=report.local, next_send=next_send,
            recipients=await report.recipients(), history=await report.sent_reports(),
            week=report.week_key(data.end, settings.report_timezone), sent=sent,
            this_week=await report.this_week(data.end), report_to_set=bool(settings.report_to)))

    @get("/weekly.pdf")
    async def pdf(self) -> Response:
        """The report as a PDF, made now (WeasyPrint, off the event loop)."""
        data, pdf = await report.report_pdf()
        return Response(pdf, media_type="application/pdf", headers={
            "content-disposition": f'attachment; filename="{report.filename(data)}"', "cache-control": "no-store"})

    @post("/send", status_code=HTTP_303_SEE_OTHER)
    async def send(self, arq: ArqRedis | None) -> Redirect:
        """Send this week's report now instead of at its hour; a week's report goes out once."""
        if arq is None:
            return Redirect("/desk/report?sent=no-worker", status_code=HTTP_303_SEE_OTHER)
        row = await report.this_week()
        if row is not None and row["status"] != "failed":
            return Redirect("/desk/report?sent=already", status_code=HTTP_303_SEE_OTHER)
        key = report.week_key(report.utcnow(), get_settings().report_timezone)
        job = await arq.enqueue_job("send_weekly_report", True, _job_id=f"weekly-report-now:{key}")
        return Redirect(f"/desk/report?sent={'queued' if job else 'already'}", status_code=HTTP_303_SEE_OTHER)


HANDLERS = [ReportController]
