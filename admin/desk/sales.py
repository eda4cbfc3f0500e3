"""Desk pages for sales: hot leads ranked per topic, and a lead's page (scores and why, history, timeline, stage and owner)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import urlencode, urlsplit

from litestar import Controller, Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER, HTTP_400_BAD_REQUEST, HTTP_404_NOT_FOUND
from piccolo.apps.user.tables import BaseUser
from starlette.exceptions import HTTPException as StarletteHTTPException

from admin import charts
from admin.desk.auth import page_context, requires
from admin.roles import SALES, Staff
from admin.tables import HotAlert, Role, StaffRole
from content.history import count_letters, lead_letters, lead_notices, letter_subjects
from landing.outcomes import (
    KEEP,
    STAGES,
    Actor,
    LeadGone,
    OutcomeProblem,
    change_outcome,
    column_name,
    count_changes,
    lead_changes,
    named,
)
from landing.tables import Lead
from landing.timeline import count_conversions, count_events, lead_conversions, lead_events, lead_profile
from scoring.ranking import LeadFilter, Ranking, TopicScore, lead_scores, ranked_leads, score_history, topics

PAGE_SIZE = 50
TIMELINE_SHOWN = 300
"""The lead page's timeline shows this many of the newest items (a busy lead has thousands of page views)."""
CHANGES_SHOWN = 300
"""The newest stage and owner changes in the lead page's history table."""


# ----------------------------------------------------------------------------- owners


@dataclass(frozen=True)
class OwnerChoice:
    id: int
    username: str
    role: str


async def assignable_owners() -> list[OwnerChoice]:
    """Users who may own leads: active staff with the sales or admin role (a superuser without
    a role row is an admin, as at login)."""
    with_role = await StaffRole.select(
        StaffRole.user.id.as_alias("id"), StaffRole.user.username.as_alias("username"), StaffRole.role,
    ).where((StaffRole.user.active == True) & (StaffRole.user.admin == True)  # noqa: E712
            & StaffRole.role.is_in([role.value for role in SALES]))
    admins = await BaseUser.select(BaseUser.id, BaseUser.username).where(
        (BaseUser.active == True) & (BaseUser.admin == True) & (BaseUser.superuser == True)  # noqa: E712
        & BaseUser.id.not_in(StaffRole.select(StaffRole.user)))
    owners = [OwnerChoice(r["id"], r["username"], r["role"]) for r in with_role]
    owners += [OwnerChoice(r["id"], r["username"], Role.admin.value) for r in admins]
    return sorted(owners, key=lambda o: o.username.lower())


MAX_ID = 2**31 - 1
"""Ids are 32-bit integers: a larger number in a URL or a form names nothing (and PostgreSQL would refuse it)."""


async def owner_problem(owner_id: int) -> str | None:
    """Why this user cannot own leads, or None when they can."""
    if not 0 < owner_id <= MAX_ID:
        return f"There is no user #{owner_id}."
    if any(owner.id == owner_id for owner in await assignable_owners()):
        return None
    user = await BaseUser.select(BaseUser.username).where(BaseUser.id == owner_id).first()
    if user is None:
        return f"There is no user #{owner_id}."
    return f"{user['username']} is not an active sales or admin user, so cannot own leads."


# ----------------------------------------------------------------------------- plain helpers


def web_link(value: Any) -> str | None:
    """The value if it is an absolute http(s) URL, so safe as a link; None for anything else
    (javascript:, data:, relative paths), which pages show as text."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or any(ch in text for ch in "\r\n\t\x00"):
        return None
    return text


def when(value: datetime | None) -> str:
    """A moment as sales read it: UTC, to the minute."""
    if value is None:
        return "—"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago, roughly: "just now", "5 min ago", "3 h ago", "12 days ago"."""
    if value is None:
        return "never"
    seconds = ((now or datetime.now(timezone.utc)) - value).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    days = int(seconds // 86400)
    return "1 day ago" if days == 1 else f"{days} days ago"


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


# ----------------------------------------------------------------------------- the hot-leads filter


@dataclass(frozen=True)
class HotQuery:
    """The hot-leads page's filters as the form sends them, checked."""

    topic: int | None = None
    stage: str = ""
    owner: str = "anyone"
    """anyone, me, none, or a user's id."""
    show: str = "hot"
    page: int = 1

    def params(self, **override: Any) -> str:
        values = {"topic": self.topic or "", "stage": self.stage, "owner": self.owner, "show": self.show,
                  "page": self.page} | override
        return urlencode({k: v for k, v in values.items() if v not in ("", None)})


OWNER_WORDS = {"anyone": "Anyone", "me": "Me", "none": "Nobody (unassigned)"}


def parse_hot_query(topic: str | None, stage: str | None, owner: str | None, show: str | None,
                    page: str | None, topic_ids: set[int]) -> tuple[HotQuery, list[str]]:
    """The filters, and what was wrong with them (each wrong one falls back to its default)."""
    problems = []
    query = HotQuery()
    if topic:
        if topic.isdigit() and int(topic) in topic_ids:
            query = replace(query, topic=int(topic))
        else:
            problems.append(f"There is no topic {topic[:40]!r}.")
    if stage:
        if stage in STAGES:
            query = replace(query, stage=stage)
        else:
            problems.append(f"Unknown stage {stage[:40]!r}: choose one of {', '.join(STAGES)}.")
    if owner:
        if owner in OWNER_WORDS or (owner.isdigit() and len(owner) <= 10):
            query = replace(query, owner=owner)
        else:
            problems.append(f"Unknown owner {owner[:40]!r}: anyone, me, none or a user.")
    if show:
        if show in ("hot", "all"):
            query = replace(query, show=show)
        else:
            problems.append("Show either hot leads or all scored leads.")
    if page:
        if page.isdigit() and 0 < int(page) < 1_000_000:
            query = replace(query, page=int(page))
        else:
            problems.append(f"No page {page[:20]!r}.")
    return query, problems


# ----------------------------------------------------------------------------- the timeline


@dataclass(frozen=True)
class TimelineItem:
    """One line of a lead's timeline; every text is plain (the template escapes it)."""

    at: datetime | None
    kind: str
    label: str
    text: str = ""
    url: str | None = None
    """A link for the line (http(s) only)."""
    url_text: str = ""
    """A URL that is not safe as a link, shown as text."""
    who: str = ""


EVENT_LABELS = {
    "page_view": ("visit", "Viewed a page"),
    "pricing_view": ("visit", "Visited pricing"),
    "click": ("visit", "Clicked on the site"),
    "video_play": ("visit", "Played a video"),
    "chat": ("visit", "Chatted"),
    "download": ("download", "Downloaded an ebook"),
    "form_submit": ("form", "Filled in a form"),
    "confirmed": ("form", "Confirmed the address"),
    "email_open": ("open", "Opened a letter"),
    "email_click": ("click", "Clicked a link in a letter"),
    "reply": ("letter", "Replied"),
    "became_hot": ("hot", "Turned hot"),
    "unsubscribe": ("warn", "Unsubscribed"),
    "bounce": ("warn", "A letter bounced"),
    "complaint": ("warn", "Marked a letter as spam"),
    "erased": ("warn", "Data erased"),
}


def _text(value: Any, limit: int = 300) -> str:
    return " ".join(str(value).split())[:limit] if value not in (None, "") else ""


def describe_event(event_type: str, topic_name: str, properties: Mapping[str, Any], at: datetime | None,
                   subjects: Mapping[int, str] | None = None, alert: str = "") -> TimelineItem:
    """An event as a timeline line: what happened, on which topic, with its page or letter."""
    kind, label = EVENT_LABELS.get(event_type, ("other", _text(event_type, 40).replace("_", " ").capitalize() or "Event"))
    details = []
    url_value = properties.get("url")
    if event_type in ("email_open", "email_click"):
        delivery = properties.get("delivery")
        subject = (subjects or {}).get(delivery) if isinstance(delivery, int) else None
        if subject:
            details.append(f"“{_text(subject, 200)}”")
    elif event_type == "became_hot":
        combined = properties.get("combined")
        if isinstance(combined, (int, float)) and not isinstance(combined, bool) and math.isfinite(combined):
            details.append(f"score {combined:.1f}")
        if alert:
            details.append(alert)
    elif event_type in ("download", "form_submit") or properties.get("page"):
        if properties.get("page"):
            details.append(f"page /l/{_text(properties['page'], 120)}")
        if properties.get("ebook"):
            details.append(f"ebook {_text(properties['ebook'], 120)}")
    if properties.get("title"):
        details.append(_text(properties["title"], 200))
    if properties.get("detail"):
        details.append(_text(properties["detail"], 200))
    if properties.get("referrer") and event_type not in ("form_submit",):
        details.append(f"from {_text(properties['referrer'], 300)}")
    if topic_name:
        details.insert(0, topic_name)
    url = web_link(url_value)
    url_text = "" if url or url_value in (None, "") else _text(url_value, 300)
    return TimelineItem(at, kind, label, " · ".join(details), url, url_text)


def letter_items(letters, notices) -> list[TimelineItem]:
    """Letters as timeline lines: sent (or why not); opens and clicks come from their events."""
    items = []
    for letter in letters:
        where = f"{letter.chain_name}, letter {letter.position}" if letter.position is not None else letter.chain_name
        offer = f" ({letter.offer_kind} offer)" if letter.offer_kind else ""
        text = f"“{_text(letter.subject, 200)}” · {where}{offer}" if letter.subject else f"{where}{offer}"
        if letter.status == "sent":
            items.append(TimelineItem(letter.sent_at or letter.reserved_at, "letter", "Letter sent", text))
        else:
            items.append(TimelineItem(letter.reserved_at, "warn" if letter.status in ("failed", "bounced") else "letter",
                                      f"Letter {letter.status}", text))
    for notice in notices:
        label = {"confirm": "Confirmation letter", "ebook": "Ebook letter", "rights": "Data request letter"}.get(
            notice.kind, "Letter")
        status = {"pending": "queued", "sending": "being sent"}.get(notice.status, notice.status)
        items.append(TimelineItem(notice.sent_at or notice.created_at, "letter", f"{label} {status}",
                                  f"“{_text(notice.subject, 200)}”" if notice.subject else ""))
    return items


def change_items(changes) -> list[TimelineItem]:
    return [TimelineItem(c.changed_at, "change", f"{c.field.capitalize()} changed",
                         f"{c.old_value or '—'} → {c.new_value or '—'}",
                         who=f"{c.changed_by_name or 'unknown'} ({c.via})" if c.via else c.changed_by_name)
            for c in changes]


def conversion_items(conversions) -> list[TimelineItem]:
    return [TimelineItem(c.occurred_at, "conversion", "Converted",
                         f"{_text(c.kind, 60)}" + (f" · value {c.value:g}" if c.value else ""))
            for c in conversions]


def newest_first(items: list[TimelineItem], limit: int) -> list[TimelineItem]:
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(items, key=lambda item: item.at or epoch, reverse=True)[:limit]


async def _alerts(lead_id: int) -> dict[int, str]:
    """Hot-alert letters to sales by their became_hot event: to whom, and how it went."""
    rows = await HotAlert.select(HotAlert.event, HotAlert.status, HotAlert.to_address).where(HotAlert.lead == lead_id)
    out = {}
    for row in rows:
        to = f" to {row['to_address']}" if row["to_address"] else ""
        out[row["event"]] = f"sales alert{to}: {row['status']}"
    return out


async def timeline(lead_id: int, changes: list) -> tuple[list[TimelineItem], int]:
    """The lead's newest timeline items, and how many there are in all; `changes` are its
    latest stage and owner changes, read once for the timeline and the history table."""
    events = await lead_events(lead_id, TIMELINE_SHOWN)
    letters = await lead_letters(lead_id, TIMELINE_SHOWN)
    notices = await lead_notices(lead_id, TIMELINE_SHOWN)
    changes = changes[:TIMELINE_SHOWN]
    conversions = await lead_conversions(lead_id, TIMELINE_SHOWN)
    subjects = {letter.delivery_id: letter.subject for letter in letters}
    wanted = {e.properties.get("delivery") for e in events if e.type in ("email_open", "email_click")}
    missing = {d for d in wanted if isinstance(d, int) and not isinstance(d, bool) and d not in subjects}
    subjects |= await letter_subjects(missing)
    alerts = await _alerts(lead_id) if any(e.type == "became_hot" for e in events) else {}
    items = [describe_event(e.type, e.topic_name, e.properties, e.occurred_at, subjects, alerts.get(e.id, ""))
             for e in events]
    items += letter_items(letters, notices) + change_items(changes) + conversion_items(conversions)
    fetched = len(events) + len(letters) + len(notices) + len(changes) + len(conversions)
    total = fetched
    if fetched > TIMELINE_SHOWN or TIMELINE_SHOWN in (len(events), len(letters), len(notices), len(changes),
                                                       len(conversions)):
        total = (await count_events(lead_id) + await count_letters(lead_id) + await count_changes(lead_id)
                 + await count_conversions(lead_id))
    return newest_first(items, TIMELINE_SHOWN), total


# ----------------------------------------------------------------------------- scores


def split_quiet_topics(scores: list[TopicScore]) -> tuple[list[TopicScore], list[str]]:
    """The scores worth a row on the lead page, and the names of the topics the lead shows no
    interest in yet (a 0.0 score with no factor), which the page lists on one line instead of a
    row of zeros each."""
    shown, quiet = [], []
    for score in scores:
        if not score.hot and not score.reasons and round(score.combined, 1) == 0:
            quiet.append(score.topic_name)
        else:
            shown.append(score)
    return shown, quiet


# ----------------------------------------------------------------------------- charts


def history_charts(histories) -> list[Any]:
    """The score history: one chart for every topic when they share a hot threshold (drawn as
    a line), else one chart per topic, each with its own threshold."""
    # A topic the lead never showed interest in is a flat line at 0: left out.
    histories = [h for h in histories if any(value > 0 for _, value in h.points)]
    if not histories:
        return []
    thresholds = {h.hot_threshold for h in histories}
    if len(thresholds) == 1:
        return [charts.line_chart({h.topic_name: h.points for h in histories}, title="Score per topic over time",
                                  y_range=(0, 100), threshold=thresholds.pop())]
    return [charts.line_chart({h.topic_name: h.points}, title=f"{h.topic_name} score over time", y_range=(0, 100),
                              threshold=h.hot_threshold)
            for h in histories]


# ----------------------------------------------------------------------------- the admin table's hook


async def record_admin_table_patch(row_id: Any, values: dict[Any, Any], request: Any) -> dict[Any, Any]:
    """piccolo-admin hook for the Lead table: a stage or owner edited there is changed through
    `landing.outcomes` (kept with who and when, via "admin table", outcome time stamped), in
    one transaction with the edit's other fields; piccolo then writes the same values again."""
    fields = named(values)
    if "stage" not in fields and "owner" not in fields:
        return values
    user = getattr(getattr(request, "user", None), "user", None)
    actor = Actor(getattr(user, "id", None), getattr(user, "username", "") or "admin table")
    owner = fields.get("owner", KEEP)
    if isinstance(owner, dict):  # piccolo's nested form of a foreign key
        owner = owner.get("id")
    if owner is not KEEP and owner is not None:
        current = await Lead.select(Lead.owner).where(Lead.id == row_id).first()
        if current is None or current["owner"] != owner:
            problem = await owner_problem(owner) if isinstance(owner, int) else "The owner must be a user."
            if problem:
                raise StarletteHTTPException(status_code=400, detail=problem)
    also = {key: value for key, value in values.items() if column_name(key) not in ("stage", "owner")}
    try:
        result = await change_outcome(int(row_id), actor=actor, stage=fields.get("stage", KEEP), owner=owner,
                                      via="admin table", also=also)
    except OutcomeProblem as problem:
        raise StarletteHTTPException(status_code=400, detail=str(problem)) from None
    except LeadGone as gone:
        raise StarletteHTTPException(status_code=404, detail=str(gone)) from None
    if result.outcome_at is not None:
        values = {**values, Lead.outcome_at: result.outcome_at}
    return values


# ----------------------------------------------------------------------------- pages


def _refusal(request: Request, status: int, detail: str) -> Response:
    if wants_html(request):
        return Template("desk/sales/problem.html", status_code=status, context=page_context(
            request, detail=detail, status=status))
    return Response({"status_code": status, "detail": detail}, status_code=status)


class SalesController(Controller):
    """Hot leads and the lead page: sales and admins only."""

    path = "/desk"
    guards = [requires(SALES)]

    @get("/hot")
    async def hot(self, request: Request, topic: str | None = None, stage: str | None = None,
                  owner: str | None = None, show: str | None = None, page: str | None = None) -> Response:
        """Leads ranked by combined score per topic, filtered by topic, stage and owner."""
        staff: Staff = request.state.staff
        topic_rows = await topics()
        owners = await assignable_owners()
        query, problems = parse_hot_query(topic, stage, owner, show, page, {t["id"] for t in topic_rows})
        owner_filter: Any = "anyone"
        if query.owner == "me":
            owner_filter = staff.id
        elif query.owner == "none":
            owner_filter = "unassigned"
        elif query.owner.isdigit():
            owner_filter = int(query.owner)
        if query.owner.isdigit() and not any(o.id == int(query.owner) for o in owners):
            if int(query.owner) > MAX_ID or not await BaseUser.exists().where(BaseUser.id == int(query.owner)):
                problems.append(f"There is no user #{query.owner}.")
        if problems and not wants_html(request):
            return Response({"status_code": 400, "detail": " ".join(problems)}, status_code=HTTP_400_BAD_REQUEST)
        ranking = Ranking([], 0)
        if not problems:
            selected = LeadFilter(topic_id=query.topic, stage=query.stage or None, owner=owner_filter,
                                  hot_only=query.show == "hot")
            ranking = await ranked_leads(selected, limit=PAGE_SIZE, offset=(query.page - 1) * PAGE_SIZE)
        pages = max(1, math.ceil(ranking.total / PAGE_SIZE))
        status = HTTP_400_BAD_REQUEST if problems else 200
        return Template("desk/sales/hot.html", status_code=status, context=page_context(
            request, query=query, ranking=ranking, pages=pages, topics=topic_rows, stages=STAGES, owners=owners,
            owner_words=OWNER_WORDS, problems=problems, when=when, ago=ago, page_size=PAGE_SIZE,
            first_row=(query.page - 1) * PAGE_SIZE + 1))

    @get("/leads/{lead_id:int}")
    async def lead(self, request: Request, lead_id: int, saved: str | None = None) -> Response:
        """One lead: profile, scores and why, score history, timeline, stage and owner."""
        confirmation = {"1": "Saved.",  # the page adds a link to the history of changes
                        "0": "Nothing changed: the lead already had this stage and owner."}.get(saved or "")
        return await self._lead_page(request, lead_id, confirmation=confirmation, saved=saved == "1")

    async def _lead_page(self, request: Request, lead_id: int, *, confirmation: str | None = None,
                         saved: bool = False, error: str | None = None, status_code: int = 200,
                         chosen: Mapping[str, str] | None = None) -> Response:
        profile = await lead_profile(lead_id) if 0 < lead_id <= MAX_ID else None
        if profile is None:
            return _refusal(request, HTTP_404_NOT_FOUND, f"There is no lead #{lead_id} (or it was erased).")
        scores, quiet_topics = split_quiet_topics(await lead_scores(lead_id))
        histories = await score_history(lead_id)
        changes = await lead_changes(lead_id, max(CHANGES_SHOWN, TIMELINE_SHOWN))
        items, total = await timeline(lead_id, changes)
        history_total = len(changes) if len(changes) < CHANGES_SHOWN else await count_changes(lead_id)
        changes = changes[:CHANGES_SHOWN]
        owners = await assignable_owners()
        return Template("desk/sales/lead.html", status_code=status_code, context=page_context(
            request, lead=profile, scores=scores, quiet_topics=quiet_topics, charts=history_charts(histories),
            items=items, total_items=total, timeline_cap=TIMELINE_SHOWN, changes=changes, history_total=history_total,
            owners=owners, stages=STAGES, confirmation=confirmation, saved=saved, error=error, chosen=chosen or {},
            when=when, ago=ago, web_link=web_link, chart_css=charts.CHART_CSS))

    @post("/leads/{lead_id:int}/outcome", status_code=HTTP_303_SEE_OTHER)
    async def outcome(self, request: Request, lead_id: int,
                      data: dict[str, str] = Body(media_type=RequestEncodingType.URL_ENCODED)) -> Response:
        """Set the lead's stage and owner; every change is kept with who made it and when."""
        staff: Staff = request.state.staff
        if not 0 < lead_id <= MAX_ID:
            return _refusal(request, HTTP_404_NOT_FOUND, f"There is no lead #{lead_id} (or it was erased).")
        stage: Any = KEEP
        owner: Any = KEEP
        problem = None
        if "stage" in data:
            stage = (data.get("stage") or "").strip()
        if "owner" in data:
            raw_owner = (data.get("owner") or "").strip()
            if raw_owner in ("", "none"):
                owner = None
            elif raw_owner.isdigit() and len(raw_owner) <= 10:
                owner = int(raw_owner)
            else:
                problem = f"Unknown owner {raw_owner[:40]!r}: choose a user from the list."
        if stage is KEEP and owner is KEEP and problem is None:
            problem = "Choose a stage or an owner."
        if problem is None and isinstance(owner, int):
            current = await Lead.select(Lead.owner).where(Lead.id == lead_id).first()
            if current is not None and current["owner"] != owner:
                problem = await owner_problem(owner)
        if problem is None:
            try:
                result = await change_outcome(lead_id, actor=Actor(staff.id, staff.username), stage=stage, owner=owner,
                                              via="desk")
            except OutcomeProblem as refused:
                problem = str(refused)
            except LeadGone as gone:
                return _refusal(request, HTTP_404_NOT_FOUND, str(gone))
            else:
                return Redirect(f"/desk/leads/{lead_id}?saved={1 if result.changed else 0}",
                                status_code=HTTP_303_SEE_OTHER)
        if not await Lead.exists().where((Lead.id == lead_id) & Lead.erased_at.is_null()):
            return _refusal(request, HTTP_404_NOT_FOUND, f"There is no lead #{lead_id} (or it was erased).")
        if not wants_html(request):
            return Response({"status_code": 400, "detail": problem}, status_code=HTTP_400_BAD_REQUEST)
        return await self._lead_page(request, lead_id, error=problem, status_code=HTTP_400_BAD_REQUEST,
                                     chosen={k: data.get(k, "") for k in ("stage", "owner")})


HANDLERS = [SalesController]

__all__ = ["HANDLERS", "SalesController", "assignable_owners", "owner_problem", "record_admin_table_patch",
           "web_link", "describe_event", "parse_hot_query", "split_quiet_topics"]
