"""The sales desk: hot leads ranked per topic, the lead page, stage and owner changes kept with
who and when, and what is refused (bad input, wrong role, no login, hostile lead data)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from html import unescape
from urllib.parse import quote

import pytest
from piccolo.apps.user.tables import BaseUser

from admin.alerts import record_crossings
from admin.desk import sales
from content.delivery import Outcome, send_due_step
from content.mail import Relay
from content.tables import Delivery, Enrollment, EnrollmentStatus
from content.tracking import record_click, record_open
from landing.api import create_api_key
from landing.outcomes import Actor, change_outcome
from landing.rights import erase_lead
from landing.tables import ApiKeyScope, Conversion, Event, Lead, LeadChange, Topic
from scoring.service import rescore_lead
from server.settings import _parse_smtp_url
from tests.staff import admin_headers, csrf_token, desk_login, make_staff

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'
XSS_URL = "javascript:alert(1)"
ROW = re.compile(r'<tr data-lead="(\d+)" data-topic="(\d+)"')
JAVASCRIPT_HREF = re.compile(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", re.I)


# ----------------------------------------------------------------------------- helpers


async def topic_id(slug: str) -> int:
    return (await Topic.select(Topic.id).where(Topic.slug == slug).first())["id"]


async def capture(client, slug: str, email: str, query: str = "", referer: str | None = None, download: bool = False,
                  **fields: str) -> int:
    """A new visitor fills in a landing page's form (the page view first, as a browser does),
    and with `download` opens the ebook from the thank-you page."""
    client.cookies.delete("lk_vid")
    headers = {"referer": referer} if referer else {}
    page = await client.get(f"/l/{slug}{query}", headers=headers)
    assert page.status_code == 200
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
    response = await client.post(f"/l/{slug}{query}", data={"_csrf_token": token, "email": email, "consent": "on",
                                                            **fields}, headers=headers)
    assert response.status_code == 303, response.text
    if download:
        thanks = await client.get(response.headers["location"])
        pdf = await client.get(re.search(r'href="(/d/[^"]+)"', thanks.text).group(1))
        assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    return (await Lead.select(Lead.id).where(Lead.email == email).first())["id"]


async def site_event(client, key: str, email: str, **event) -> None:
    """An event from the company's own site, sent to the events API with a server key."""
    response = await client.post("/api/events", json={"email": email, **event}, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 202, response.text


async def rows(client, query: str = "") -> list[tuple[int, int]]:
    """The hot-leads list as (lead, topic) pairs, in order."""
    response = await client.get(f"/desk/hot{query}", headers={"accept": "text/html"})
    assert response.status_code == 200, response.text
    return [(int(lead), int(topic)) for lead, topic in ROW.findall(response.text)]


async def changes(lead_id: int) -> list[dict]:
    return await LeadChange.select().where(LeadChange.lead == lead_id).order_by(LeadChange.id)


def change_rows(html: str) -> list[list[str]]:
    """The lead page's history of changes, a row per change: what, from, to, who, where (the time left out)."""
    table = html[html.index('id="changes"'):]
    table = table[:table.index("</table>")]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
    return [[unescape(cell) for cell in row[1:]] for row in rows if row]


async def post_outcome(client, lead_id: int, accept: str = "text/html", **data: str):
    token = await csrf_token(client, f"/desk/leads/{lead_id}")
    return await client.post(f"/desk/leads/{lead_id}/outcome", data={"_csrf_token": token, **data},
                             headers={"accept": accept})


@pytest.fixture
async def server_key(catalog) -> str:
    return await create_api_key("crm", ApiKeyScope.server)


# ----------------------------------------------------------------------------- hot leads


async def test_hot_leads_are_ranked_per_topic_with_reasons_and_every_filter_works(client, catalog, server_key,
                                                                                  monkeypatch) -> None:
    seo, ads = await topic_id("seo"), await topic_id("paid-ads")
    sam = await make_staff("sam", "sales")
    maria = await make_staff("maria", "sales")
    # Both: asked for two ebooks and looked at both services' prices (the site's /services/<topic>
    # pages belong to their topic).
    both = await capture(client, "seo", "both@example.com", first_name="Bo", company="Acme")
    await capture(client, "paid-ads", "both@example.com")
    for service in ("seo", "paid-ads"):
        await site_event(client, server_key, "both@example.com", type="page_view",
                         url=f"https://www.example.com/services/{service}/pricing")
    # Eager: the SEO ebook and SEO pricing twice: the highest SEO score.
    eager = await capture(client, "seo", "eager@example.com", first_name="Eve", company="Globex")
    for _ in range(2):
        await site_event(client, server_key, "eager@example.com", type="page_view",
                         url="https://www.example.com/services/seo/pricing")
    # Mild: only the SEO ebook: scored, not hot.
    mild = await capture(client, "seo", "mild@example.com", first_name="Mo")
    # A historical CRM row and an erased lead are never listed.
    historical = (await Lead.insert(Lead(external_id="crm-1", historical=True, topic=seo)).returning(Lead.id))[0]["id"]
    await Event.insert(*[Event(type="page_view", lead=historical, properties={"url": "/pricing"}) for _ in range(3)])
    gone = await capture(client, "seo", "gone@example.com")
    for lead in (both, eager, mild, historical, gone):
        await rescore_lead(lead)
    await erase_lead(gone)
    await desk_login(client, "sam")

    everything = await rows(client)
    assert everything[0] == (eager, seo), "the highest combined score first"
    assert set(everything) == {(eager, seo), (both, seo), (both, ads)}, "hot on two topics: a row on each"
    assert await rows(client, f"?topic={seo}") == [(eager, seo), (both, seo)]
    assert await rows(client, f"?topic={ads}") == [(both, ads)]
    all_seo = await rows(client, f"?topic={seo}&show=all")
    assert all_seo[:2] == [(eager, seo), (both, seo)] and all_seo[-1] == (mild, seo), "all scored: the cold ones after"
    assert historical not in {lead for lead, _ in all_seo + everything} and gone not in {lead for lead, _ in all_seo}

    page = (await client.get(f"/desk/hot?topic={seo}", headers={"accept": "text/html"})).text
    eager_row = page[page.index(f'data-lead="{eager}"'):page.index("</tr>", page.index(f'data-lead="{eager}"'))]
    assert "Visited pricing (2×)" in eager_row and 'class="badge hot"' in eager_row, "top reasons and the hot badge"
    assert "eager@example.com" in eager_row and "Globex" in eager_row and f'href="/desk/leads/{eager}"' in eager_row
    assert len(re.findall(r"<li>", eager_row)) == 3, "the top three reasons"
    assert "just now" in eager_row or "min ago" in eager_row, "last activity"
    assert re.search(r'<button class="primary" type="submit">Apply</button>', page), "the filter button is no second Show"

    # Stage and owner filters read what sales recorded.
    await change_outcome(both, actor=Actor(maria, "maria"), stage="contacted", owner=maria)
    await change_outcome(eager, actor=Actor(sam, "sam"), owner=sam)
    assert await rows(client, "?stage=contacted") == [(both, seo), (both, ads)] or \
        await rows(client, "?stage=contacted") == [(both, ads), (both, seo)]
    assert await rows(client, "?stage=won") == []
    assert await rows(client, "?owner=me") == [(eager, seo)], "me: the logged-in user (sam)"
    assert {lead for lead, _ in await rows(client, f"?owner={maria}")} == {both}
    assert await rows(client, "?owner=none&show=all") == [(mild, seo)]
    assert await rows(client, f"?owner=none&topic={ads}") == []

    # Paging keeps the filters.
    monkeypatch.setattr(sales, "PAGE_SIZE", 2)
    first = await client.get("/desk/hot?show=all", headers={"accept": "text/html"})
    assert [(int(a), int(b)) for a, b in ROW.findall(first.text)] == everything[:2]
    assert "Page 1 of 2" in first.text and 'href="/desk/hot?owner=anyone&amp;show=all&amp;page=2"' in first.text
    second = await rows(client, "?show=all&page=2")
    assert len(second) == 2 and set(second).isdisjoint(everything[:2])

    # Filters that cannot be: a clear 400, not a 500 and not a silently different list.
    for bad, words in (("?stage=wonn", "Unknown stage"), ("?topic=abc", "no topic"), ("?topic=99999", "no topic"),
                       ("?owner=someone", "Unknown owner"), ("?page=0", "No page"), ("?owner=99999", "no user"),
                       ("?show=cold", "Show either"), ("?owner=9999999999", "no user #9999999999"),
                       ("?owner=" + "9" * 30, "Unknown owner")):
        refused = await client.get(f"/desk/hot{bad}", headers={"accept": "text/html"})
        assert refused.status_code == 400 and words in unescape(refused.text), (bad, refused.text[:300])
        as_json = await client.get(f"/desk/hot{bad}", headers={"accept": "application/json"})
        assert as_json.status_code == 400 and words in as_json.json()["detail"]


# ----------------------------------------------------------------------------- the lead page


async def test_the_lead_page_shows_profile_scores_explanation_chart_and_every_kind_of_timeline_item(
        client, catalog, server_key, sink, monkeypatch) -> None:
    await make_staff("sam", "sales")
    lead_id = await capture(client, "seo", "vera@example.com", query="?utm_source=newsletter&utm_campaign=spring",
                            referer="https://mail.example/inbox", download=True, first_name="Vera", company="Acme",
                            role="CMO")
    # Scored a day ago (before anything happened: 0), then now: a history to draw, and a crossing into hot.
    await rescore_lead(lead_id, datetime.now(timezone.utc) - timedelta(days=1))
    enrollment = await Enrollment.objects().get(Enrollment.lead == lead_id)
    relay = Relay(_parse_smtp_url(sink.url))
    try:
        for _ in range(3):  # letters 1-3 (no delays in the test catalogue); the third holds a link
            assert (await send_due_step(enrollment.id, relay)).outcome == Outcome.sent
    finally:
        await relay.close()
    letters = await Delivery.select(Delivery.id, Delivery.subject, Delivery.links).where(
        Delivery.lead == lead_id).order_by(Delivery.id)
    await record_open(letters[0]["id"])
    assert await record_click(letters[2]["id"], 0) is not None
    await site_event(client, server_key, "vera@example.com", type="page_view",
                     url="https://www.example.com/pricing", title="Pricing")
    await Conversion.insert(Conversion(lead=lead_id, kind="booked call", value=250))
    await rescore_lead(lead_id)
    await record_crossings()
    await desk_login(client, "sam")
    assert (await post_outcome(client, lead_id, stage="contacted", owner="")).status_code == 303

    page = await client.get(f"/desk/leads/{lead_id}", headers={"accept": "text/html"})
    assert page.status_code == 200
    html = page.text
    text = unescape(html)
    # Profile, with where the lead came from.
    for expected in ("Vera", "vera@example.com", "Acme", "CMO", "newsletter", "spring", "/l/seo"):
        assert expected in text, expected
    assert '<a href="https://mail.example/inbox"' in html, "an http(s) referrer is a link"
    # Scores with the explanation.
    assert "Visited pricing (1×)" in text and "Asked for an ebook (1×)" in text
    assert re.search(r"<td class=\"topic\">SEO</td>\s*<td class=\"num\"><strong>\d+\.\d</strong> <span class=\"badge hot\">",
                     html)
    # The score history chart: an inline SVG, a line per topic, the hot threshold.
    assert '<svg' in html and 'class="chart"' in html and "hot threshold 30" in html and "SEO" in html
    assert "svg.chart{max-width:100%" in html, "the chart CSS is on the page"
    # The timeline, newest first, one item of each kind.
    timeline = html[html.index('<ul class="timeline">'):]
    timeline = timeline[:timeline.index("</ul>")]
    labels = re.findall(r'<span class="what">([^<]+)</span>', timeline)
    for label in ("Viewed a page", "Filled in a form", "Downloaded an ebook", "Ebook letter queued", "Letter sent",
                  "Opened a letter", "Clicked a link in a letter", "Stage changed", "Turned hot", "Converted"):
        assert label in labels, (label, labels)
    assert unescape(f"“{letters[0]['subject']}”") in unescape(timeline), "opens name their letter"
    assert "sales alert" in timeline, "a hot crossing shows its alert to sales"
    assert "https://www.example.com/pricing" in timeline and "booked call" in timeline
    assert "new → contacted" in unescape(timeline) and "by sam (desk)" in timeline
    moments = re.findall(r'<time datetime="([^"]*)"', timeline)
    assert moments == sorted(moments, reverse=True), "newest first"

    # A long history is capped, and the page says so.
    monkeypatch.setattr(sales, "TIMELINE_SHOWN", 5)
    capped = (await client.get(f"/desk/leads/{lead_id}", headers={"accept": "text/html"})).text
    total = await Event.count().where(Event.lead == lead_id) + await Delivery.count().where(Delivery.lead == lead_id)
    assert "Showing the latest 5 of" in capped and len(re.findall(r'<li class="k-', capped)) == 5
    assert int(re.search(r"Showing the latest 5 of (\d+)", capped).group(1)) >= total


async def test_topics_the_lead_shows_no_interest_in_are_one_line_not_rows_of_zeros(client, catalog) -> None:
    await make_staff("sam", "sales")
    lead_id = await capture(client, "seo", "focused@example.com", first_name="Fay")
    await rescore_lead(lead_id)
    await desk_login(client, "sam")
    html = (await client.get(f"/desk/leads/{lead_id}", headers={"accept": "text/html"})).text
    assert re.findall(r'<td class="topic">([^<]+)</td>', html) == ["SEO"], "only the topic with interest has a row"
    others = {t["name"] for t in await Topic.select(Topic.name).where(Topic.slug != "seo")}
    line = re.search(r'<p class="quiet" id="quiet-topics"><span class="muted">No interest yet in:</span> ([^<]+)</p>', html)
    assert len(others) == 2 and line and set(line.group(1).split(", ")) == others
    assert "No factor yet." not in html


# ----------------------------------------------------------------------------- stage and owner


async def test_stage_and_owner_changes_are_kept_with_who_and_when_and_a_no_op_writes_nothing(client, catalog) -> None:
    sam = await make_staff("sam", "sales")
    maria = await make_staff("maria", "sales")
    lead_id = await capture(client, "seo", "lead@example.com", first_name="Lee")
    await desk_login(client, "sam")
    before = datetime.now(timezone.utc)

    response = await post_outcome(client, lead_id, stage="won", owner=str(maria))
    assert response.status_code == 303 and response.headers["location"] == f"/desk/leads/{lead_id}?saved=1"
    lead = await Lead.objects().get(Lead.id == lead_id)
    assert (lead.stage, lead.owner) == ("won", maria)
    assert lead.outcome_at is not None and lead.outcome_at >= before, "won is an outcome: training reads the lead then"
    kept = await changes(lead_id)
    assert [(c["field"], c["old_value"], c["new_value"], c["changed_by"], c["changed_by_name"], c["via"]) for c in kept] == [
        ("stage", "new", "won", sam, "sam", "desk"), ("owner", "", "maria", sam, "sam", "desk")]
    assert all(c["changed_at"] >= before for c in kept)

    shown = await client.get(response.headers["location"], headers={"accept": "text/html"})
    assert 'Saved. The change is in the <a href="#changes">history</a> below.' in shown.text
    assert change_rows(shown.text) == [["owner", "—", "maria", "sam", "desk"], ["stage", "new", "won", "sam", "desk"]] \
        or change_rows(shown.text) == [["stage", "new", "won", "sam", "desk"], ["owner", "—", "maria", "sam", "desk"]]
    assert re.search(r'<option value="won" selected>', shown.text) and f'<option value="{maria}" selected>' in shown.text

    # The same values again: nothing written, outcome time kept, and the page says so.
    again = await post_outcome(client, lead_id, stage="won", owner=str(maria))
    assert again.status_code == 303 and again.headers["location"].endswith("?saved=0")
    assert len(await changes(lead_id)) == 2
    assert (await Lead.objects().get(Lead.id == lead_id)).outcome_at == lead.outcome_at
    assert "Nothing changed" in (await client.get(again.headers["location"], headers={"accept": "text/html"})).text

    # Unassigning is a change too; a stage that is no outcome leaves the outcome time alone.
    assert (await post_outcome(client, lead_id, stage="contacted", owner="")).status_code == 303
    lead = await Lead.objects().get(Lead.id == lead_id)
    assert (lead.stage, lead.owner) == ("contacted", None)
    assert [(c["field"], c["old_value"], c["new_value"]) for c in (await changes(lead_id))[2:]] == [
        ("stage", "won", "contacted"), ("owner", "maria", "")]


async def test_a_stage_at_the_chains_exit_stage_stops_its_letters(client, catalog, sink) -> None:
    await make_staff("sam", "sales")
    lead_id = await capture(client, "seo", "stop@example.com")
    enrollment = await Enrollment.objects().get(Enrollment.lead == lead_id)
    await desk_login(client, "sam")
    assert (await post_outcome(client, lead_id, stage="qualified")).status_code == 303
    relay = Relay(_parse_smtp_url(sink.url))
    try:
        result = await send_due_step(enrollment.id, relay)
    finally:
        await relay.close()
    assert result.outcome == Outcome.exited and sink.letters() == []
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment.id)
    assert enrollment.status == EnrollmentStatus.exited and enrollment.exit_reason == "stage qualified"


async def test_bad_input_gets_a_clear_error_and_changes_nothing(client, catalog) -> None:
    await make_staff("sam", "sales")
    content_user = await make_staff("cora", "content")
    plain = await BaseUser.create_user(username="visitor", password="correct-horse-9", email="v@example.com",
                                       active=True)
    lead_id = await capture(client, "seo", "keep@example.com")
    await desk_login(client, "sam")

    cases = [
        ({"stage": "winning"}, "Unknown stage"),
        ({"stage": "new", "owner": "99999"}, "There is no user #99999"),
        ({"owner": str(plain.id)}, "visitor is not an active sales or admin user"),
        ({"owner": str(content_user)}, "cora is not an active sales or admin user"),
        ({"owner": "maria"}, "Unknown owner"),
        ({"owner": "9999999999"}, "There is no user #9999999999"),
        ({"owner": "1" * 40}, "Unknown owner"),
        ({}, "Choose a stage or an owner"),
    ]
    for data, words in cases:
        page = await post_outcome(client, lead_id, **data)
        assert page.status_code == 400 and words in unescape(page.text), (data, page.status_code)
        assert 'role="alert"' in page.text and 'id="outcome-error"' in page.text, "the lead page, with the error"
        as_json = await post_outcome(client, lead_id, accept="application/json", **data)
        assert as_json.status_code == 400 and words in as_json.json()["detail"]

    token = await csrf_token(client, f"/desk/leads/{lead_id}")
    for url in ("/desk/leads/99999", "/desk/leads/99999/outcome", "/desk/leads/99999999999999999"):
        method = client.get if not url.endswith("outcome") else client.post
        kwargs = {"data": {"_csrf_token": token, "stage": "won"}} if method == client.post else {}
        response = await method(url, headers={"accept": "text/html"}, **kwargs)
        assert response.status_code == 404 and "no lead #99999" in response.text, url
    no_csrf = await client.post(f"/desk/leads/{lead_id}/outcome", data={"stage": "won"}, headers={"accept": "text/html"})
    assert no_csrf.status_code == 403
    forged = await client.post(f"/desk/leads/{lead_id}/outcome", data={"_csrf_token": "forged", "stage": "won"})
    assert forged.status_code == 403
    # An erased lead has no page and takes no stage.
    gone = await capture(client, "seo", "gone@example.com")
    await erase_lead(gone)
    assert (await client.get(f"/desk/leads/{gone}", headers={"accept": "text/html"})).status_code == 404
    erased_post = await client.post(f"/desk/leads/{gone}/outcome", data={"_csrf_token": token, "stage": "won"})
    assert erased_post.status_code == 404

    lead = await Lead.objects().get(Lead.id == lead_id)
    assert (lead.stage, lead.owner, lead.outcome_at) == ("new", None, None)
    assert await LeadChange.count() == 0


# ----------------------------------------------------------------------------- who may


async def test_the_content_role_and_anonymous_visitors_are_refused_and_change_nothing(client, catalog) -> None:
    await make_staff("cora", "content")
    lead_id = await capture(client, "seo", "private@example.com")
    anonymous_page = await client.get(f"/desk/leads/{lead_id}", headers={"accept": "text/html"})
    assert anonymous_page.status_code == 303
    assert anonymous_page.headers["location"] == f"/desk/login?next={quote(f'/desk/leads/{lead_id}')}"
    anonymous_hot = await client.get("/desk/hot?topic=1", headers={"accept": "text/html"})
    assert anonymous_hot.headers["location"] == f"/desk/login?next={quote('/desk/hot?topic=1')}"
    assert (await client.get("/desk/hot", headers={"accept": "application/json"})).status_code == 401
    token = await csrf_token(client)  # a valid token (from the login page), still no session
    anonymous_post = await client.post(f"/desk/leads/{lead_id}/outcome", data={"_csrf_token": token, "stage": "won"})
    assert anonymous_post.status_code in (401, 403)

    await desk_login(client, "cora")
    for url in ("/desk/hot", f"/desk/leads/{lead_id}"):
        refused = await client.get(url, headers={"accept": "text/html"})
        assert refused.status_code == 403 and "content role cannot open this page" in refused.text
        assert "private@example.com" not in refused.text
    token = await csrf_token(client)
    post = await client.post(f"/desk/leads/{lead_id}/outcome", data={"_csrf_token": token, "stage": "won"})
    assert post.status_code == 403
    assert (await Lead.objects().get(Lead.id == lead_id)).stage == "new" and await LeadChange.count() == 0


async def test_a_user_of_another_role_is_refused_with_their_own_menu(client, catalog) -> None:
    await make_staff("cora", "content")
    anonymous = await client.get("/desk/hot", headers={"accept": "text/html"})
    assert anonymous.status_code == 303, "no user: the login page, as before"

    await desk_login(client, "cora")
    refused = await client.get("/desk/hot", headers={"accept": "text/html"})
    assert refused.status_code == 403 and "Not for your role" in refused.text
    header = refused.text[refused.text.index('<header class="bar">'):refused.text.index("</header>")]
    assert 'href="/desk/dashboard"' in header and 'href="/desk/chains"' in header, "the content menu"
    assert 'href="/desk/hot"' not in header, "not the sales pages it was refused"
    assert "cora" in header and '<span class="role">content</span>' in header
    assert 'action="/desk/logout"' in header and 'name="_csrf_token"' in header, "a working Log out"
    as_json = await client.get("/desk/hot", headers={"accept": "application/json"})
    assert as_json.status_code == 403 and as_json.json()["detail"] == "The content role cannot open this page."


# ----------------------------------------------------------------------------- hostile lead data


async def test_hostile_lead_data_renders_inert_on_both_pages(client, catalog, server_key) -> None:
    await make_staff("sam", "sales")
    query = f"?utm_source={quote(XSS_SCRIPT)}&utm_campaign={quote(XSS_IMG)}&utm_content={quote(XSS_URL)}"
    lead_id = await capture(client, "seo", "evil@example.com", query=query, referer=XSS_URL, first_name=XSS_SCRIPT,
                            last_name=XSS_IMG, company=XSS_IMG, role=XSS_URL)
    for url, referrer, title in ((XSS_URL, XSS_IMG, XSS_SCRIPT), ("https://www.example.com/pricing?x=" + quote(XSS_IMG),
                                                                  XSS_URL, XSS_IMG), ("JavaScript:alert(1)//pricing",
                                                                                      "", "")):
        await site_event(client, server_key, "evil@example.com", type="page_view", url=url, referrer=referrer,
                         title=title, properties={"note": XSS_SCRIPT})
    await rescore_lead(lead_id)
    assert (await Lead.objects().get(Lead.id == lead_id)).first_name == XSS_SCRIPT
    await desk_login(client, "sam")

    hot = await client.get("/desk/hot", headers={"accept": "text/html"})
    assert f'data-lead="{lead_id}"' in hot.text, "the lead is listed (it is hot)"
    lead = await client.get(f"/desk/leads/{lead_id}", headers={"accept": "text/html"})
    assert lead.status_code == 200
    for page in (hot.text, lead.text):
        assert "<script>alert" not in page and "<img src=x" not in page
        assert not JAVASCRIPT_HREF.search(page)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, "shown, as text"
    assert "javascript:alert(1)" in lead.text, "a javascript: URL is shown as text, not as a link"
    assert 'href="https://www.example.com/pricing?x=%22%3E%3Cimg' in lead.text, "an http(s) URL stays a link"


# ----------------------------------------------------------------------------- the admin table


async def test_a_stage_set_in_the_admin_table_is_kept_with_who_and_when(client, catalog) -> None:
    sam = await make_staff("sam", "sales")
    maria = await make_staff("maria", "sales")
    plain = await BaseUser.create_user(username="visitor", password="correct-horse-9", email="v@example.com",
                                       active=True)
    lead_id = await capture(client, "seo", "table@example.com", company="Acme")
    await desk_login(client, "sam")
    headers = await admin_headers(client)
    before = datetime.now(timezone.utc)

    response = await client.patch(f"/admin/api/tables/lead/{lead_id}/", json={"stage": "qualified", "company": "Acme Ltd"},
                                  headers=headers)
    assert response.status_code == 200, response.text
    lead = await Lead.objects().get(Lead.id == lead_id)
    assert (lead.stage, lead.company) == ("qualified", "Acme Ltd") and lead.outcome_at >= before
    kept = await changes(lead_id)
    assert [(c["field"], c["old_value"], c["new_value"], c["changed_by"], c["changed_by_name"], c["via"]) for c in kept] == [
        ("stage", "new", "qualified", sam, "sam", "admin table")]

    owner = await client.patch(f"/admin/api/tables/lead/{lead_id}/", json={"owner": maria}, headers=headers)
    assert owner.status_code == 200, owner.text
    assert (await changes(lead_id))[-1]["new_value"] == "maria"
    # An edit that leaves the stage as it is records nothing; an owner who is not staff is refused.
    same = await client.patch(f"/admin/api/tables/lead/{lead_id}/", json={"stage": "qualified", "role": "CEO"},
                              headers=headers)
    assert same.status_code == 200 and (await Lead.objects().get(Lead.id == lead_id)).role == "CEO"
    refused = await client.patch(f"/admin/api/tables/lead/{lead_id}/", json={"owner": plain.id, "stage": "won"},
                                 headers=headers)
    assert refused.status_code == 400 and "not an active sales or admin user" in refused.text
    bad_stage = await client.patch(f"/admin/api/tables/lead/{lead_id}/", json={"stage": "winning"}, headers=headers)
    assert bad_stage.status_code in (400, 422)
    lead = await Lead.objects().get(Lead.id == lead_id)
    assert (lead.stage, lead.owner) == ("qualified", maria) and len(await changes(lead_id)) == 2

    page = await client.get(f"/desk/leads/{lead_id}", headers={"accept": "text/html"})
    assert ["stage", "new", "qualified", "sam", "admin table"] in change_rows(page.text)
