"""The desk's login: piccolo-admin's session cookie, a role guard for every desk page, login and logout."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from arq.connections import ArqRedis
from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.params import Body
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER, HTTP_429_TOO_MANY_REQUESTS
from piccolo.apps.user.tables import BaseUser
from piccolo_api.session_auth.tables import SessionsBase

from admin.roles import CONTENT, EVERYONE, SALES, SESSION_COOKIE, Staff, staff_for_session
from admin.tables import Role
from landing.ratelimit import hit, limit_key
from server.settings import RateLimit, get_settings

SESSION_HOURS = 8
"""A desk login lasts a working day (piccolo-admin's own login lasts an hour, renewed while used)."""
LOGIN_LIMIT_IP = RateLimit(20, 300)
LOGIN_LIMIT_USER = RateLimit(8, 300)

NAV = [
    ("Hot leads", "/desk/hot", SALES),
    ("Dashboard", "/desk/dashboard", CONTENT),
    ("Chains", "/desk/chains", CONTENT),
    ("Ebooks", "/desk/ebooks", CONTENT),
    ("Scoring", "/desk/scoring", EVERYONE),
    ("Weekly report", "/desk/report", SALES),
]
"""The desk's menu: (label, path, roles that see it); each page checks its roles itself too."""


def requires(roles: frozenset[Role]):
    """A guard: a logged-in staff user with one of `roles`; the user lands on `request.state.staff`
    (also when the role is wrong, so the refusal page can show their menu)."""

    async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        staff = await staff_for_session(connection.cookies.get(SESSION_COOKIE))
        if staff is None:
            raise NotAuthorizedException("Log in first.")
        connection.state.staff = staff
        if not staff.may(roles):
            raise PermissionDeniedException(f"The {staff.role.value} role cannot open this page.")

    guard.roles = roles  # type: ignore[attr-defined]  # read by the route-walking security tests
    return guard


def provide_staff(request: Request) -> Staff:
    return request.state.staff


def nav_for(staff: Staff) -> list[tuple[str, str]]:
    return [(label, path) for label, path, roles in NAV if staff.may(roles)]


def page_context(request: Request, **context: Any) -> dict[str, Any]:
    """What every desk template reads: the user, the menu, the page's path."""
    staff: Staff = request.state.staff
    return {"staff": staff, "nav": nav_for(staff), "path": request.url.path, **context}


def safe_next(target: str | None) -> str:
    """Back to a desk or admin page after login, never to another site."""
    if not target:
        return "/desk/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/desk/"
    if not (parts.path.startswith("/desk/") or parts.path.startswith("/admin/")):
        return "/desk/"
    return target


def refused(request: Request, exc: Exception) -> Response:
    """Not logged in: people go to the login page (and come back); other clients get 401. Wrong role: 403."""
    wants_html = "text/html" in request.headers.get("accept", "")
    if isinstance(exc, NotAuthorizedException):
        if request.method == "GET" and wants_html:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return Redirect(f"/desk/login?next={quote(target)}", status_code=HTTP_303_SEE_OTHER)
        return Response({"status_code": 401, "detail": "Log in first."}, status_code=401)
    detail = getattr(exc, "detail", "Not allowed.")
    if wants_html:
        # A logged-in user of another role keeps the menu and Log out (the guard put them on the
        # request before checking the role); a refusal with no user behind it gets the bare page.
        staff = getattr(request.state, "staff", None)
        context = page_context(request, detail=detail) if staff is not None else {"detail": detail}
        return Template("desk/refused.html", context=context, status_code=403)
    return Response({"status_code": 403, "detail": detail}, status_code=403)


class LoginController(Controller):
    path = "/desk"

    @get("/login", sync_to_thread=False)
    def login_page(self, next: str | None = None) -> Template:
        """The login form."""
        return Template("desk/login.html", context={"next": safe_next(next), "error": None, "username": ""})

    @post("/login", status_code=HTTP_303_SEE_OTHER)
    async def login(self, request: Request, arq: ArqRedis | None,
                    data: dict[str, str] = Body(media_type=RequestEncodingType.URL_ENCODED)) -> Response:
        """Check the password (rate-limited per address and per user), then start a session shared with /admin/."""
        username = (data.get("username") or "").strip()[:100]
        password = data.get("password") or ""
        target = safe_next(data.get("next"))
        ip = request.client.host if request.client else ""
        verdict = await hit(arq, [(limit_key("login-ip", ip), LOGIN_LIMIT_IP),
                                  (limit_key("login-user", username.lower()), LOGIN_LIMIT_USER)])
        if not verdict.allowed:
            return Template("desk/login.html", status_code=HTTP_429_TOO_MANY_REQUESTS,
                            headers={"Retry-After": str(verdict.retry_after)},
                            context={"next": target, "username": username,
                                     "error": f"Too many attempts: try again in {verdict.retry_after} seconds."})
        user_id = await BaseUser.login(username=username, password=password) if username and password else None
        staff = None
        if user_id is not None:
            session = await SessionsBase.create_session(
                user_id=user_id, expiry_date=datetime.now() + timedelta(hours=SESSION_HOURS),
                max_expiry_date=datetime.now() + timedelta(days=7))
            staff = await staff_for_session(session.token)
            if staff is None:
                await SessionsBase.remove_session(session.token)
        if staff is None:
            return Template("desk/login.html", status_code=401, context={
                "next": target, "username": username,
                "error": "The username or password is wrong, or this user has no role here."})
        secure = get_settings().public_url.startswith("https://")
        return Redirect(target, status_code=HTTP_303_SEE_OTHER, cookies=[Cookie(
            key=SESSION_COOKIE, value=session.token, httponly=True, secure=secure, samesite="lax", path="/",
            max_age=7 * 24 * 3600)])

    @post("/logout", status_code=HTTP_303_SEE_OTHER, guards=[requires(EVERYONE)])
    async def logout(self, request: Request) -> Response:
        """End the session (the admin's too) and go back to the login form."""
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            await SessionsBase.remove_session(token)
        return Redirect("/desk/login", status_code=HTTP_303_SEE_OTHER,
                        cookies=[Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/", httponly=True)])

    @get("/", guards=[requires(EVERYONE)], sync_to_thread=False)
    def home(self, request: Request) -> Redirect:
        """Each role's first page."""
        staff: Staff = request.state.staff
        return Redirect("/desk/hot" if staff.role is Role.sales else "/desk/dashboard", status_code=HTTP_303_SEE_OTHER)
