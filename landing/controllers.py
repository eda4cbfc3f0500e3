"""Public pages: landing pages and their form, downloads, confirmations, preferences, unsubscribe."""

from __future__ import annotations

import html
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode
from uuid import uuid4

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.exceptions import ClientException
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_303_SEE_OTHER,
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_410_GONE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from content.chains import EnrollmentDue
from content.delivery import is_suppressed, suppress
from content.ebooks import EbookUnavailable, LinkRefused, use_download_link
from content.notices import queue_notice
from content.tables import LandingPage, NoticeKind, SuppressionReason
from landing.cookies import cookie_header
from landing.forms import FIELD_LABELS, page_fields, validate_capture
from landing.pageviews import PageView, PageViewBuffer
from landing.ratelimit import hit, limit_key
from landing.rights import erase_lead, export_lead, set_topic_preferences, topic_choices
from landing.service import (
    TOUCH_KEYS,
    KnownLead,
    PageBundle,
    capture,
    confirm,
    known_lead,
    new_cookie_id,
    page_by_slug,
)
from landing.tables import Lead
from landing.tokens import TokenError, sign, unsign
from litestar.utils.scope.state import ScopeState

from server.settings import get_settings

log = logging.getLogger("leadkiln.landing")

VISITOR_COOKIE = "lk_vid"
THANKS_LIFETIME = 24 * 3600
CONFIRM_LIFETIME = 3 * 86400
RIGHTS_LIFETIME = 3600


async def enqueue_after_commit(arq: ArqRedis | None, lead_id: int | None, due: EnrollmentDue | None = None,
                               notice_id: int | None = None) -> None:
    """Queue the follow-up work as one job (one Redis round trip on the form's hot path);
    if Redis is away, the sweeper finds the letters in the database."""
    if arq is None:
        return
    try:
        await enqueue_fresh(
            arq, "follow_up", lead_id, notice_id,
            (due.enrollment_id, due.position, due.due_at.isoformat()) if due is not None else None,
        )
    except Exception:  # noqa: BLE001 - the capture is committed; the sweeper recovers the letters.
        log.exception("could not enqueue follow-up work for lead %s", lead_id)


async def enqueue_fresh(arq: ArqRedis, function: str, *args: Any) -> None:
    """Queue a job with a new random id in one round trip.

    ArqRedis.enqueue_job spends three (WATCH, EXISTS, MULTI/EXEC) making sure a caller-chosen
    id is not queued twice; a fresh uuid cannot be, so this writes the same two keys (the
    job, and its place in the queue) in one MULTI/EXEC.
    """
    job_id = uuid4().hex
    now_ms = int(time.time() * 1000)
    job = serialize_job(function, args, {}, None, now_ms, serializer=arq.job_serializer)
    async with arq.pipeline(transaction=True) as pipe:
        pipe.psetex(job_key_prefix + job_id, arq.expires_extra_ms, job)
        pipe.zadd(arq.default_queue_name, {job_id: now_ms})
        await pipe.execute()


def client_ip(request: Request) -> str:
    """The visitor's address: the socket's, or X-Forwarded-For's last hop added by a trusted proxy."""
    peer = request.client.host if request.client else ""
    trusted = get_settings().trusted_proxies
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded and peer in trusted:
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        while hops and hops[-1] in trusted:
            hops.pop()
        if hops:
            return hops[-1][:45]
    return peer[:45]


def valid_cookie_id(value: str) -> bool:
    return 16 <= len(value) <= 64 and value.replace("-", "").replace("_", "").isalnum()


def _visitor_cookie(request: Request, fresh: bool = False) -> tuple[str, dict[str, str]]:
    """The visitor's id, and the header that sets it when it is new (empty when known)."""
    cookie_id = request.cookies.get(VISITOR_COOKIE, "")
    if valid_cookie_id(cookie_id) and not fresh:
        return cookie_id, {}
    cookie_id = new_cookie_id()
    secure = get_settings().public_url.startswith("https://")
    return cookie_id, {"set-cookie": cookie_header(VISITOR_COOKIE, cookie_id, max_age=365 * 86400, secure=secure)}


def _touch(request: Request) -> dict[str, str]:
    """UTM parameters and the referrer of this request: where the visitor came from."""
    query = request.query_params
    touch = {k: _printable(str(query[k]))[:200] for k in TOUCH_KEYS[:-1] if query.get(k)} if request.url.query else {}
    referrer = request.headers.get("referer")
    if referrer:
        touch["referrer"] = _printable(referrer)[:500]
    return {k: v for k, v in touch.items() if v}


def _printable(value: str) -> str:
    """Control characters dropped (a NUL in a UTM value broke PostgreSQL's JSON operators)."""
    return value if value.isprintable() else "".join(ch for ch in value if ch.isprintable())


def mask_email(email: str) -> str:
    """j•••@example.com: enough for a person to recognise, not to read off a shared screen."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}" if domain else "•••"


def _asked_fields(bundle: PageBundle, known: KnownLead | None) -> list[str]:
    """The page's optional fields; for a returning lead, the next ones it has not given."""
    fields = page_fields(bundle.page.form_fields)
    if known is None:
        return fields
    missing = [f for f in fields if not known.fields.get(f)]
    return missing[: max(0, bundle.page.progressive_fields)]


def _page_context(request: Request, bundle: PageBundle, known: KnownLead | None, values: dict[str, Any],
                  errors: dict[str, str], notice: str = "") -> dict[str, Any]:
    query = request.url.query
    return {
        "page": bundle.page,
        "ebook": bundle.ebook,
        "topic": bundle.topic,
        "body_html": bundle.body_html,
        "bullets": bundle.bullets,
        "fields": _asked_fields(bundle, known),
        "labels": FIELD_LABELS,
        "values": values,
        "errors": errors,
        "known_email": mask_email(known.email) if known else "",
        "action": f"/l/{bundle.page.slug}" + (f"?{query}" if query else ""),
        "cover_url": _cover_url(bundle),
        "public_url": get_settings().public_url,
        "notice": notice,
    }


def _cover_url(bundle: PageBundle) -> str:
    if bundle.page.cover_image:
        return f"/media/covers/pages/{bundle.page.cover_image}"
    if bundle.ebook.cover_image:
        return f"/media/covers/ebooks/{bundle.ebook.cover_image}"
    return ""


_TOKEN_MARK = "\x00lk-csrf\x00"
_ACTION_MARK = "\x00lk-action\x00"
_anonymous_pages: dict[int, tuple[PageBundle, str]] = {}


def _anonymous_page(request: Request, bundle: PageBundle) -> str:
    """The page for a visitor we do not know, with marks where the CSRF token and the form's
    address go; rendered again whenever the page's cached bundle is renewed."""
    cached = _anonymous_pages.get(bundle.page.id)
    if cached is not None and cached[0] is bundle:
        return cached[1]
    context = _page_context(request, bundle, None, {}, {}) | {
        "action": _ACTION_MARK,
        "csrf_input": f'<input type="hidden" name="_csrf_token" value="{_TOKEN_MARK}" />',
    }
    template = request.app.template_engine.get_template("landing/page.html")
    rendered = template.render(**context)
    _anonymous_pages[bundle.page.id] = (bundle, rendered)
    return rendered


def _message(title: str, text: str, status_code: int = HTTP_200_OK, headers: dict[str, str] | None = None,
             **more: Any) -> Template:
    """A page with a title, a line of text, and an optional link or button (a POST form)."""
    return Template(template_name="landing/message.html", context={"title": title, "text": text} | more,
                    status_code=status_code, headers=headers)


def _bad_link(exc: TokenError, advice: str = "", title: str = "This link cannot be used") -> Template:
    """A tampered, foreign or expired token: say which, and what to do instead."""
    text = f"The link {str(exc).removeprefix('this link ')}." + (f" {advice}" if advice else "")
    return _message(title, text, HTTP_400_BAD_REQUEST)


def _erased() -> Template:
    return _message("Nothing is kept here", "The data behind this link has been erased.", HTTP_410_GONE)


def _not_found() -> Template:
    return Template(template_name="landing/not_found.html", status_code=HTTP_404_NOT_FOUND)


class LandingController(Controller):
    """Landing pages under /l/<slug>: the page, its form, and the thank-you page."""

    path = "/l"
    include_in_schema = False

    @get("/{slug:str}")
    async def show(self, request: Request, slug: FromPath[str]) -> Template | Redirect | Response[str]:
        """Render a landing page and count the view (written in the next batch)."""
        bundle = await page_by_slug(slug)
        if bundle is None:
            return _not_found()
        if request.query_params.get("forget"):
            # "Not you?": a new visitor id, so the page asks for an email again.
            _, cookies = _visitor_cookie(request, fresh=True)
            return Redirect(f"/l/{slug}", status_code=HTTP_303_SEE_OTHER, headers=cookies)
        cookie_id, cookies = _visitor_cookie(request)
        known = await known_lead(cookie_id) if not cookies else None
        buffer: PageViewBuffer = request.app.state.page_views
        await buffer.add(PageView(cookie_id, bundle.page.slug, bundle.topic.id, _touch(request),
                                  request.headers.get("user-agent", ""), datetime.now(timezone.utc)))
        if known is not None:
            return Template(template_name="landing/page.html", context=_page_context(request, bundle, known, {}, {}),
                            headers=cookies)
        # Everyone else sees the same page but for the form's token and address: rendered
        # once per page version, then filled in.
        html_page = _anonymous_page(request, bundle)
        csrf_token = ScopeState.from_scope(request.scope).csrf_token  # set by the CSRF middleware
        csrf_token = csrf_token if isinstance(csrf_token, str) else ""
        query = request.url.query
        action = f"/l/{bundle.page.slug}" + (f"?{query}" if query else "")
        # Escaped unless plainly safe (a hex token; a path of letters, digits, - and _).
        plain_action = action.replace("/", "").replace("-", "").replace("_", "").isalnum()
        body = html_page.replace(_TOKEN_MARK, csrf_token if csrf_token.isalnum() else html.escape(csrf_token), 1).replace(
            _ACTION_MARK, action if plain_action else html.escape(action, quote=True), 1)
        return Response(body, media_type="text/html; charset=utf-8", headers=cookies)

    @post("/{slug:str}", status_code=HTTP_303_SEE_OTHER)
    async def submit(self, request: Request, slug: FromPath[str], arq: NamedDependency[ArqRedis | None]) -> Template | Redirect:
        """Capture a lead: committed before the thank-you page, follow-ups queued after."""
        bundle = await page_by_slug(slug)
        if bundle is None:
            return _not_found()
        data = await _form(request)
        cookie_id, cookies = _visitor_cookie(request)
        if data.get("website"):
            # A bot filled the honeypot: answer as if accepted, store nothing.
            token = sign("thanks", {"l": None, "p": bundle.page.id, "c": True})
            return Redirect(f"/l/{slug}/thanks?{urlencode({'t': token})}", status_code=HTTP_303_SEE_OTHER)
        known = await known_lead(cookie_id) if not cookies and not data.get("email", "").strip() else None
        form = validate_capture(data, _asked_fields(bundle, known), require_email=known is None)
        settings = get_settings()
        ip = client_ip(request)
        checks = [(limit_key("capture-ip", ip), settings.capture_limit_ip)]
        if form.email or known is not None:
            # A returning browser counts against its lead's address too: each capture mails it.
            checks.append((limit_key("capture-email", form.email or known.email), settings.capture_limit_email))
        verdict = await hit(arq, checks)
        values = {k: v[:300] for k, v in data.items() if k != "_csrf_token"} | {"consent": form.consent}
        if not verdict.allowed:
            response = Template(
                template_name="landing/page.html",
                context=_page_context(request, bundle, known, values, {},
                                      notice=f"Too many attempts. Please try again in {verdict.retry_after} seconds."),
                status_code=HTTP_429_TOO_MANY_REQUESTS, headers=cookies | {"Retry-After": str(verdict.retry_after)},
            )
            return response
        if not form.ok:
            return Template(
                template_name="landing/page.html",
                context=_page_context(request, bundle, known, values, form.errors),
                status_code=HTTP_422_UNPROCESSABLE_ENTITY,
                headers=cookies,
            )
        result = await capture(bundle, form, cookie_id, ip, request.headers.get("user-agent", ""), _touch(request),
                               known=known)
        await enqueue_after_commit(arq, result.lead_id, result.due, result.notice_id)
        # A browser recognised by its cookie gets the ebook by letter only: whoever sits at a
        # shared computer must not download a copy stamped with someone else's address.
        mailed = not form.email
        token = sign("thanks", {"l": result.lead_id, "p": bundle.page.id, "c": result.confirm_needed,
                                "d": None if mailed else result.download_token, "m": mailed})
        # Redirect after POST: a reload shows the thank-you page instead of posting again.
        return Redirect(f"/l/{slug}/thanks?{urlencode({'t': token})}", status_code=HTTP_303_SEE_OTHER, headers=cookies)

    @get("/{slug:str}/thanks")
    async def thanks(self, slug: FromPath[str], t: FromQuery[str] = "") -> Template:
        """The thank-you page: the download, or where the confirmation letter went."""
        bundle = await page_by_slug(slug)
        if bundle is None:
            return _not_found()
        try:
            state = unsign("thanks", t, max_age_seconds=THANKS_LIFETIME)
        except TokenError:
            # An old or altered address: the form again, with no harm done.
            return _message("This page has expired", "Fill in the form again to get the ebook.",
                            HTTP_400_BAD_REQUEST, link=f"/l/{slug}", link_text=f"Back to “{bundle.page.title}”")
        email = ""
        if state.get("l"):
            lead = await Lead.select(Lead.email).where(Lead.id == state["l"]).first()
            email = mask_email(lead["email"]) if lead and lead["email"] else ""
        return Template(template_name="landing/thanks.html", context={
            "ebook": bundle.ebook, "topic": bundle.topic, "email": email, "confirm": state.get("c", True),
            "mailed": state.get("m", False),
            "page_slug": bundle.page.slug,
            "download": f"/d/{state['d']}" if state.get("d") else "",
        })


async def _form(request: Request) -> dict[str, str]:
    """The submitted fields as text; a body that is not UTF-8 is refused clearly.

    A URL-encoded body is parsed here, strictly as UTF-8: Litestar reads raw bytes as
    latin-1, which would store "Léa" sent by a script as "LÃ©a".
    """
    content_type, _ = request.content_type
    if content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise ClientException("The form was not sent as UTF-8 text.") from None
        data: dict[str, str] = {}
        for key, value in pairs:
            data.setdefault(key, value)  # the first of repeated fields, as browsers send one
        return data
    try:
        form_data = await request.form()
    except UnicodeDecodeError:
        raise ClientException("The form was not sent as UTF-8 text.") from None
    return {key: value for key, value in form_data.items() if isinstance(value, str)}


class DownloadController(Controller):
    """Signed, per-lead download links: /d/<token>."""

    path = "/d"
    include_in_schema = False

    @get("/{token:str}", cache_control=CacheControlHeader(no_store=True, private=True))
    async def download(self, token: FromPath[str], arq: NamedDependency[ArqRedis | None]) -> Response[bytes] | Template:
        """Send the lead's copy of the ebook and count the download."""
        try:
            result = await use_download_link(token)
        except LinkRefused as exc:
            return _message("This link cannot be used", f"{exc} Fill in the form on the ebook's page to get a fresh link.",
                            HTTP_410_GONE if "not valid" not in str(exc) else HTTP_400_BAD_REQUEST)
        except EbookUnavailable as exc:
            log.error("download refused: %s", exc)
            return _message("The ebook is being prepared", "Please try again in a minute.", HTTP_503_SERVICE_UNAVAILABLE)
        await enqueue_after_commit(arq, result.lead_id)
        return Response(
            result.file.data, media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{result.file.filename}"',
                     "X-Content-Type-Options": "nosniff"},
        )


class ConfirmController(Controller):
    """Double opt-in: /c/<token> asks (link scanners follow GETs), its POST confirms."""

    path = "/c"
    include_in_schema = False

    @get("/{token:str}")
    async def ask(self, token: FromPath[str]) -> Template:
        """Show the confirm button."""
        try:
            unsign("confirm", token, max_age_seconds=CONFIRM_LIFETIME)
        except TokenError as exc:
            return _bad_link(exc, "Fill in the form again and we will send a new one.",
                             "This confirmation link cannot be used")
        return _message("One click to confirm", "Confirm that this address is yours, and the ebook is yours.",
                        button="Confirm and get the ebook", action=f"/c/{token}")

    @post("/{token:str}", status_code=HTTP_200_OK)
    async def confirm(self, token: FromPath[str], arq: NamedDependency[ArqRedis | None]) -> Template:
        """Confirm the address: the lead is confirmed, enrolled, and gets its download."""
        try:
            state = unsign("confirm", token, max_age_seconds=CONFIRM_LIFETIME)
        except TokenError as exc:
            return _bad_link(exc, "Fill in the form again and we will send a new one.",
                             "This confirmation link cannot be used")
        result = await confirm(int(state["l"]), int(state["p"]))
        if result is None:
            return _message("This confirmation link cannot be used", "The request it belongs to no longer exists.",
                            HTTP_410_GONE)
        await enqueue_after_commit(arq, result.lead_id, result.due)
        title = "You had already confirmed" if result.already else "Thank you for confirming"
        return _message(title, "Your ebook is ready.", link=f"/d/{result.download_token}", link_text="Download the PDF")


def _preference_lead(token: str) -> int:
    return int(unsign("preferences", token))


class PreferencesController(Controller):
    """The preference page every letter links to: topics, unsubscribe, export, erase."""

    path = "/p"
    include_in_schema = False

    @get("/{token:str}")
    async def show(self, token: FromPath[str], saved: FromQuery[str] = "") -> Template:
        """Show the lead's choices."""
        try:
            lead_id = _preference_lead(token)
        except TokenError as exc:
            return _bad_link(exc)
        lead = await Lead.select(Lead.email, Lead.erased_at).where(Lead.id == lead_id).first()
        if lead is None or lead["erased_at"] is not None or not lead["email"]:
            return _erased()
        return Template(template_name="landing/preferences.html", context={
            "token": token, "email": lead["email"], "topics": await topic_choices(lead_id),
            "unsubscribed": await is_suppressed(lead["email"]), "saved": saved,
        })

    @post("/{token:str}", status_code=HTTP_303_SEE_OTHER)
    async def save(self, request: Request, token: FromPath[str], arq: NamedDependency[ArqRedis | None]) -> Template | Redirect:
        """Save topic choices, unsubscribe from everything, or ask for an export or erasure."""
        try:
            lead_id = _preference_lead(token)
        except TokenError as exc:
            return _bad_link(exc)
        lead = await Lead.select(Lead.email, Lead.erased_at).where(Lead.id == lead_id).first()
        if lead is None or lead["erased_at"] is not None or not lead["email"]:
            return _erased()
        data = await _form(request)
        action = data.get("action", "save")
        if action == "save":
            chosen = {int(k.removeprefix("topic-")) for k in data if k.startswith("topic-") and k[6:].isdigit()}
            await set_topic_preferences(lead_id, chosen)
            await enqueue_after_commit(arq, lead_id)
            return Redirect(f"/p/{token}?saved=topics", status_code=HTTP_303_SEE_OTHER)
        if action == "unsubscribe":
            if await suppress(lead["email"], SuppressionReason.unsubscribe, "preference page") is not None:
                await enqueue_after_commit(arq, lead_id)
            return Redirect(f"/p/{token}?saved=unsubscribed", status_code=HTTP_303_SEE_OTHER)
        if action in ("export", "erase"):
            verdict = await hit(arq, [(limit_key(f"rights-{action}", str(lead_id)), get_settings().capture_limit_email)])
            if not verdict.allowed:
                return _message("Too many requests", f"Please try again in {verdict.retry_after} seconds.",
                                HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(verdict.retry_after)})
            now = datetime.now(timezone.utc)
            notice_id = await queue_notice(lead_id, NoticeKind.rights, f"rights:{action}:{lead_id}:{int(now.timestamp())}",
                                           {"action": action}, now)
            await enqueue_after_commit(arq, None, notice_id=notice_id)
            # The link goes to the mailbox, not this page: a forwarded letter must not
            # be enough to read or erase someone's data.
            return Redirect(f"/p/{token}?saved={action}", status_code=HTTP_303_SEE_OTHER)
        return _message("Unknown request", "Go back and choose one of the buttons.", HTTP_400_BAD_REQUEST)


def _rights_state(token: str) -> tuple[int, str]:
    state = unsign("rights", token, max_age_seconds=RIGHTS_LIFETIME)
    return int(state["l"]), str(state["a"])


class RightsController(Controller):
    """Links from the data-request letter: /r/<token> asks, its POST exports or erases."""

    path = "/r"
    include_in_schema = False

    @get("/{token:str}")
    async def ask(self, token: FromPath[str]) -> Template:
        """Show the export or erase button."""
        try:
            lead_id, action = _rights_state(token)
        except TokenError as exc:
            return _bad_link(exc, "Ask again from the preference page.")
        lead = await Lead.select(Lead.erased_at).where(Lead.id == lead_id).first()
        if lead is None or lead["erased_at"] is not None:
            return _erased()
        if action == "erase":
            return _message("Erase your data?", "Your name, address and history will be removed and cannot be "
                            "brought back. We keep only a fingerprint of the address so we never write to it again.",
                            button="Erase my data", action=f"/r/{token}")
        return _message("Your data", "Download everything we hold about you as a JSON file.",
                        button="Download my data", action=f"/r/{token}")

    @post("/{token:str}", status_code=HTTP_200_OK)
    async def act(self, token: FromPath[str], arq: NamedDependency[ArqRedis | None]) -> Response[bytes] | Template:
        """Export the lead's data as JSON, or erase it."""
        try:
            lead_id, action = _rights_state(token)
        except TokenError as exc:
            return _bad_link(exc, "Ask again from the preference page.")
        if action == "erase":
            erased = await erase_lead(lead_id)
            if not erased:
                return _message("Already erased", "There was nothing left to erase.", HTTP_410_GONE)
            return _message("Your data is erased", "We will not write to you again.")
        data = await export_lead(lead_id)
        if data is None or data["lead"]["erased_at"] is not None:
            return _erased()
        return Response(
            json.dumps(data, indent=2, ensure_ascii=False).encode(), media_type="application/json",
            headers={"Content-Disposition": 'attachment; filename="my-data.json"', "Cache-Control": "no-store"},
        )


class UnsubscribeController(Controller):
    """One-click unsubscribe: POST unsubscribes (RFC 8058); GET only asks."""

    path = "/u"
    include_in_schema = False

    @get("/{token:str}")
    async def confirm(self, token: FromPath[str]) -> Template:
        """Ask before unsubscribing: link scanners follow GETs."""
        try:
            lead_id = unsign("unsubscribe", token)
        except TokenError as exc:
            return Template(template_name="landing/unsubscribe.html", context={"error": str(exc)}, status_code=400)
        lead = await Lead.select(Lead.email).where(Lead.id == lead_id).first()
        email = (lead or {}).get("email") or ""
        preferences = f"/p/{sign('preferences', lead_id)}"
        if email and await is_suppressed(email):
            return Template(template_name="landing/unsubscribe.html",
                            context={"done": True, "already": True, "preferences": preferences})
        return Template(template_name="landing/unsubscribe.html", context={"email": email, "preferences": preferences})

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
                await enqueue_after_commit(arq, lead.id)
        return Template(template_name="landing/unsubscribe.html", context={"done": True})


@get("/", include_in_schema=False)
async def index() -> Template:
    """List the published landing pages."""
    pages = await LandingPage.objects().where(LandingPage.published == True).order_by(LandingPage.title)  # noqa: E712
    return Template(template_name="landing/index.html", context={"pages": pages})


@get("/favicon.ico", include_in_schema=False, status_code=204, cache_control=CacheControlHeader(max_age=86400))
async def favicon() -> None:
    """No icon, and no 404 in every browser console (the admin's pages ask for one)."""
