"""The landing form: redirect after POST, touches, progressive profiling, rate limits, and bad input."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from content.tables import Enrollment, LandingPage, Notice
from landing.tables import Consent, Event, Lead, Visitor
from landing.tokens import unsign
from tests.integration.conftest import landing_form


async def post_form(client, slug: str, query: str = "", **fields: str):
    token = await landing_form(client, slug)
    return await client.post(f"/l/{slug}{query}", data={"_csrf_token": token, **fields})


async def counts() -> tuple[int, ...]:
    return (await Lead.count(), await Consent.count(), await Event.count().where(Event.type == "form_submit"),
            await Enrollment.count(), await Notice.count())


async def test_accepted_form_redirects_to_a_thank_you_page_with_the_download(client, catalog) -> None:
    response = await post_form(client, "seo", email="ria@example.com", first_name="Ria", consent="on")
    assert response.status_code == 303
    location = response.headers["location"]
    state = unsign("thanks", parse_qs(urlsplit(location).query)["t"][0])
    lead = await Lead.objects().get(Lead.email == "ria@example.com")
    assert state["l"] == lead.id and state["c"] is False and state["d"]
    page = await client.get(location)
    assert page.status_code == 200
    assert "r•••@example.com" in page.text, "the address is shown masked"
    assert f'href="/d/{state["d"]}"' in page.text
    # The letter with the same link waits in its ledger for the worker.
    notice = await Notice.objects().output(load_json=True).get(Notice.lead == lead.id)
    assert (notice.kind, notice.status, notice.payload["token"]) == ("ebook", "pending", state["d"])


async def test_an_old_or_altered_thank_you_address_asks_for_the_form_again(client, catalog) -> None:
    response = await client.get("/l/seo/thanks?t=forged")
    assert response.status_code == 400 and "Fill in the form again" in response.text


async def test_consent_records_the_exact_text_version_ip_agent_and_page(client, catalog) -> None:
    await LandingPage.update({LandingPage.consent_text: "Send me the ebook and tips. v7 text.",
                              LandingPage.consent_version: "v7"}).where(LandingPage.slug == "seo")
    from landing.service import forget_pages

    forget_pages()
    token = await landing_form(client, "seo")
    await client.post("/l/seo", data={"_csrf_token": token, "email": "kai@example.com", "consent": "on"},
                      headers={"user-agent": "Test browser 1.0"})
    consent = await Consent.objects().get(Consent.lead == (await Lead.objects().get(Lead.email == "kai@example.com")).id)
    assert (consent.text, consent.version, consent.page_url) == ("Send me the ebook and tips. v7 text.", "v7", "/l/seo")
    assert consent.ip == "127.0.0.1" and consent.user_agent == "Test browser 1.0" and consent.given_at is not None


async def test_first_and_last_touch_come_from_the_visits(client, catalog) -> None:
    await client.get("/l/seo?utm_source=newsletter&utm_campaign=spring", headers={"referer": "https://mail.example/"})
    await client.get("/l/paid-ads?utm_source=google&utm_medium=cpc")
    token = await landing_form(client, "paid-ads")
    # The form posts to the page's own address, query included, so the last touch keeps its UTM.
    page = await client.get("/l/paid-ads?utm_source=google&utm_medium=cpc")
    assert 'action="/l/paid-ads?utm_source=google&amp;utm_medium=cpc"' in page.text
    await client.post("/l/paid-ads?utm_source=google&utm_medium=cpc",
                      data={"_csrf_token": token, "email": "tia@example.com", "consent": "on"})
    lead = await Lead.objects().output(load_json=True).get(Lead.email == "tia@example.com")
    assert lead.first_touch == {"utm_source": "newsletter", "utm_campaign": "spring", "referrer": "https://mail.example/"}
    assert lead.last_touch == {"utm_source": "google", "utm_medium": "cpc"}
    assert lead.source == "newsletter"
    # Every page view of this browser now belongs to the lead.
    assert await Event.count().where((Event.type == "page_view") & (Event.lead == lead.id)) == 4


async def test_a_returning_lead_is_asked_the_next_field_not_its_email(client, catalog) -> None:
    await post_form(client, "seo", email="uma@example.com", first_name="Uma", consent="on")
    page = await client.get("/l/paid-ads")
    assert "Welcome back, u•••@example.com" in page.text
    assert 'name="email"' not in page.text
    # The demo pages ask first_name, company, role: first_name is known, company comes next.
    asked = re.findall(r'<input id="(\w+)" name="\1" type="text"', page.text)
    assert [name for name in asked if name != "website"] == ["company"], "the honeypot aside"
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
    response = await client.post("/l/paid-ads", data={"_csrf_token": token, "company": "Umbra", "consent": "on"})
    assert response.status_code == 303
    lead = await Lead.objects().get(Lead.email == "uma@example.com")
    assert lead.company == "Umbra" and await Lead.count() == 1
    assert await Consent.count().where(Consent.lead == lead.id) == 2
    assert await Enrollment.count().where(Enrollment.lead == lead.id) == 2, "one chain per topic"
    # "Not you?" forgets the browser: the next page asks for an email again.
    forget = await client.get("/l/seo?forget=1")
    assert forget.status_code == 303
    assert 'name="email"' in (await client.get("/l/seo")).text


async def test_the_same_email_again_is_the_same_lead_with_a_new_event(client, catalog) -> None:
    await post_form(client, "seo", email="vic@example.com", consent="on")
    client.cookies.clear()  # another browser
    await post_form(client, "seo", email="VIC@example.com", first_name="Vic", consent="on")
    assert await Lead.count() == 1
    lead = await Lead.objects().first()
    assert lead.first_name == "Vic"
    assert await Event.count().where((Event.lead == lead.id) & (Event.type == "form_submit")) == 2
    assert await Visitor.count().where(Visitor.lead == lead.id) == 2


async def test_bad_input_comes_back_beside_its_field_with_the_input_kept(client, catalog) -> None:
    cases = [
        ({"email": "not-an-email"}, "email", "not valid"),
        ({"email": "a" * 250 + "@example.com"}, "email", "at most 254"),
        ({"email": "x@" + "a" * 64 + ".com"}, "email", "not valid"),
        ({"email": "ok@example.com", "first_name": "Eve\r\nBcc: victim@example.com"}, "first_name", "single line"),
        ({"email": "ok@example.com", "company": "C" * 201}, "company", "at most 200"),
        ({"email": "ok@example.com", "consent": ""}, "consent", "tick the box"),
    ]
    for fields, field, message in cases:
        data = {"consent": "on", "first_name": "Keep me"} | fields
        if data.get("consent") == "":
            data.pop("consent")
        response = await post_form(client, "seo", **data)
        assert response.status_code == 422, fields
        error = re.search(rf'<p class="error" id="{field}-error">([^<]+)</p>', response.text)
        assert error and message in error.group(1), (fields, response.text[-2000:])
        if field != "first_name":
            assert 'value="Keep me"' in response.text, "the visitor's input is kept"
    assert await counts() == (0, 0, 0, 0, 0)


async def test_html_in_fields_renders_inert_and_is_stored_as_text(client, catalog) -> None:
    payload = '<script>alert(1)</script><img src=x onerror=alert(2)>'
    response = await post_form(client, "seo", email="bad-format", first_name=payload, consent="on")
    assert response.status_code == 422
    assert "<script>alert(1)" not in response.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    response = await post_form(client, "seo", email="zed@example.com", first_name="<b>Zed</b>", company=payload, consent="on")
    assert response.status_code == 303
    lead = await Lead.objects().get(Lead.email == "zed@example.com")
    assert lead.company == payload, "stored as the visitor typed it; escaped wherever it is shown"
    page = await client.get("/l/seo")
    assert "<img src=x" not in page.text


async def test_unknown_and_unpublished_slugs_are_a_friendly_404(client, catalog) -> None:
    await LandingPage.update({LandingPage.published: False}).where(LandingPage.slug == "seo")
    from landing.service import forget_pages

    forget_pages()
    for path in ("/l/nope", "/l/seo"):
        response = await client.get(path, headers={"accept": "text/html"})
        assert response.status_code == 404 and "does not exist" in response.text
    response = await client.post("/l/nope", data={"email": "a@example.com", "consent": "on"})
    assert response.status_code in (403, 404)
    assert await counts() == (0, 0, 0, 0, 0)


async def test_a_flood_from_one_address_gets_429_with_retry_after(client, catalog) -> None:
    from server.settings import get_settings

    limit = get_settings().capture_limit_ip.count
    token = await landing_form(client, "seo")
    statuses = []
    for n in range(limit + 3):
        response = await client.post("/l/seo", data={"_csrf_token": token, "email": f"f{n}@example.com", "consent": "on"})
        statuses.append(response.status_code)
    assert statuses[:limit] == [303] * limit and statuses[limit:] == [429] * 3
    assert 0 < int(response.headers["retry-after"]) <= get_settings().capture_limit_ip.seconds + 1
    assert "Too many attempts" in response.text and 'value="f' in response.text, "the input is kept"
    assert await Lead.count() == limit, "nothing of the refused submissions was written"


async def test_one_address_submitted_too_often_is_limited_per_email(client, catalog) -> None:
    from server.settings import get_settings

    limit = get_settings().capture_limit_email.count
    for n in range(limit):
        client.cookies.clear()
        assert (await post_form(client, "seo", email="same@example.com", consent="on")).status_code == 303
    client.cookies.clear()
    response = await post_form(client, "seo", email="Same@Example.com", consent="on")
    assert response.status_code == 429 and response.headers["retry-after"]
    assert await Consent.count() == limit and await Notice.count() == limit


async def test_a_body_over_the_size_limit_is_413_and_not_utf8_is_400(client, catalog) -> None:
    token = await landing_form(client, "seo")
    big = await client.post("/l/seo", data={"_csrf_token": token, "email": "big@example.com", "consent": "on",
                                            "first_name": "x" * 70_000})
    assert big.status_code == 413
    raw = f"_csrf_token={token}&email=caf%E9@example.com&first_name=Ren%E9&consent=on".encode()
    latin = await client.post("/l/seo", content=raw, headers={"content-type": "application/x-www-form-urlencoded"})
    assert latin.status_code == 400 and "UTF-8" in latin.text
    assert await counts() == (0, 0, 0, 0, 0)


async def test_the_page_has_its_title_description_and_open_graph_tags(client, catalog) -> None:
    page = await client.get("/l/seo")
    bundle = await LandingPage.objects().get(LandingPage.slug == "seo")
    assert f"<title>{bundle.title}</title>" in page.text
    assert f'<meta name="description" content="{bundle.description}">' in page.text
    for tag in ("og:title", "og:description", "og:url", "og:type"):
        assert f'property="{tag}"' in page.text
    assert '<label for="email">Email</label>' in page.text and 'autocomplete="email"' in page.text


async def test_batched_page_views_reach_the_database_and_join_known_leads(client, catalog) -> None:
    from datetime import datetime, timezone

    from landing.pageviews import PageView, PageViewBuffer
    from landing.service import write_page_views

    await post_form(client, "seo", email="wes@example.com", consent="on")
    known_cookie = client.cookies.get("lk_vid")
    lead = await Lead.objects().get(Lead.email == "wes@example.com")
    rescored: list[set[int]] = []

    async def notify(leads: set[int]) -> None:
        rescored.append(leads)

    buffer = PageViewBuffer(write_page_views, notify, interval_ms=50)
    seo = lead.topic
    now = datetime.now(timezone.utc)
    # The same new browser twice in one batch: one visitor row, two events.
    for cookie in ("anon-cookie-000000001", "anon-cookie-000000001", known_cookie):
        await buffer.add(PageView(cookie, "seo", seo, {"utm_source": "x"}, "ua", now))
    await buffer.close()
    assert await Visitor.count().where(Visitor.cookie_id == "anon-cookie-000000001") == 1
    assert await Event.count().where(Event.type == "page_view") == 4  # the form's own GET, and these three
    assert await Event.count().where((Event.type == "page_view") & (Event.lead == lead.id)) == 2
    assert rescored == [{lead.id}]


async def test_enrollment_groups_and_variants_are_the_stable_buckets(client, catalog) -> None:
    """The capture's SQL (one statement on PostgreSQL) assigns the same groups as the Python."""
    from content.chains import assign_group, bucket
    from content.tables import Chain

    await Chain.update({Chain.holdout_percent: 50}).where(Chain.name == "SEO nurture")
    for n in range(18):  # under the per-address limit of 20 a minute
        client.cookies.clear()
        assert (await post_form(client, "seo", email=f"bucket{n}@example.com", consent="on")).status_code == 303
    enrollments = await Enrollment.select(Enrollment.lead, Enrollment.chain, Enrollment.group, Enrollment.variant,
                                          Enrollment.due_at)
    assert len(enrollments) == 18
    for e in enrollments:
        assert e["group"] == assign_group(e["chain"], e["lead"], 50).value
        assert e["variant"] == ("A" if bucket("variant", e["chain"], e["lead"]) < 50 else "B")
        assert (e["due_at"] is None) == (e["group"] == "control"), "the control group gets no letters"
    assert {e["group"] for e in enrollments} == {"control", "treatment"}


async def test_someone_typing_a_known_address_cannot_rename_that_lead(client, catalog) -> None:
    await post_form(client, "seo", email="ora@example.com", first_name="Ora", consent="on")
    client.cookies.clear()
    await post_form(client, "seo", email="ora@example.com", first_name="Mallory", company="Evil", consent="on")
    lead = await Lead.objects().get(Lead.email == "ora@example.com")
    assert lead.first_name == "Ora", "a filled field is kept"
    assert lead.company == "Evil", "an empty one may be filled"


async def test_a_nul_in_a_utm_value_is_dropped_not_a_500(client, catalog) -> None:
    response = await post_form(client, "seo", query="?utm_source=%00news%00&utm_medium=%00",
                               email="nul@example.com", consent="on")
    assert response.status_code == 303
    lead = await Lead.objects().output(load_json=True).get(Lead.email == "nul@example.com")
    assert lead.source == "news" and lead.last_touch == {"utm_source": "news"}


async def test_a_returning_browser_gets_the_ebook_by_letter_and_counts_against_the_address(client, catalog) -> None:
    from server.settings import get_settings

    await post_form(client, "seo", email="pat@example.com", consent="on")
    statuses = []
    for _ in range(get_settings().capture_limit_email.count):
        page = await client.get("/l/paid-ads")
        token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
        response = await client.post("/l/paid-ads", data={"_csrf_token": token, "consent": "on"})
        statuses.append(response.status_code)
        if response.status_code == 303:
            thanks = await client.get(response.headers["location"])
            assert "We sent the download link" in thanks.text and "/d/" not in thanks.text
    limit = get_settings().capture_limit_email.count
    assert statuses == [303] * (limit - 1) + [429], "the first capture by address counts too"
