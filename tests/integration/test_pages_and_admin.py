"""Landing page errors, the honeypot, unsubscribe, health, and the admin behind its login."""

from __future__ import annotations

import re

from content.tables import Enrollment, Suppression
from content.delivery import email_hash
from landing.tables import Consent, Event, Lead, Visitor
from landing.tokens import sign
from tests.integration.conftest import landing_form


async def test_unknown_slug_is_a_friendly_404(client, catalog) -> None:
    response = await client.get("/l/no-such-page")
    assert response.status_code == 404
    assert "does not exist" in response.text


async def test_unknown_paths_are_a_friendly_page_for_people_and_json_for_the_api(client) -> None:
    response = await client.get("/no-such-page", headers={"accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 404 and "does not exist" in response.text
    response = await client.get("/api/no-such-thing", headers={"accept": "text/html"})
    assert response.status_code == 404 and response.json()["status_code"] == 404


async def test_first_field_in_error_gets_the_focus(client, catalog) -> None:
    token = await landing_form(client, "seo")
    response = await client.post("/l/seo", data={"_csrf_token": token, "email": "ok@example.com"})
    assert response.status_code == 422
    assert re.search(r'<input[^>]*name="consent"[^>]*autofocus', response.text), "the consent box, the only error"
    assert response.text.count("autofocus") == 1


async def test_bad_email_comes_back_inline_with_input_kept_and_nothing_written(client, catalog) -> None:
    token = await landing_form(client, "seo")
    response = await client.post("/l/seo", data={"_csrf_token": token, "email": "not-an-email", "first_name": "Dora",
                                                 "company": "Globex", "consent": "on"})
    assert response.status_code == 422
    assert 'id="email-error"' in response.text and "not valid" in response.text
    assert 'value="not-an-email"' in response.text and 'value="Dora"' in response.text
    assert 'value="Globex"' in response.text
    assert await Lead.count() == 0 and await Consent.count() == 0
    assert await Event.count().where(Event.type == "form_submit") == 0


async def test_missing_consent_is_refused(client, catalog) -> None:
    token = await landing_form(client, "seo")
    response = await client.post("/l/seo", data={"_csrf_token": token, "email": "eva@example.com"})
    assert response.status_code == 422
    assert 'id="consent-error"' in response.text
    assert await Lead.count() == 0


async def test_html_in_fields_renders_inert_on_the_error_page(client, catalog) -> None:
    token = await landing_form(client, "seo")
    response = await client.post("/l/seo", data={"_csrf_token": token, "email": "x@", "first_name": '"><script>alert(1)</script>'})
    assert response.status_code == 422
    assert "<script>alert(1)</script>" not in response.text
    assert "&lt;script&gt;" in response.text or "&#34;&gt;&lt;script" in response.text


async def test_form_without_csrf_token_is_refused(client, catalog) -> None:
    await client.get("/l/seo")
    response = await client.post("/l/seo", data={"email": "femi@example.com", "consent": "on"})
    assert response.status_code == 403
    assert await Lead.count() == 0


async def test_csrf_holds_on_slugs_that_look_like_excluded_paths(client, catalog) -> None:
    from content.tables import LandingPage

    # The exclusions are patterns searched in the path: these slugs contain "/api",
    # "/admin" and "/health" and must still require the token.
    page_id = (await LandingPage.select(LandingPage.id).where(LandingPage.slug == "seo").first())["id"]
    for slug in ("api-guide", "admin-tips", "health"):
        await LandingPage.update({LandingPage.slug: slug}).where(LandingPage.id == page_id)
        await client.get(f"/l/{slug}")
        response = await client.post(f"/l/{slug}", data={"email": f"{slug}@example.com", "consent": "on"})
        assert response.status_code == 403, slug
    assert await Lead.count() == 0


async def test_filled_honeypot_looks_accepted_but_stores_nothing(client, catalog) -> None:
    token = await landing_form(client, "seo")
    response = await client.post("/l/seo", data={"_csrf_token": token, "email": "bot@example.com", "consent": "on",
                                                 "website": "http://spam.example"})
    assert response.status_code == 303
    thanks = await client.get(response.headers["location"])
    assert thanks.status_code == 200 and "please confirm" in thanks.text
    assert await Lead.count() == 0 and await Enrollment.count() == 0 and await Visitor.count() == 1
    assert await Consent.count() == 0 and await Event.count() == 1, "only the page view before the POST"


async def test_unsubscribe_get_only_asks_and_post_suppresses_at_once(client, catalog) -> None:
    token = await landing_form(client, "seo")
    await client.post("/l/seo", data={"_csrf_token": token, "email": "gus@example.com", "consent": "on"})
    lead = await Lead.objects().get(Lead.email == "gus@example.com")
    link = f"/u/{sign('unsubscribe', lead.id)}"

    page = await client.get(link)
    assert page.status_code == 200 and "Yes, unsubscribe me" in page.text
    assert await Suppression.count() == 0

    # RFC 8058: the mailbox provider POSTs without cookies or CSRF token.
    client.cookies.clear()
    response = await client.post(link, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200 and "unsubscribed" in response.text
    assert await Suppression.exists().where(Suppression.email_hash == email_hash("gus@example.com"))
    enrollment = await Enrollment.objects().get(Enrollment.lead == lead.id)
    assert enrollment.status == "exited" and enrollment.due_at is None

    # Posting again changes nothing; the link now says so instead of asking again. The
    # unsubscribe is one event, which scoring rules can weigh.
    again = await client.post(link)
    assert again.status_code == 200
    assert "already unsubscribed" in (await client.get(link)).text
    assert await Event.count().where((Event.lead == lead.id) & (Event.type == "unsubscribe")) == 1
    assert "gus@example.com" in page.text, "the confirmation names the address"


async def test_tampered_unsubscribe_token_is_refused(client, catalog) -> None:
    token = sign("unsubscribe", 1)
    response = await client.post(f"/u/{token[:-2]}xx")
    assert response.status_code == 400 and "not valid" in response.text
    response = await client.post(f"/u/{sign('download', 1)}")
    assert response.status_code == 400
    assert await Suppression.count() == 0


async def test_health_reports_database_and_redis(client) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


async def test_admin_redirects_to_slash_and_requires_login(client) -> None:
    response = await client.get("/admin", follow_redirects=False)
    assert response.status_code in (301, 302, 307, 308)
    assert response.headers["location"].endswith("/admin/")
    response = await client.get("/admin/api/tables/", follow_redirects=False)
    assert response.status_code == 401


async def test_admin_login_lists_every_table(client) -> None:
    from piccolo.apps.user.tables import BaseUser

    await BaseUser.create_user(username="sales", password="correct-horse-9", email="s@example.com", active=True, admin=True, superuser=True)
    page = await client.get("/admin/")
    assert page.status_code == 200
    csrf = client.cookies.get("csrftoken")
    assert csrf, "piccolo-admin sets its CSRF cookie"
    bad = await client.post("/admin/public/login/", json={"username": "sales", "password": "wrong-password"},
                            headers={"X-CSRFToken": csrf})
    assert bad.status_code in (401, 403)
    good = await client.post("/admin/public/login/", json={"username": "sales", "password": "correct-horse-9"},
                             headers={"X-CSRFToken": csrf})
    assert good.status_code in (200, 303), good.text
    tables = await client.get("/admin/api/tables/")
    assert tables.status_code == 200
    names = set(tables.json())
    for expected in ("lead", "event", "score", "chain", "step", "offer", "enrollment", "delivery",
                     "suppression", "topic", "ebook", "landing_page", "scoring_rule", "caught_mail"):
        assert expected in names

    # Caught mail is a record of what was sent: readable, never editable.
    from server.tables import CaughtMail

    await CaughtMail.insert(CaughtMail(sender="a@x.org", recipients="b@x.org", subject="Hello", raw="Subject: Hello"))
    row_id = (await CaughtMail.select(CaughtMail.id).first())["id"]
    listed = await client.get("/admin/api/tables/caught_mail/")
    assert listed.status_code == 200 and listed.json()["rows"][0]["subject"] == "Hello"
    headers = {"X-CSRFToken": client.cookies.get("csrftoken")}
    edit = await client.patch(f"/admin/api/tables/caught_mail/{row_id}/", json={"subject": "Forged"}, headers=headers)
    delete = await client.delete(f"/admin/api/tables/caught_mail/{row_id}/", headers=headers)
    add = await client.post("/admin/api/tables/caught_mail/", json={"subject": "New", "raw": "x"}, headers=headers)
    assert (edit.status_code, delete.status_code, add.status_code) == (405, 405, 405)
    assert [r["subject"] for r in await CaughtMail.select(CaughtMail.subject)] == ["Hello"]


async def test_index_lists_published_pages(client, catalog) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert set(re.findall(r'href="/l/([a-z-]+)"', response.text)) == {"seo", "paid-ads", "analytics"}


async def test_a_stage_set_in_the_admin_records_when_the_outcome_came(client, catalog) -> None:
    from piccolo.apps.user.tables import BaseUser

    token = await landing_form(client, "seo")
    await client.post("/l/seo", data={"_csrf_token": token, "email": "won@example.com", "consent": "on"})
    lead = await Lead.objects().get(Lead.email == "won@example.com")
    assert lead.outcome_at is None
    await BaseUser.create_user(username="sam", password="correct-horse-9", email="sam@example.com", active=True, admin=True, superuser=True)
    await client.get("/admin/")
    headers = {"X-CSRFToken": client.cookies.get("csrftoken")}
    login = await client.post("/admin/public/login/", json={"username": "sam", "password": "correct-horse-9"}, headers=headers)
    assert login.status_code in (200, 303)
    headers = {"X-CSRFToken": client.cookies.get("csrftoken")}
    response = await client.patch(f"/admin/api/tables/lead/{lead.id}/", json={"stage": "won"}, headers=headers)
    assert response.status_code == 200, response.text
    lead = await Lead.objects().get(Lead.id == lead.id)
    assert lead.stage == "won" and lead.outcome_at is not None, "training reads the lead as of this moment"


async def _admin_login(client) -> dict[str, str]:
    from piccolo.apps.user.tables import BaseUser

    await BaseUser.create_user(username="ops", password="correct-horse-9", email="ops@example.com", active=True, admin=True, superuser=True)
    await client.get("/admin/")
    login = await client.post("/admin/public/login/", json={"username": "ops", "password": "correct-horse-9"},
                              headers={"X-CSRFToken": client.cookies.get("csrftoken")})
    assert login.status_code in (200, 303), login.text
    return {"X-CSRFToken": client.cookies.get("csrftoken")}


async def test_admin_makes_an_api_key_once_and_keeps_only_its_hash(client, catalog) -> None:
    from landing.api import hash_key
    from landing.tables import ApiKey

    headers = await _admin_login(client)
    response = await client.post("/admin/api/forms/create-api-key/", headers=headers,
                                 json={"name": "www snippet", "scope": "browser", "allowed_origins": "https://www.example.com"})
    assert response.status_code == 200, response.text
    key = re.search(r"(lkb_[A-Za-z0-9_-]+)", response.text).group(1)
    row = await ApiKey.objects().get(ApiKey.name == "www snippet")
    assert row.key_hash == hash_key(key) and key not in str(await ApiKey.select())
    accepted = await client.post("/api/events", json={"type": "page_view", "visitor_id": "v" * 20},
                                 headers={"authorization": f"Bearer {key}", "origin": "https://www.example.com"})
    assert accepted.status_code == 202
    made_by_hand = await client.post("/admin/api/tables/api_key/", headers=headers,
                                     json={"name": "x", "prefix": "x", "key_hash": "0" * 64})
    assert made_by_hand.status_code == 405


async def test_admin_erases_a_lead_only_when_confirmed(client, catalog) -> None:
    token = await landing_form(client, "seo")
    await client.post("/l/seo", data={"_csrf_token": token, "email": "eli@example.com", "consent": "on"})
    lead = await Lead.objects().get(Lead.email == "eli@example.com")
    headers = await _admin_login(client)
    refused = await client.post("/admin/api/forms/erase-a-lead/", headers=headers, json={"email": "eli@example.com"})
    assert refused.status_code >= 400 and "confirm" in refused.text
    assert await Lead.exists().where(Lead.email == "eli@example.com")
    exported = await client.post("/admin/api/forms/export-lead-data/", headers=headers, json={"email": "eli@example.com"})
    assert exported.status_code == 200 and "eli@example.com" in exported.text
    erased = await client.post("/admin/api/forms/erase-a-lead/", headers=headers,
                               json={"email": "eli@example.com", "confirm": True})
    assert erased.status_code == 200, erased.text
    assert (await Lead.objects().get(Lead.id == lead.id)).email is None
