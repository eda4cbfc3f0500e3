"""Public pages: landing pages with the capture form, and one-click unsubscribe."""

from __future__ import annotations

import logging
from typing import Any

from arq.connections import ArqRedis
from litestar import Controller, Request, get, post
from litestar.datastructures import CacheControlHeader, Cookie
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template
from litestar.status_codes import HTTP_200_OK, HTTP_404_NOT_FOUND, HTTP_422_UNPROCESSABLE_ENTITY

from content.chains import EnrollmentDue, queue_send
from content.delivery import is_suppressed, suppress
from content.letters import markdown_to_html
from content.tables import LandingPage, SuppressionReason
from landing.forms import FIELD_LABELS, page_fields, validate_capture
from landing.service import capture, new_cookie_id, page_by_slug, record_page_view
from landing.tables import Lead
from landing.tokens import TokenError, unsign
from server.settings import get_settings

log = logging.getLogger("leadkiln.landing")

VISITOR_COOKIE = "lk_vid"
TOUCH_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


async def enqueue_after_commit(arq: ArqRedis | None, lead_id: int, due: EnrollmentDue | None) -> None:
    """Queue the follow-up work; if Redis is away, the sweeper finds it in the database."""
    if arq is None:
        return
    try:
        if due is not None:
            await queue_send(arq, due)
        await arq.enqueue_job("rescore_lead", lead_id)
    except Exception:  # noqa: BLE001 - the capture is committed; the sweeper recovers the send.
        log.exception("could not enqueue follow-up work for lead %s", lead_id)


def _visitor_cookie(request: Request) -> tuple[str, list[Cookie]]:
    cookie_id = request.cookies.get(VISITOR_COOKIE, "")
    if 16 <= len(cookie_id) <= 64 and cookie_id.replace("-", "").replace("_", "").isalnum():
        return cookie_id, []
    cookie_id = new_cookie_id()
    secure = get_settings().public_url.startswith("https://")
    return cookie_id, [Cookie(key=VISITOR_COOKIE, value=cookie_id, max_age=365 * 86400, httponly=True, samesite="lax",
                              path="/", secure=secure)]


def _touch(request: Request) -> dict[str, str]:
    touch = {k: str(request.query_params.get(k))[:200] for k in TOUCH_KEYS if request.query_params.get(k)}
    referrer = request.headers.get("referer")
    if referrer:
        touch["referrer"] = referrer[:500]
    return touch


def _page_context(page: LandingPage, ebook: Any, topic: Any, values: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    return {
        "page": page,
        "ebook": ebook,
        "topic": topic,
        "body_html": markdown_to_html(page.body_markdown),
        "bullets": [b.strip() for b in page.bullets.splitlines() if b.strip()],
        "fields": page_fields(page.form_fields),
        "labels": FIELD_LABELS,
        "values": values,
        "errors": errors,
    }


class LandingController(Controller):
    """Landing pages under /l/<slug>."""

    path = "/l"

    @get("/{slug:str}")
    async def show(self, request: Request, slug: FromPath[str], arq: NamedDependency[ArqRedis | None]) -> Template:
        """Render a landing page and count the view (a known lead is rescored)."""
        found = await page_by_slug(slug)
        if found is None:
            return Template(template_name="landing/not_found.html", status_code=HTTP_404_NOT_FOUND)
        page, ebook, topic = found
        cookie_id, cookies = _visitor_cookie(request)
        lead_id = await record_page_view(cookie_id, page, topic.id, _touch(request), request.headers.get("user-agent", ""))
        if lead_id is not None:
            await enqueue_after_commit(arq, lead_id, None)
        return Template(
            template_name="landing/page.html", context=_page_context(page, ebook, topic, {}, {}), cookies=cookies
        )

    @post("/{slug:str}", status_code=HTTP_200_OK)
    async def submit(self, request: Request, slug: FromPath[str], arq: NamedDependency[ArqRedis | None]) -> Template:
        """Capture a lead: committed before the thank-you page, follow-ups queued after."""
        found = await page_by_slug(slug)
        if found is None:
            return Template(template_name="landing/not_found.html", status_code=HTTP_404_NOT_FOUND)
        page, ebook, topic = found
        form_data = await request.form()
        data = {k: str(v) for k, v in form_data.items() if isinstance(v, str)}
        cookie_id, cookies = _visitor_cookie(request)
        if data.get("website"):
            # A bot filled the honeypot: answer as if accepted, store nothing.
            return Template(template_name="landing/thanks.html",
                            context={"ebook": ebook, "topic": topic, "email": data.get("email", "")[:254]})
        form = validate_capture(data, page_fields(page.form_fields))
        if not form.ok:
            values = {k: v[:300] for k, v in data.items()} | {"consent": form.consent}
            return Template(
                template_name="landing/page.html",
                context=_page_context(page, ebook, topic, values, form.errors),
                status_code=HTTP_422_UNPROCESSABLE_ENTITY,
                cookies=cookies,
            )
        client_ip = request.client.host if request.client else ""
        result = await capture(page, ebook, topic, form, cookie_id, client_ip,
                               request.headers.get("user-agent", ""), _touch(request))
        await enqueue_after_commit(arq, result.lead_id, result.due)
        return Template(
            template_name="landing/thanks.html",
            context={"ebook": ebook, "topic": topic, "email": form.email},
            cookies=cookies,
        )


class UnsubscribeController(Controller):
    """One-click unsubscribe: POST unsubscribes (RFC 8058); GET only asks."""

    path = "/u"

    @get("/{token:str}")
    async def confirm(self, token: FromPath[str]) -> Template:
        """Ask before unsubscribing: link scanners follow GETs."""
        try:
            lead_id = unsign("unsubscribe", token)
        except TokenError as exc:
            return Template(template_name="landing/unsubscribe.html", context={"error": str(exc)}, status_code=400)
        lead = await Lead.select(Lead.email).where(Lead.id == lead_id).first()
        email = (lead or {}).get("email") or ""
        if email and await is_suppressed(email):
            return Template(template_name="landing/unsubscribe.html", context={"done": True, "already": True})
        return Template(template_name="landing/unsubscribe.html", context={"email": email})

    @post("/{token:str}", status_code=HTTP_200_OK)
    async def unsubscribe(self, token: FromPath[str], arq: NamedDependency[ArqRedis | None]) -> Template:
        """Suppress the lead's address and stop its chains at once."""
        try:
            lead_id = unsign("unsubscribe", token)
        except TokenError as exc:
            return Template(template_name="landing/unsubscribe.html", context={"error": str(exc)}, status_code=400)
        lead = await Lead.objects().where(Lead.id == lead_id).first()
        if lead is not None and lead.email:
            if await suppress(lead.email, SuppressionReason.unsubscribe, "one-click") is not None:
                await enqueue_after_commit(arq, lead.id, None)
        return Template(template_name="landing/unsubscribe.html", context={"done": True})


@get("/", include_in_schema=False)
async def index() -> Template:
    """List the published landing pages."""
    pages = await LandingPage.objects().where(LandingPage.published == True).order_by(LandingPage.title)  # noqa: E712
    return Template(template_name="landing/index.html", context={"pages": pages})




@get("/favicon.ico", include_in_schema=False, status_code=204, cache_control=CacheControlHeader(max_age=86400))
async def favicon() -> None:
    """No icon, and no 404 in every browser console (the admin's pages ask for one)."""
