"""The JSON API under /api/: events in (API keys), leads and scores out, and the tracking snippet."""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from arq.connections import ArqRedis
from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromQuery, JSONBody, Parameter
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_422_UNPROCESSABLE_ENTITY, HTTP_429_TOO_MANY_REQUESTS

from landing.forms import normalise_email
from landing.ratelimit import hit, limit_key
from landing.tables import ApiKey, ApiKeyScope, Event, Lead, Topic, UrlTopic, Visitor
from landing.tokens import TokenError, unsign
from scoring.tables import Score
from server.settings import get_settings

SERVER_EVENT_TYPES = frozenset({"page_view", "pricing_view", "click", "video_play", "form_submit", "reply", "chat"})
"""What the company's servers may report."""
BROWSER_EVENT_TYPES = frozenset({"page_view", "click", "video_play"})
"""What the public snippet may report (pricing views come from URL patterns, not from the page)."""
MAX_FUTURE = timedelta(minutes=5)
MAX_PAST = timedelta(days=30)
MAX_PROPERTIES = 20
KEY_PREFIXES = {ApiKeyScope.server: "lks_", ApiKeyScope.browser: "lkb_"}

SECURITY_COMPONENTS = Components(security_schemes={
    "ApiKey": SecurityScheme(type="http", scheme="bearer", description="An API key made in the admin (Sales → API keys)."),
})

PropertyValue = str | int | float | bool | None


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    """One event from the company's site or servers. Name the visitor (its `lk_vid` cookie),
    the lead (email, server keys only), or a lead token from a letter's link."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=40, description="page_view, click, video_play; server keys also pricing_view, form_submit, reply, chat.")]
    visitor_id: Annotated[str, msgspec.Meta(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    email: Annotated[str, msgspec.Meta(max_length=254)] | None = None
    lead_token: Annotated[str, msgspec.Meta(max_length=300)] | None = None
    url: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    referrer: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    title: Annotated[str, msgspec.Meta(max_length=300)] = ""
    occurred_at: datetime | None = None
    properties: dict[Annotated[str, msgspec.Meta(max_length=40)], PropertyValue] = {}
    key: Annotated[str, msgspec.Meta(max_length=100, description="The API key, for the snippet (sendBeacon cannot set headers).")] | None = None


class EventAccepted(msgspec.Struct):
    """The stored event."""

    id: int
    type: str
    topic: str | None
    lead_id: int | None


class ScoreOut(msgspec.Struct):
    topic: str
    combined: float
    hot: bool
    rule_points: float
    model_probability: float | None
    explanation: list[Any]
    computed_at: datetime


class LeadOut(msgspec.Struct):
    """A lead with its topic scores."""

    id: int
    email: str | None
    first_name: str
    last_name: str
    company: str
    role: str
    stage: str
    source: str
    created_at: datetime
    scores: list[ScoreOut]


class ApiError(msgspec.Struct):
    """Every refusal: the status and a sentence saying what to change."""

    status_code: int
    detail: str


def _refusals(*codes: int) -> dict[int, ResponseSpec]:
    words = {
        401: "No API key, or one that is unknown or revoked.",
        403: "The key may not do this (a browser key naming an email or used from another site; reading leads needs a server key).",
        404: "No such lead.",
        413: "The body is over 64 KiB.",
        422: "The event cannot be accepted: the detail says why (unknown type, a time in the future, …).",
        429: "Too many requests for this key; see Retry-After.",
    }
    return {code: ResponseSpec(data_container=ApiError, description=words[code], generate_examples=False) for code in codes}


class ApiProblem(HTTPException):
    status_code = HTTP_422_UNPROCESSABLE_ENTITY


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_api_key(name: str, scope: ApiKeyScope, allowed_origins: str = "") -> str:
    """Make a key and return it: the only time it is seen, only its hash is kept."""
    key = KEY_PREFIXES[ApiKeyScope(scope)] + secrets.token_urlsafe(32)
    await ApiKey.insert(ApiKey(name=name[:100], prefix=key[:12], key_hash=hash_key(key), scope=scope,
                               allowed_origins=allowed_origins))
    return key


def _key_from(request: ASGIConnection, body_key: str | None) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key", "") or body_key or ""


async def authenticate(request: ASGIConnection, body_key: str | None) -> ApiKey:
    """The active key the request carries, or 401; a browser key used from another site, 403."""
    key = _key_from(request, body_key)
    if not key:
        raise NotAuthorizedException("An API key is required: Authorization: Bearer <key>.")
    api_key = await ApiKey.objects().where((ApiKey.key_hash == hash_key(key)) & (ApiKey.active == True)).first()  # noqa: E712
    if api_key is None:
        raise NotAuthorizedException("This API key is not valid (unknown or revoked).")
    origin = request.headers.get("origin", "")
    allowed = [o.strip().rstrip("/") for o in api_key.allowed_origins.splitlines() if o.strip()]
    if api_key.scope == ApiKeyScope.browser and origin and allowed and origin.rstrip("/") not in allowed:
        raise PermissionDeniedException(f"This key does not accept events from {origin[:100]}.")
    return api_key


async def server_key_only(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """A guard: the key is checked before the parameters, so an anonymous call learns nothing."""
    api_key = await authenticate(connection, None)
    if api_key.scope != ApiKeyScope.server:
        raise PermissionDeniedException("Reading leads needs a server key.")


_patterns: tuple[float, list[dict[str, Any]]] = (0.0, [])


async def url_topics() -> list[dict[str, Any]]:
    """Active URL patterns, lowest priority first (cached for ten seconds)."""
    global _patterns
    if _patterns[0] > time.monotonic():
        return _patterns[1]
    rows = await UrlTopic.select(UrlTopic.pattern, UrlTopic.topic, UrlTopic.event_type).where(
        UrlTopic.active == True).order_by(UrlTopic.priority).order_by(UrlTopic.id)  # noqa: E712
    _patterns = (time.monotonic() + 10, rows)
    return rows


def forget_url_topics() -> None:
    global _patterns
    _patterns = (0.0, [])


def match_url(url: str, patterns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first pattern the URL's path (or whole URL, for patterns with a host) matches."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    path = parts.path or "/"
    for pattern in patterns:
        target = url if "://" in pattern["pattern"] else path
        if fnmatch.fnmatchcase(target.lower(), pattern["pattern"].lower()):
            return pattern
    return None


def check_event(event: EventIn, scope: str, now: datetime) -> None:
    """Refuse what the key may not send or what cannot be true, with a message that says which."""
    allowed = BROWSER_EVENT_TYPES if scope == ApiKeyScope.browser else SERVER_EVENT_TYPES
    if event.type not in allowed:
        raise ApiProblem(f"Unknown event type {event.type!r} for this key; use one of {', '.join(sorted(allowed))}.")
    if scope == ApiKeyScope.browser and event.email:
        raise PermissionDeniedException("A browser key cannot name a lead by email; use a server key.")
    if not (event.visitor_id or event.email or event.lead_token):
        raise ApiProblem("Name the visitor (visitor_id), the lead (email) or give a lead_token.")
    if event.occurred_at is not None:
        when = event.occurred_at if event.occurred_at.tzinfo else event.occurred_at.replace(tzinfo=timezone.utc)
        if when > now + MAX_FUTURE:
            raise ApiProblem("occurred_at is in the future; send the time the event happened (UTC).")
        if when < now - MAX_PAST:
            raise ApiProblem(f"occurred_at is more than {MAX_PAST.days} days ago; older events are not accepted.")
    if len(event.properties) > MAX_PROPERTIES:
        raise ApiProblem(f"At most {MAX_PROPERTIES} properties.")
    for name, value in event.properties.items():
        if isinstance(value, str) and len(value) > 500:
            raise ApiProblem(f"Property {name!r} is longer than 500 characters.")
    texts = [event.url, event.referrer, event.title, *event.properties, *(v for v in event.properties.values()
                                                                           if isinstance(v, str))]
    if any("\x00" in text for text in texts):
        raise ApiProblem("Text may not contain NUL characters.")


async def record_event(event: EventIn, api_key: ApiKey, user_agent: str) -> EventAccepted:
    """Store an API event: the visitor and lead joined, the URL mapped to a topic."""
    now = datetime.now(timezone.utc)
    occurred = event.occurred_at or now
    if occurred.tzinfo is None:
        occurred = occurred.replace(tzinfo=timezone.utc)
    email = None
    if event.email:
        try:
            email = normalise_email(event.email)
        except ValueError as exc:
            raise ApiProblem(f"email: {exc}") from None
    token_lead = None
    if event.lead_token:
        try:
            token_lead = int(unsign("identify", event.lead_token, max_age_seconds=90 * 86400))
        except (TokenError, TypeError, ValueError):
            raise ApiProblem("lead_token is not valid (tampered or expired).") from None
    mapped = match_url(event.url, await url_topics())
    event_type = event.type
    if mapped is not None and event_type == "page_view" and mapped["event_type"]:
        event_type = mapped["event_type"]
    topic_id = mapped["topic"] if mapped else None
    properties: dict[str, Any] = dict(event.properties)
    for name in ("url", "referrer", "title"):
        if getattr(event, name):
            properties[name] = getattr(event, name)
    properties["source"] = f"api:{api_key.prefix}"
    async with Event._meta.db.transaction():
        lead_id = token_lead
        if email is not None:
            row = await Lead.select(Lead.id).where((Lead.email == email) & Lead.erased_at.is_null()).first()
            if row is None:
                raise ApiProblem("No lead has this email; leads are made by landing page forms or imports.")
            lead_id = row["id"]
        if lead_id is not None:
            exists = await Lead.exists().where((Lead.id == lead_id) & Lead.erased_at.is_null())
            if not exists:
                raise ApiProblem("The lead this event names no longer exists.")
        visitor_id = None
        if event.visitor_id:
            rows = await Visitor.insert(
                Visitor(cookie_id=event.visitor_id, lead=lead_id, user_agent=user_agent[:500], first_seen_at=now,
                        last_seen_at=now)
            ).on_conflict(target=Visitor.cookie_id, action="DO UPDATE", values=[(Visitor.last_seen_at, now)]).returning(
                Visitor.id, Visitor.lead)
            visitor_id = rows[0]["id"]
            if lead_id is not None and rows[0]["lead"] != lead_id:
                # A letter's link (or the company's server) told us who this browser is.
                await Visitor.update({Visitor.lead: lead_id}).where(Visitor.id == visitor_id)
                await Event.update({Event.lead: lead_id}).where((Event.visitor == visitor_id) & Event.lead.is_null())
            elif lead_id is None:
                lead_id = rows[0]["lead"]
        inserted = await Event.insert(
            Event(type=event_type, visitor=visitor_id, lead=lead_id, topic=topic_id, properties=properties,
                  occurred_at=occurred)
        ).returning(Event.id)
        await ApiKey.update({ApiKey.last_used_at: now}).where(ApiKey.id == api_key.id)
    topic_name = None
    if topic_id is not None:
        topic = await Topic.select(Topic.name).where(Topic.id == topic_id).first()
        topic_name = topic["name"] if topic else None
    return EventAccepted(inserted[0]["id"], event_type, topic_name, lead_id)


SNIPPET = (Path(__file__).parent / "static" / "snippet.js").read_text()


class ApiController(Controller):
    """Events in, leads and scores out; every call carries an API key."""

    path = "/api"
    tags = ["api"]

    @post("/events", status_code=HTTP_202_ACCEPTED, security=[{"ApiKey": []}],
          responses=_refusals(401, 403, 413, 422, 429))
    async def events(self, request: Request, data: JSONBody[EventIn], arq: NamedDependency[ArqRedis | None]) -> EventAccepted:
        """Record an event; a known lead is rescored within seconds."""
        api_key = await authenticate(request, data.key)
        verdict = await hit(arq, [(limit_key("api-key", api_key.key_hash), get_settings().api_limit_key)])
        if not verdict.allowed:
            raise HTTPException(status_code=HTTP_429_TOO_MANY_REQUESTS, detail="Too many events for this key.",
                                headers={"Retry-After": str(verdict.retry_after)})
        check_event(data, api_key.scope, datetime.now(timezone.utc))
        accepted = await record_event(data, api_key, request.headers.get("user-agent", ""))
        if accepted.lead_id is not None and arq is not None:
            try:
                await arq.enqueue_job("rescore_lead", accepted.lead_id)
            except Exception:  # noqa: BLE001 - rescored hourly anyway
                pass
        return accepted

    @get("/leads/{lead_id:int}", security=[{"ApiKey": []}], responses=_refusals(401, 403, 404), guards=[server_key_only])
    async def lead(self, request: Request, lead_id: Annotated[int, Parameter(ge=1, le=2**31 - 1)]) -> LeadOut:
        """A lead and its scores per topic (server keys only)."""
        return await _lead_out(lead_id)

    @get("/leads", security=[{"ApiKey": []}], responses=_refusals(401, 403, 404, 422), guards=[server_key_only])
    async def lead_by_email(self, request: Request, email: FromQuery[Annotated[str, Parameter(max_length=254)]]) -> LeadOut:
        """Find a lead by email (server keys only)."""
        try:
            normalised = normalise_email(email)
        except ValueError as exc:
            raise ApiProblem(f"email: {exc}") from None
        row = await Lead.select(Lead.id).where(Lead.email == normalised).first()
        if row is None:
            from litestar.exceptions import NotFoundException

            raise NotFoundException("No lead has this email.")
        return await _lead_out(row["id"])


async def _lead_out(lead_id: int) -> LeadOut:
    from litestar.exceptions import NotFoundException

    lead = await Lead.select(
        Lead.id, Lead.email, Lead.first_name, Lead.last_name, Lead.company, Lead.role, Lead.stage, Lead.source,
        Lead.created_at, Lead.erased_at,
    ).where(Lead.id == lead_id).first()
    if lead is None or lead["erased_at"] is not None:
        raise NotFoundException("No such lead.")
    scores = await Score.select(
        Score.topic.name.as_alias("topic"), Score.combined, Score.hot, Score.rule_points, Score.model_probability,
        Score.explanation, Score.computed_at,
    ).where(Score.lead == lead_id).order_by(Score.combined, ascending=False)
    lead.pop("erased_at")
    return LeadOut(**lead, scores=[ScoreOut(**_decoded(s)) for s in scores])


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row.get("explanation"), str):
        row["explanation"] = msgspec.json.decode(row["explanation"])
    return row


@get("/api/snippet.js", include_in_schema=False, cache_control=CacheControlHeader(max_age=3600, public=True))
async def snippet() -> Response[str]:
    """The tracking snippet for the company's own site."""
    return Response(SNIPPET, media_type="application/javascript; charset=utf-8",
                    headers={"X-Content-Type-Options": "nosniff"})
