"""Who may do what: the role policy for the admin's tables and forms and the desk pages, and the
guard that applies it in front of piccolo-admin."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from piccolo.apps.user.tables import BaseUser
from piccolo_api.session_auth.tables import SessionsBase
from starlette.requests import cookie_parser

from admin.tables import Role, StaffRole

log = logging.getLogger("leadkiln.roles")

SESSION_COOKIE = "id"
"""piccolo-admin's session cookie; the desk pages share it, so one login serves both."""

EVERYONE = frozenset(Role)
ADMIN = frozenset({Role.admin})
SALES = frozenset({Role.admin, Role.sales})
CONTENT = frozenset({Role.admin, Role.content})


@dataclass(frozen=True)
class Access:
    read: frozenset[Role]
    write: frozenset[Role]


def _tables(names: Iterable[str], read: frozenset[Role], write: frozenset[Role]) -> dict[str, Access]:
    return {name: Access(read, write) for name in names}


TABLE_ACCESS: dict[str, Access] = {
    # People: every table that names a lead (piccolo-admin shows a lead by its email) is for sales
    # and admins only. The content team reads counts on the desk pages, never people.
    **_tables(["lead", "conversion"], SALES, SALES),
    **_tables(["score", "score_history", "event", "consent", "visitor", "topic_preference", "hot_alert", "lead_change",
               "enrollment", "chain_wait", "delivery", "weekly_report"], SALES, ADMIN),
    # What was mailed holds signed links (preferences, erasure, downloads): admins only.
    **_tables(["notice", "download_link", "caught_mail"], ADMIN, ADMIN),
    # What the content team writes; sales may look.
    **_tables(["topic", "ebook", "landing_page", "url_topic", "chain", "step", "offer"], EVERYONE, CONTENT),
    **_tables(["suppression"], EVERYONE, ADMIN),  # addresses only as hashes
    **_tables(["scoring_rule", "scoring_model", "lead_attribute"], EVERYONE, ADMIN),
    **_tables(["api_key", "piccolo_user", "sessions", "staff_role", "webhook_endpoint", "webhook_delivery"], ADMIN, ADMIN),
}
"""Per table: roles that may read it and roles that may change it. A table missing here is the admin's."""

FORM_ACCESS: dict[str, frozenset[Role]] = {
    "create-api-key": ADMIN,
    "export-lead-data": SALES,
    "erase-a-lead": SALES,
    "activate,-schedule-or-pause-a-chain": CONTENT,
    "preview-a-step": CONTENT,
    "send-a-test-letter": CONTENT,
    "render-an-ebook-again": CONTENT,
    "train-a-model-now": ADMIN,
    "add-a-staff-user": ADMIN,
    "change-a-staff-user": ADMIN,
}
"""Per admin form (its slug): the roles that may open and submit it. A form missing here is the admin's."""

DEFAULT = Access(ADMIN, ADMIN)


def table_access(tablename: str) -> Access:
    return TABLE_ACCESS.get(tablename, DEFAULT)


def form_access(slug: str) -> frozenset[Role]:
    return FORM_ACCESS.get(slug, ADMIN)


@dataclass(frozen=True)
class Staff:
    """A logged-in staff user and the role they act in."""

    id: int
    username: str
    email: str
    role: Role

    def may(self, roles: frozenset[Role]) -> bool:
        return self.role in roles


async def role_of(user_id: int, superuser: bool) -> Role | None:
    """The user's role; a superuser without a role row is an admin (`leadkiln createadmin`)."""
    row = await StaffRole.select(StaffRole.role).where(StaffRole.user == user_id).first()
    if row is not None:
        return Role(row["role"])
    return Role.admin if superuser else None


async def staff_for_session(token: str | None) -> Staff | None:
    """The staff user behind a session cookie: an unexpired session, an active admin-panel user
    with a role. Anything else is nobody."""
    if not token:
        return None
    user_id = await SessionsBase.get_user_id(token)
    if user_id is None:
        return None
    user = await BaseUser.select(BaseUser.id, BaseUser.username, BaseUser.email, BaseUser.active, BaseUser.admin,
                                 BaseUser.superuser).where(BaseUser.id == user_id).first()
    if user is None or not user["active"] or not user["admin"]:
        return None
    role = await role_of(user["id"], user["superuser"])
    if role is None:
        return None
    return Staff(user["id"], user["username"], user["email"] or "", role)


def _cookie(scope) -> str | None:
    """The session token as piccolo-admin will read it (Starlette's lenient parser): reading it
    any other way would let a cookie header one parser rejects and the other accepts slip past."""
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            return cookie_parser(value.decode("latin-1")).get(SESSION_COOKIE)
    return None


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def admin_api_allows(role: Role, method: str, path: str) -> bool:
    """Whether a role may make this request to piccolo-admin's private API (`path` after `/api`)."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return role is Role.admin
    reading = method in READ_METHODS
    head = parts[0]
    if head == "tables":
        if len(parts) == 1 or parts[1] == "grouped":
            return True  # the lists, filtered to what the role may read
        access = table_access(parts[1])
        return role in (access.read if reading else access.write)
    if head == "forms":
        if len(parts) == 1 or parts[1] == "grouped":
            return True
        return role in form_access(parts[1])
    if head in ("user", "change-password", "meta", "links"):
        return True
    if head == "media":
        # Uploads belong to content's tables (covers, PDFs); file URLs are checked per table by piccolo.
        return reading or role in CONTENT or len(parts) > 1 and parts[1] == "generate-file-url"
    if head == "media-files":
        return len(parts) > 1 and role in table_access(parts[1]).read
    return role is Role.admin  # the API docs and anything piccolo-admin adds later


def filter_listing(role: Role, path: str, payload):
    """The table and form lists piccolo-admin's menu is drawn from, cut to what the role may use."""
    parts = [p for p in path.split("/") if p]
    if parts[0] == "tables":
        keep = lambda name: role in table_access(name).read  # noqa: E731
    else:
        keep = lambda form: role in form_access(form["slug"])  # noqa: E731
    if isinstance(payload, list):
        return [item for item in payload if keep(item)]
    grouped = {group: [item for item in items if keep(item)] for group, items in payload.get("grouped", {}).items()}
    return {"grouped": {group: items for group, items in grouped.items() if items},
            "ungrouped": [item for item in payload.get("ungrouped", []) if keep(item)]}


LISTINGS = frozenset({("tables",), ("tables", "grouped"), ("forms",), ("forms", "grouped")})


class RoleGuard:
    """ASGI wrapper for piccolo-admin: every private API request is checked against the role
    policy before piccolo sees it (and refused without a staff user: fail closed), and the
    menu's lists are filtered. piccolo-admin still does its own login check behind this."""

    def __init__(self, app, prefix: str = "/admin") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith(self.prefix + "/"):
            path = path[len(self.prefix):]
        if "//" in path or "\\" in path:
            # One spelling per resource: a path this check and piccolo's router could read apart is refused.
            await _refuse(send, 404, "Not found.")
            return
        if not path.startswith("/api/"):
            await self.app(scope, receive, send)  # the page shell, assets and the public login
            return
        api_path = path[len("/api"):]
        token = _cookie(scope)
        staff = await staff_for_session(token)
        if staff is None:
            # Fail closed: nothing reaches piccolo's private API without a staff user and a role.
            if token and await _has_session_without_role(token):
                await _refuse(send, 403, "Your user has no role: ask an admin to give you one.")
            else:
                await _refuse(send, 401, "Log in first.")
            return
        method = scope["method"]
        if not admin_api_allows(staff.role, method, api_path):
            log.info("refused %s %s for %s (%s)", method, path, staff.username, staff.role.value)
            await _refuse(send, 403, f"The {staff.role.value} role may not do this.")
            return
        parts = tuple(p for p in api_path.split("/") if p)
        if method == "GET" and parts in LISTINGS:
            await self.app(scope, receive, _filtering_send(send, staff.role, api_path))
            return
        await self.app(scope, receive, send)


async def _has_session_without_role(token: str) -> bool:
    user_id = await SessionsBase.get_user_id(token)
    if user_id is None:
        return False
    user = await BaseUser.select(BaseUser.active, BaseUser.admin).where(BaseUser.id == user_id).first()
    return bool(user and user["active"] and user["admin"])


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _filtering_send(send, role: Role, api_path: str):
    start: dict = {}
    chunks: list[bytes] = []

    async def filtering(message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(filter_listing(role, api_path, json.loads(body))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return filtering
