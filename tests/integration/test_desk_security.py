"""Walks every route of the app and every table and form of the admin: anonymous requests are
refused, each role only reaches what the policy gives it, and every form needs its CSRF token."""

from __future__ import annotations

import re

import pytest

from tests.staff import admin_headers, desk_login, make_staff

PUBLIC = {
    "/": "the list of landing pages",
    "/favicon.ico": "an empty icon",
    "/health": "the load balancer's check",
    "/l/": "landing pages",
    "/d/": "download links (signed, expiring)",
    "/c/": "double opt-in confirmation (signed)",
    "/p/": "a lead's preferences (signed)",
    "/r/": "a lead's export and erasure (signed, one hour)",
    "/u/": "one-click unsubscribe (signed)",
    "/t/": "open pixel and click redirects (signed)",
    "/media/covers": "ebook and page cover images shown on landing pages",
    "/api/snippet.js": "the tracking snippet embedded in the company's public site",
    "/api/schema": "the OpenAPI description of the public API contract",
    "/desk/login": "the login form itself",
}
"""Routes anyone may reach, and why. Everything else must refuse an anonymous request."""


def _is_public(path: str) -> bool:
    for prefix in PUBLIC:
        if path in (prefix, prefix.rstrip("/")) or (prefix != "/" and path.startswith(prefix.rstrip("/") + "/")):
            return True
    return False


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+):(\w+)\}", lambda m: "1" if m.group(2) == "int" else "x", path)


def _routes() -> list[tuple[str, str, object]]:
    """(path, method, handler) for every HTTP route Litestar serves, the admin mount excepted."""
    from litestar.routes import HTTPRoute

    from server.app import create_app

    found = []
    for route in create_app().routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods):
                if method not in ("HEAD", "OPTIONS"):
                    found.append((route.path, method, handler))
    return found


def _desk_routes() -> list[tuple[str, str, object]]:
    return [(path, method, handler) for path, method, handler in _routes() if path.startswith("/desk") and path != "/desk/login"]


def _roles_of(handler) -> frozenset | None:
    for guard in handler.resolve_guards():
        if hasattr(guard, "roles"):
            return guard.roles
    return None


def _admin_paths() -> list[str]:
    from admin.site import ADMIN_APP, TABLES

    paths = ["/admin/api/tables/", "/admin/api/tables/grouped/", "/admin/api/forms/", "/admin/api/forms/grouped/",
             "/admin/api/user/", "/admin/api/links/", "/admin/api/media/"]
    for config in TABLES:
        name = config.table_class._meta.tablename
        paths += [f"/admin/api/tables/{name}/", f"/admin/api/tables/{name}/1/", f"/admin/api/tables/{name}/schema/"]
    for form in ADMIN_APP.forms:
        paths += [f"/admin/api/forms/{form.slug}/", f"/admin/api/forms/{form.slug}/schema/"]
    return paths


def test_the_walk_sees_the_desk_pages() -> None:
    """The walk itself must find the pages it is meant to guard, or it proves nothing."""
    desk = {path for path, _, _ in _desk_routes()}
    assert {"/desk", "/desk/logout"} <= desk or {"/desk/", "/desk/logout"} <= desk, desk
    assert all(_roles_of(handler) for _, _, handler in _desk_routes()), "a desk route without a role guard"
    assert len(_admin_paths()) > 90


async def test_every_route_but_the_public_ones_refuses_an_anonymous_request(client) -> None:
    checked = 0
    for path, method, _ in _routes():
        if _is_public(path):
            continue
        url = _concrete(path)
        # A well-formed body: the API reads its key from the body too, so only a valid event reaches the key check.
        body = None if method == "GET" else {"type": "page_view", "visitor_id": "v" * 20}
        response = await client.request(method, url, headers={"accept": "text/html"}, json=body)
        if method == "GET" and response.status_code == 303:
            assert response.headers["location"].startswith("/desk/login?next="), (method, url)
        else:
            assert response.status_code in (401, 403), (method, url, response.status_code, response.text[:200])
        checked += 1
    assert checked >= 8


async def test_every_admin_api_path_refuses_an_anonymous_request(client) -> None:
    await client.get("/admin/")  # a CSRF cookie, so a refused write is refused for want of a login
    headers = {"X-CSRFToken": client.cookies.get("csrftoken") or ""}
    for path in _admin_paths():
        for method in ("GET", "POST", "PATCH", "DELETE"):
            response = await client.request(method, path, headers=headers, json={})
            assert response.status_code in (401, 403, 405), (method, path, response.status_code)
            assert "rows" not in response.text


async def test_each_desk_page_admits_its_roles_and_refuses_the_others(client) -> None:
    from admin.tables import Role

    for role in Role:
        await make_staff(f"walk-{role.value}", role.value)
    for role in Role:
        client.cookies.clear()
        await desk_login(client, f"walk-{role.value}")
        for path, method, handler in _desk_routes():
            if method != "GET":
                continue
            response = await client.get(_concrete(path), headers={"accept": "text/html"})
            if role in _roles_of(handler):
                assert response.status_code != 403, (role, path)
            else:
                assert response.status_code == 403, (role, path, response.status_code)
                assert "Not for your role" in response.text


async def test_each_role_reaches_only_its_admin_tables_and_forms(client) -> None:
    from admin.roles import form_access, table_access
    from admin.site import ADMIN_APP, TABLES
    from admin.tables import Role

    for role in (Role.sales, Role.content):
        client.cookies.clear()
        await make_staff(f"t-{role.value}", role.value)
        await desk_login(client, f"t-{role.value}")
        headers = await admin_headers(client)
        listed = (await client.get("/admin/api/tables/")).json()
        for config in TABLES:
            name = config.table_class._meta.tablename
            access = table_access(name)
            read = await client.get(f"/admin/api/tables/{name}/")
            assert (read.status_code == 200) == (role in access.read), (role, name, read.status_code)
            assert (name in listed) == (role in access.read), (role, name)
            if role not in access.write:
                count = len((await client.get(f"/admin/api/tables/{name}/")).json().get("rows", [])) if read.status_code == 200 else None
                for method in ("POST", "PATCH", "DELETE"):
                    url = f"/admin/api/tables/{name}/" + ("" if method == "POST" else "1/")
                    refused = await client.request(method, url, headers=headers, json={})
                    assert refused.status_code == 403, (role, method, name, refused.status_code)
                if count is not None:
                    assert len((await client.get(f"/admin/api/tables/{name}/")).json()["rows"]) == count
        forms = {form["slug"] for form in (await client.get("/admin/api/forms/")).json()}
        for form in ADMIN_APP.forms:
            allowed = role in form_access(form.slug)
            schema = await client.get(f"/admin/api/forms/{form.slug}/schema/")
            assert (schema.status_code == 200) == allowed, (role, form.slug, schema.status_code)
            assert (form.slug in forms) == allowed
            if not allowed:
                posted = await client.post(f"/admin/api/forms/{form.slug}/", headers=headers, json={})
                assert posted.status_code == 403, (role, form.slug)


async def test_a_user_without_a_role_gets_nothing(client) -> None:
    from piccolo.apps.user.tables import BaseUser

    await BaseUser.create_user(username="norole", password="correct-horse-battery-9", email="n@example.com",
                               active=True, admin=True)
    await client.get("/admin/")
    login = await client.post("/admin/public/login/", json={"username": "norole", "password": "correct-horse-battery-9"},
                              headers={"X-CSRFToken": client.cookies.get("csrftoken")})
    assert login.status_code in (200, 303)
    response = await client.get("/admin/api/tables/lead/")
    assert response.status_code == 403 and "no role" in response.text
    page = await client.get("/desk/", headers={"accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"].startswith("/desk/login")
    from tests.staff import csrf_token

    token = await csrf_token(client)
    refused = await client.post("/desk/login", data={"_csrf_token": token, "username": "norole",
                                                     "password": "correct-horse-battery-9"})
    assert refused.status_code == 401 and "no role here" in refused.text


async def test_every_desk_form_needs_its_csrf_token(client) -> None:
    from piccolo.apps.user.tables import BaseUser

    from admin.tables import StaffRole

    await make_staff("boss", "admin")
    await desk_login(client, "boss")
    posts = [(path, handler) for path, method, handler in _desk_routes() if method == "POST"]
    assert posts
    before = (await BaseUser.count(), await StaffRole.count())
    for path, _ in posts:
        response = await client.post(_concrete(path), data={"stage": "won"})
        assert response.status_code == 403 and "CSRF" in response.text, (path, response.status_code)
    assert (await BaseUser.count(), await StaffRole.count()) == before
    # Still logged in: the refused logout did not end the session.
    assert (await client.get("/desk/", headers={"accept": "text/html"})).status_code == 303


async def test_every_admin_form_and_table_write_needs_its_csrf_header(client) -> None:
    from admin.site import ADMIN_APP

    await make_staff("boss", "admin")
    await desk_login(client, "boss")
    await client.get("/admin/")
    for form in ADMIN_APP.forms:
        response = await client.post(f"/admin/api/forms/{form.slug}/", json={})
        assert response.status_code == 403, (form.slug, response.status_code)
    response = await client.post("/admin/api/tables/topic/", json={"name": "CSRF", "slug": "csrf"})
    assert response.status_code == 403
    from landing.tables import Topic

    assert not await Topic.exists().where(Topic.slug == "csrf")


@pytest.mark.parametrize("target, landed", [
    ("/desk/hot", "/desk/hot"),
    ("/admin/", "/admin/"),
    ("https://evil.example/", "/desk/"),
    ("//evil.example/desk/", "/desk/"),
    ("/\\evil.example", "/desk/"),
    ("/l/seo", "/desk/"),
    ("javascript:alert(1)", "/desk/"),
])
async def test_login_goes_back_only_to_a_desk_or_admin_page(client, target: str, landed: str) -> None:
    from tests.staff import PASSWORD, csrf_token

    await make_staff("sam", "sales")
    token = await csrf_token(client)
    response = await client.post("/desk/login", data={"_csrf_token": token, "username": "sam", "password": PASSWORD,
                                                      "next": target})
    assert response.status_code == 303 and response.headers["location"] == landed


async def test_a_wrong_password_is_refused_and_repeated_tries_are_limited(client) -> None:
    from tests.staff import csrf_token

    await make_staff("sam", "sales")
    token = await csrf_token(client)
    statuses = []
    for _ in range(10):
        response = await client.post("/desk/login", data={"_csrf_token": token, "username": "sam", "password": "nope"})
        statuses.append(response.status_code)
        assert "id" not in response.cookies
    assert statuses[0] == 401 and "wrong" in (await client.post(
        "/desk/login", data={"_csrf_token": token, "username": "other", "password": "nope"})).text
    assert statuses[-1] == 429
    assert (await client.get("/desk/", headers={"accept": "text/html"})).headers["location"].startswith("/desk/login")


async def test_logout_ends_the_session_for_the_desk_and_the_admin(client) -> None:
    from tests.staff import csrf_token

    await make_staff("sam", "sales")
    await desk_login(client, "sam")
    assert (await client.get("/admin/api/user/")).status_code == 200
    token = await csrf_token(client)
    assert (await client.post("/desk/logout", data={"_csrf_token": token})).status_code == 303
    assert (await client.get("/admin/api/user/")).status_code == 401


SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
HREF = "javascript:alert(1)"
UNSAFE_LINK = re.compile(r"""(href|src|action|formaction)\s*=\s*["']?\s*javascript:""", re.I)


async def test_hostile_text_is_inert_on_every_desk_page(client, catalog) -> None:
    """A lead typed HTML and script everywhere it could (the fields Mautic's XSS advisories came
    through: names, company, UTM values, page URLs, referrer), and staff did in names and
    subjects; every desk page, with the ids of those rows, shows it as text."""
    from urllib.parse import quote

    from content.tables import Chain, Step
    from landing.tables import Event, Lead, Topic
    from scoring.service import rescore_lead
    from scoring.tables import ScoringRule
    from tests.integration.test_desk_sales import capture

    query = f"?utm_source={quote(SCRIPT)}&utm_campaign={quote(IMG)}&utm_term={quote(HREF)}"
    lead_id = await capture(client, "seo", "evil@example.com", query=query, referer=HREF, first_name=SCRIPT,
                            company=IMG, role=HREF, download=True)
    await Event.insert(Event(type="page_view", lead=lead_id, topic=(await Lead.objects().get(Lead.id == lead_id)).topic,
                             properties={"url": f"https://www.example.com/pricing?{quote(IMG)}", "title": SCRIPT,
                                         "referrer": HREF}))
    await ScoringRule.update({ScoringRule.name: f"Pricing {SCRIPT}"}).where(ScoringRule.name == "Visited pricing")
    await Topic.update({Topic.name: f"SEO {IMG}"}).where(Topic.slug == "seo")
    chain = await Chain.objects().get(Chain.topic == (await Topic.objects().get(Topic.slug == "seo")).id)
    await Chain.update({Chain.name: f"Nurture {SCRIPT}", Chain.check_error: f"step 1: {IMG}"}).where(Chain.id == chain.id)
    await Step.update({Step.subject_b: f"B {SCRIPT}"}).where(Step.chain == chain.id)
    from scoring.service import forget_cached

    forget_cached()
    await rescore_lead(lead_id)
    await make_staff("boss", "admin")
    await desk_login(client, "boss")
    from content.tables import Ebook

    seo_ebook = await Ebook.objects().get(Ebook.slug == "seo-ebook")
    ids = {"lead_id": str(lead_id), "chain_id": str(chain.id), "ebook_id": str(seo_ebook.id)}
    pages = [path for path, method, _ in _desk_routes() if method == "GET"]
    assert any("{lead_id" in p for p in pages) and any("{chain_id" in p for p in pages)
    for path in pages:
        url = re.sub(r"\{(\w+):\w+\}", lambda m: ids[m.group(1)], path)  # a new parameter must be added to `ids`
        response = await client.get(url, headers={"accept": "text/html"}, follow_redirects=True)
        assert response.status_code == 200, (url, response.status_code)
        html = response.text
        assert SCRIPT not in html and "<img src=x" not in html, url
        assert not UNSAFE_LINK.search(html), url
    lead_page = (await client.get(f"/desk/leads/{lead_id}", headers={"accept": "text/html"})).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in lead_page  # shown, as text


async def test_a_cookie_header_only_one_parser_accepts_does_not_skip_the_role_check(client) -> None:
    """The guard reads the session cookie as piccolo does: a header the standard library's strict
    parser rejects (`x=y z`) used to hide the session from the guard, not from piccolo."""
    from piccolo.apps.user.tables import BaseUser

    await make_staff("sam", "sales")
    await desk_login(client, "sam")
    await client.get("/admin/")
    token, csrf = client.cookies.get("id"), client.cookies.get("csrftoken")
    client.cookies.clear()
    cookie = {"cookie": f"id={token}; csrftoken={csrf}; x=y z", "X-CSRFToken": csrf}
    assert (await client.get("/admin/api/tables/api_key/", headers=cookie)).status_code == 403
    raised = await client.post("/admin/api/forms/add-a-staff-user/", headers=cookie,
                               json={"username": "mallory", "email": "m@example.com", "password": "x" * 12, "role": "admin"})
    assert raised.status_code == 403
    assert not await BaseUser.exists().where(BaseUser.username == "mallory")
    assert (await client.get("/admin/api/tables/lead/", headers=cookie)).status_code == 200  # sales' own table still works
    for odd in ("/admin//api/tables/api_key/", "/admin/api//tables/api_key/", "/admin/api/tables//api_key/"):
        response = await client.get(odd, headers=cookie)
        assert response.status_code in (401, 403, 404) and "rows" not in response.text, odd


def test_no_table_that_names_a_lead_is_readable_by_content() -> None:
    """Found from the tables themselves, not from the policy: any table with a foreign key to
    the lead shows the lead's email in piccolo-admin, so content may not read it."""
    from piccolo.columns import ForeignKey

    from admin.roles import table_access
    from admin.site import TABLES
    from admin.tables import Role
    from landing.tables import Lead

    naming_a_lead = [config.table_class._meta.tablename for config in TABLES
                     if config.table_class is Lead or any(
                         isinstance(column, ForeignKey) and column._foreign_key_meta.resolved_references is Lead
                         for column in config.table_class._meta.columns)]
    assert len(naming_a_lead) >= 12
    for name in naming_a_lead + ["notice", "download_link", "caught_mail"]:
        assert Role.content not in table_access(name).read, name


async def test_a_content_user_never_sees_a_leads_address(client, catalog, sink) -> None:
    """After a real capture and its letters, nothing a content user can open names the lead."""
    from tests.integration.conftest import run_worker_burst
    from tests.integration.test_desk_sales import capture

    lead_id = await capture(client, "seo", "private.person@example.com", first_name="Priya")
    await run_worker_burst(sink.url, sweep_first=True)
    assert sink.messages(), "the capture mailed the lead"
    await make_staff("cleo", "content")
    client.cookies.clear()
    await desk_login(client, "cleo")
    await client.get("/admin/")
    seen = []
    for name in (await client.get("/admin/api/tables/")).json():
        for query in ("", "?__readable=true"):
            response = await client.get(f"/admin/api/tables/{name}/{query}")
            assert response.status_code == 200, name
            seen.append((name, response.text))
    for path, method, handler in _desk_routes():
        if method == "GET" and _content_may(handler) and "{" not in path:
            response = await client.get(path, headers={"accept": "text/html"}, follow_redirects=True)
            seen.append((path, response.text))
    assert len(seen) > 20
    for where, text in seen:
        assert "private.person" not in text and "Priya" not in text, where
    assert lead_id


def _content_may(handler) -> bool:
    from admin.tables import Role

    return Role.content in (_roles_of(handler) or ())
