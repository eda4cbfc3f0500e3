"""The desk in a real browser: sales find a hot lead, read why and set its stage; the content team read a
chain's results and the dashboard; on a phone and a desktop, with hostile lead text shown inert."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from playwright.async_api import Locator, Page, expect

from admin.alerts import record_crossings
from content.chains import enroll
from content.dashboard import content_warnings, lead_funnel, parse_period
from content.delivery import Outcome, send_due_step, suppress
from content.lifecycle import pause_chain
from content.mail import Relay
from content.results import chain_results
from content.tables import Chain, Delivery, Enrollment, EnrollmentGroup, Step, SuppressionReason
from content.tracking import record_click, record_open
from landing.api import create_api_key
from landing.tables import ApiKeyScope, Conversion, Lead, LeadChange, Topic
from scoring.service import forget_cached, rescore_lead
from server.embedded import free_port
from server.settings import _parse_smtp_url
from tests.staff import PASSWORD, make_staff

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'
XSS_URL = "javascript:alert(1)"
CSRF_INPUT = re.compile(r'name="_csrf_token" value="([^"]+)"')
SITE = "https://www.example.com"


# ----------------------------------------------------------------------------- a relay that can bounce


@dataclass
class SinkHandler:
    """An SMTP relay that takes every letter, except for addresses in `refused` (a 550 at RCPT: a bounce)."""

    refused: set[str] = field(default_factory=set)
    accepted: list[str] = field(default_factory=list)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.lower() in self.refused:
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.accepted.extend(envelope.rcpt_tos)
        return "250 Message accepted"


@dataclass
class Sink:
    handler: SinkHandler
    relay: Relay


@pytest.fixture(scope="module")
async def sink() -> AsyncIterator[Sink]:
    """A local aiosmtpd relay in a thread, and a leadkiln Relay pointed at it."""
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    relay = Relay(_parse_smtp_url(f"smtp://127.0.0.1:{port}"))
    try:
        yield Sink(handler, relay)
    finally:
        await relay.close()
        controller.stop()


# ----------------------------------------------------------------------------- building a history


async def topic_id(slug: str) -> int:
    return (await Topic.select(Topic.id).where(Topic.slug == slug).first())["id"]


async def capture(client: httpx.AsyncClient, slug: str, email: str, query: str = "", download: bool = False,
                  **fields: str) -> int:
    """A new visitor fills in a landing page's form on the live server (page view first, as a browser
    does) and, with `download`, opens the ebook from the thank-you page."""
    client.cookies.clear()
    page = await client.get(f"/l/{slug}{query}")
    assert page.status_code == 200, page.text[:300]
    token = CSRF_INPUT.search(page.text).group(1)
    posted = await client.post(f"/l/{slug}{query}", data={"_csrf_token": token, "email": email, "consent": "on",
                                                           **fields})
    assert posted.status_code == 303, posted.text[:500]
    if download:
        thanks = await client.get(posted.headers["location"])
        pdf = await client.get(re.search(r'href="(/d/[^"]+)"', thanks.text).group(1))
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
    return (await Lead.select(Lead.id).where(Lead.email == email).first())["id"]


async def site_event(client: httpx.AsyncClient, key: str, email: str, days_ago: float = 0, **event) -> None:
    """An event from the company's own site, sent to the live server's events API with a server key."""
    if days_ago:
        event["occurred_at"] = (datetime.now(timezone.utc) - timedelta(days=days_ago)).isoformat()
    response = await client.post("/api/events", json={"email": email, **event},
                                 headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 202, response.text


async def rescore_over(lead_id: int, days: list[float]) -> None:
    """Rescore as the hourly job would have on those days (oldest first), then now: a score history."""
    now = datetime.now(timezone.utc)
    for days_ago in sorted(days, reverse=True):
        await rescore_lead(lead_id, now - timedelta(days=days_ago))
    await rescore_lead(lead_id)


async def delivery_of(enrollment_id: int, position: int) -> int:
    """The ledger row of the enrollment's letter at that step."""
    row = await Delivery.select(Delivery.id).where(
        (Delivery.enrollment == enrollment_id) & (Delivery.step.position == position)).first()
    return row["id"]


@dataclass(frozen=True)
class SalesDesk:
    topics: dict[str, int]
    leads: dict[str, int]
    """by first name: evelyn (top SEO), pat (top paid ads), bo (hot on both), mo (not hot), hostile."""


@pytest.fixture(scope="module")
async def sales_desk(live_server: str, sink: Sink) -> SalesDesk:
    """Leads with real histories: captured through the live server's forms, pricing visits over the last
    days through the events API, a chain letter sent and opened, rescored as the hourly job would."""
    forget_cached()  # the catalogue was seeded again for this module: no topic ids of an earlier one
    key = await create_api_key("e2e site", ApiKeyScope.server)
    topics = {slug: await topic_id(slug) for slug in ("seo", "paid-ads", "analytics")}
    async with httpx.AsyncClient(base_url=live_server, timeout=20) as client:
        evelyn = await capture(client, "seo", "evelyn@globex.example.com", query="?utm_source=google&utm_campaign=audit",
                               download=True, first_name="Evelyn", company="Globex", role="Head of marketing")
        for days_ago in (9, 6, 3, 1):
            await site_event(client, key, "evelyn@globex.example.com", days_ago=days_ago, type="page_view",
                             url=f"{SITE}/services/seo/pricing", title="SEO pricing")
        pat = await capture(client, "paid-ads", "pat@initech.example.com", query="?utm_source=linkedin", download=True,
                            first_name="Pat", company="Initech", role="Founder")
        for days_ago in (7, 4, 2):
            await site_event(client, key, "pat@initech.example.com", days_ago=days_ago, type="page_view",
                             url=f"{SITE}/services/paid-ads/pricing", title="Paid ads pricing")
        bo = await capture(client, "seo", "bo@acme.example.com", first_name="Bo", company="Acme")
        await capture(client, "paid-ads", "bo@acme.example.com")
        for service in ("seo", "paid-ads"):
            for days_ago in (5, 2):
                await site_event(client, key, "bo@acme.example.com", days_ago=days_ago, type="page_view",
                                 url=f"{SITE}/services/{service}/pricing")
        mo = await capture(client, "seo", "mo@hooli.example.com", first_name="Mo", company="Hooli")
        hostile_query = f"?utm_source={quote(XSS_SCRIPT)}&utm_campaign={quote(XSS_IMG)}"
        hostile = await capture(client, "seo", "mallory@example.com", query=hostile_query, first_name=XSS_SCRIPT,
                                company=XSS_IMG, role=XSS_URL)
        for service in ("seo", "paid-ads"):
            for days_ago in (4, 2, 1):
                await site_event(client, key, "mallory@example.com", days_ago=days_ago, type="page_view",
                                 url=f"{SITE}/services/{service}/pricing?x={quote(XSS_IMG)}", title=XSS_SCRIPT,
                                 referrer=XSS_URL)

    # Evelyn got the SEO chain's first letter and opened it.
    enrollment = (await Enrollment.select(Enrollment.id).where(Enrollment.lead == evelyn).first())["id"]
    assert (await send_due_step(enrollment, sink.relay)).outcome == Outcome.sent
    await record_open(await delivery_of(enrollment, 1))

    for lead in (evelyn, pat, bo, hostile):
        await rescore_over(lead, [8, 5, 2.5, 0.5])
    await rescore_lead(mo)
    await record_crossings()
    return SalesDesk(topics, {"evelyn": evelyn, "pat": pat, "bo": bo, "mo": mo, "hostile": hostile})


@dataclass(frozen=True)
class ContentDesk:
    chain_id: int
    paused_chain_id: int


@pytest.fixture(scope="module")
async def content_desk(sales_desk: SalesDesk, live_server: str, sink: Sink) -> ContentDesk:
    """The Analytics chain with a known-shaped history: 40 leads over twelve weeks from four sources, a 30%
    holdout, letters sent through a real SMTP relay (bounces, opens, clicks, an unsubscribe, a complaint,
    conversions, hot and cold offers); the Paid ads chain paused, so its ebook collects leads for nothing."""
    analytics = sales_desk.topics["analytics"]
    chain = await Chain.objects().get(Chain.topic == analytics)
    await Chain.update({Chain.holdout_percent: 30}).where(Chain.id == chain.id)
    # The A/B step gets a link, so its click rates can be compared.
    await Step.update({Step.body_markdown: Step.body_markdown + "\n[See the dashboard template]({{ site.url }}/l/analytics)\n"}).where(
        (Step.chain == chain.id) & (Step.position == 2))
    now = datetime.now(timezone.utc)
    sources = ["landing", "google", "newsletter", "linkedin"]
    enrollments: list[tuple[int, int, str, str]] = []  # (enrollment, lead, email, group)
    for n in range(40):
        email = f"reader{n:02d}@example.com"
        lead = Lead(email=email, first_name=f"Reader {n}", company="Example", source=sources[n % 4], topic=analytics,
                    confirmed=n % 3 != 0, created_at=now - timedelta(days=2 + 2 * n, hours=3))
        await lead.save()
        await enroll(lead.id, analytics, now=lead.created_at)
        row = await Enrollment.select(Enrollment.id, Enrollment.group).where(
            (Enrollment.lead == lead.id) & (Enrollment.chain == chain.id)).first()
        enrollments.append((row["id"], lead.id, email, row["group"]))
    treated = [e for e in enrollments if e[3] == EnrollmentGroup.treatment]
    control = [e for e in enrollments if e[3] == EnrollmentGroup.control]
    assert len(treated) >= 15 and len(control) >= 3, (len(treated), len(control))

    # Parts for each kind of lead, by enrollment: bounced, complained, unsubscribed, converted early, hot.
    ids = [enrollment for enrollment, *_ in treated]
    bounced, complained, unsubscribed, converts, hot = (
        set(ids[:4]), ids[4], set(ids[5:7]), set(ids[7:10]), set(ids[10:12]))
    sink.handler.refused |= {email for enrollment, _, email, _ in treated if enrollment in bounced}
    key = await create_api_key("e2e content", ApiKeyScope.server)
    async with httpx.AsyncClient(base_url=live_server, timeout=20) as client:
        for enrollment, lead, email, _ in treated:
            if enrollment in hot:
                for days_ago in (3, 1, 0.5):
                    await site_event(client, key, email, days_ago=days_ago, type="page_view",
                                     url=f"{SITE}/services/analytics/pricing")
                await rescore_lead(lead)

    async def send(enrollment: int) -> Outcome:
        return (await send_due_step(enrollment, sink.relay)).outcome

    for index, (enrollment, lead, email, _) in enumerate(treated):
        if enrollment in bounced:
            assert await send(enrollment) == Outcome.bounced
            continue
        assert await send(enrollment) == Outcome.sent
        if index % 3 != 2:
            await record_open(await delivery_of(enrollment, 1))
        if enrollment == complained:
            await suppress(email, SuppressionReason.complaint, "feedback loop")
            continue
        assert await send(enrollment) == Outcome.sent
        variant = (await Enrollment.select(Enrollment.variant).where(Enrollment.id == enrollment).first())["variant"]
        step2 = await delivery_of(enrollment, 2)
        if variant == "B" or index % 4 == 0:  # B's subject draws more clicks
            assert await record_click(step2, 0) is not None
        elif index % 2:
            await record_open(step2)
        if enrollment in unsubscribed:
            await suppress(email, SuppressionReason.unsubscribe, "one-click")
            continue
        if enrollment in converts:
            await Conversion(lead=lead, kind="booked call", value=300).save()
            continue
        for position in (3, 4, 5):
            assert await send(enrollment) == Outcome.sent
            if position == 3 and index % 2:
                assert await record_click(await delivery_of(enrollment, 3), 0) is not None
        if enrollment in hot:
            await record_open(await delivery_of(enrollment, 5))
            await Conversion(lead=lead, kind="consultation", value=500).save()
    await Conversion(lead=control[0][1], kind="booked call", value=300).save()

    paid_ads = await Chain.objects().get(Chain.topic == sales_desk.topics["paid-ads"])
    await pause_chain(paid_ads.id)
    return ContentDesk(chain.id, paid_ads.id)


# ----------------------------------------------------------------------------- browser helpers


async def press(locator: Locator, viewport: str) -> None:
    """A finger on the phone, a mouse on the desktop."""
    await (locator.tap() if viewport == "phone" else locator.click())


WIDEST = """(limit) => [...document.body.querySelectorAll('*')]
  .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > limit + 0.5)
  .slice(0, 5).map(e => `${e.tagName.toLowerCase()}.${e.className.baseVal ?? e.className}: ${Math.round(e.getBoundingClientRect().right)}px`)"""


async def assert_fits_width(page: Page) -> None:
    """Nothing sticks out sideways: wide tables scroll inside their own box, the page does not (on a
    phone, a page wider than the screen is shown zoomed out, so the window grows with it: compare with
    the device's width)."""
    device = page.viewport_size["width"]
    scroll_width, inner_width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll_width <= device and inner_width <= device, (
        f"{page.url}: content {scroll_width}px wide on a {device}px screen: {await page.evaluate(WIDEST, device)}")


async def assert_charts_fit(page: Page, charts: Locator, least: int) -> None:
    """At least `least` charts, each drawn, not squeezed to a sliver, and inside the screen."""
    count = await charts.count()
    assert count >= least, f"{page.url}: {count} charts, expected at least {least}"
    width = page.viewport_size["width"]
    for index in range(count):
        box = await charts.nth(index).bounding_box()
        assert box is not None, f"{page.url}: chart {index} is not drawn"
        assert box["width"] >= min(240, width - 100) and box["height"] >= 30, (page.url, index, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (page.url, index, box, width)


def watch_for_script(page: Page) -> list[str]:
    """Every dialog (alert, confirm) a page opens and every script error: lead text must never run."""
    opened: list[str] = []

    async def dismiss(dialog) -> None:
        opened.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", dismiss)
    page.on("pageerror", lambda error: opened.append(f"error: {error}"))
    return opened


async def assert_inert(page: Page) -> None:
    """The hostile lead's text is on the page as text, and no element was made of it."""
    await expect(page.locator("img[src=x]")).to_have_count(0)
    await expect(page.locator("[onerror]")).to_have_count(0)
    assert await page.evaluate("[...document.scripts].filter(s => s.textContent.includes('alert(1)')).length") == 0
    assert await page.evaluate("[...document.links].filter(a => a.protocol === 'javascript:').length") == 0


async def log_in(page: Page, username: str, viewport: str, next_path: str | None = None) -> None:
    await page.goto(f"/desk/login?next={quote(next_path)}" if next_path else "/desk/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await press(page.get_by_role("button", name="Log in"), viewport)


async def row_scores(rows: Locator) -> list[float]:
    return [float(text) for text in await rows.locator(".score").all_inner_texts()]


# ----------------------------------------------------------------------------- sales


async def test_sales_finds_a_hot_lead_reads_why_and_sets_its_stage(page: Page, viewport: str, shot,
                                                                   sales_desk: SalesDesk) -> None:
    # Each device works its own topic, so the two runs never change the same lead.
    slug, topic_name, name = ("seo", "SEO", "evelyn") if viewport == "desktop" else ("paid-ads", "Paid ads", "pat")
    topic, lead_id = sales_desk.topics[slug], sales_desk.leads[name]
    username = f"sam-{viewport}"
    user_id = await make_staff(username, "sales")
    opened = watch_for_script(page)

    await log_in(page, username, viewport)
    await page.wait_for_url("**/desk/hot")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Hot leads")
    await expect(page.locator("header .who")).to_contain_text(username)
    await expect(page.get_by_role("navigation", name="Desk").get_by_role("link", name="Hot leads")).to_have_attribute(
        "aria-current", "page")
    rows = page.locator("tbody tr[data-lead]")
    listed = {int(v) for v in await rows.evaluate_all("rows => rows.map(r => r.dataset.lead)")}
    leads = sales_desk.leads
    assert {leads["evelyn"], leads["pat"], leads["bo"], leads["hostile"]} <= listed, "every hot lead is listed"
    assert leads["mo"] not in listed, "a lead under the hot threshold is not"
    scores = await row_scores(rows)
    assert scores == sorted(scores, reverse=True), "highest score first"
    await assert_inert(page)
    await shot("1-hot-leads")
    await assert_fits_width(page)

    # Filter by topic: only that topic's rows, the journey's lead on top, with its reasons.
    await page.locator("#f-topic").select_option(label=topic_name)
    await press(page.get_by_role("button", name="Apply", exact=True), viewport)
    await page.wait_for_url(re.compile(rf"/desk/hot\?topic={topic}\b"))
    await expect(page.locator("#f-topic")).to_have_value(str(topic))
    assert set(await rows.evaluate_all("rows => rows.map(r => r.dataset.topic)")) == {str(topic)}
    scores = await row_scores(rows)
    assert scores == sorted(scores, reverse=True) and scores[0] >= 30
    first = rows.first
    await expect(first).to_have_attribute("data-lead", str(lead_id))
    await expect(first.locator(".badge.hot")).to_have_text("hot")
    await expect(first.locator("ul.reasons li").first).to_contain_text("Visited pricing")
    await expect(first.locator("time")).to_be_visible()
    hostile_row = page.locator(f'tr[data-lead="{leads["hostile"]}"]')
    await expect(hostile_row.locator("a.lead-name")).to_have_text(XSS_SCRIPT)
    await expect(hostile_row.locator(".sub")).to_contain_text(XSS_IMG)
    await assert_inert(page)
    await shot("2-hot-leads-by-topic")
    await assert_fits_width(page)

    # The lead's page: who, why, how the score moved, everything it did.
    await press(first.locator("a.lead-name"), viewport)
    await page.wait_for_url(f"**/desk/leads/{lead_id}")
    await expect(page.get_by_role("heading", level=1)).to_have_text(name.capitalize())
    await expect(page.locator(".head .badge.hot", has_text=f"hot on {topic_name}")).to_be_visible()
    score_row = page.locator("#scores + .scroll tbody tr", has=page.locator("td", has_text=re.compile(
        rf"^{topic_name}$")))
    await expect(score_row.locator(".badge.hot")).to_be_visible()
    await expect(score_row.locator("ul.reasons")).to_contain_text("Visited pricing")
    await expect(score_row.locator("ul.reasons")).to_contain_text("Downloaded an ebook")
    chart = page.locator("#history + .chart-row svg.chart")
    await expect(chart).to_have_count(1)
    await expect(chart).to_contain_text(topic_name)
    await expect(chart).to_contain_text("hot threshold")
    assert await chart.locator("path, polyline").count() >= 1, "the score is drawn as a line"
    await assert_charts_fit(page, chart, 1)
    timeline = page.locator("ul.timeline")
    labels = await timeline.locator(".what").all_inner_texts()
    for label in ("Filled in a form", "Downloaded an ebook", "Viewed a page", "Turned hot"):
        assert label in labels, (label, labels)
    if name == "evelyn":
        assert "Letter sent" in labels and "Opened a letter" in labels, labels
    await expect(timeline).to_contain_text(f"{SITE}/services/{slug}/pricing")
    moments = await timeline.locator("time").evaluate_all("times => times.map(t => t.dateTime)")
    assert moments == sorted(moments, reverse=True), "newest first"
    await expect(page.locator("#changes ~ p.muted", has_text="No stage or owner change yet")).to_be_visible()
    await shot("3-lead")
    await assert_fits_width(page)

    # Sales called: the stage goes to contacted, kept with who and when.
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    await expect(page.locator("#stage")).to_have_value("new")
    await page.locator("#stage").select_option("contacted")
    await press(page.get_by_role("button", name="Save"), viewport)
    await page.wait_for_url(f"**/desk/leads/{lead_id}?saved=1")
    await expect(page.locator("p.notice.ok[role=status]")).to_have_text("Saved. The change is in the history below.")
    await expect(page.locator(".head .badge").first).to_have_text("contacted")
    await expect(page.locator("#stage")).to_have_value("contacted")
    history = page.locator("#changes + .scroll tbody tr")
    await expect(history).to_have_count(1)
    await expect(history.locator("td")).to_have_text(
        [re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$"), "stage", "new", "contacted", username, "desk"])
    change_line = timeline.locator("li.k-change")
    await expect(change_line).to_contain_text("Stage changed")
    await expect(change_line).to_contain_text("new → contacted")
    await expect(change_line).to_contain_text(f"by {username} (desk)")
    await shot("4-lead-contacted")
    await assert_fits_width(page)

    kept = await LeadChange.select().where(LeadChange.lead == lead_id)
    assert [(c["field"], c["old_value"], c["new_value"], c["changed_by"], c["changed_by_name"], c["via"])
            for c in kept] == [("stage", "new", "contacted", user_id, username, "desk")]
    assert kept[0]["changed_at"] >= before
    assert (await Lead.select(Lead.stage).where(Lead.id == lead_id).first())["stage"] == "contacted"

    # The stage filter now finds the lead under contacted.
    await page.goto(f"/desk/hot?topic={topic}&stage=contacted")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-lead", str(lead_id))

    # The hostile lead's own page: every field shown as the text it is, nothing run.
    await page.goto(f"/desk/leads/{leads['hostile']}")
    await expect(page.get_by_role("heading", level=1)).to_have_text(XSS_SCRIPT)
    profile = page.locator("dl.profile")
    await expect(profile.locator("dt:text-is('Company') + dd")).to_have_text(XSS_IMG)
    await expect(profile.locator("dt:text-is('Role') + dd")).to_have_text(XSS_URL)
    await expect(profile).to_contain_text(XSS_SCRIPT)  # the utm_source of the first touch
    await expect(page.locator("ul.timeline")).to_contain_text(XSS_URL)
    await expect(page.locator("#history + .chart-row svg.chart")).to_have_count(1)
    await assert_inert(page)
    await shot("5-hostile-lead")
    await assert_fits_width(page)
    assert opened == [], f"lead text ran as script: {opened}"


# ----------------------------------------------------------------------------- content


async def test_content_team_reads_a_chains_results_and_the_dashboard(page: Page, viewport: str, shot,
                                                                     content_desk: ContentDesk) -> None:
    username = f"cora-{viewport}"
    await make_staff(username, "content")
    opened = watch_for_script(page)
    results = await chain_results(content_desk.chain_id)

    await log_in(page, username, viewport)
    await page.wait_for_url("**/desk/dashboard")
    nav = page.get_by_role("navigation", name="Desk")
    menu = await nav.get_by_role("link").all_text_contents()
    assert {"Dashboard", "Chains"} <= set(menu) and not {"Hot leads", "Weekly report"} & set(menu), menu

    # Every chain at a glance.
    await press(nav.get_by_role("link", name="Chains"), viewport)
    await page.wait_for_url("**/desk/chains")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Chains")
    chain_row = page.locator("tbody tr", has=page.locator(f'td.name a[href="/desk/chains/{content_desk.chain_id}"]'))
    enrolled = results.enrolled["treatment"] + results.enrolled["control"]
    await expect(chain_row.locator("td").nth(3)).to_contain_text(
        f"{results.enrolled['treatment']} treatment · {results.enrolled['control']} control")
    await expect(chain_row.locator("td").nth(3)).to_contain_text(str(enrolled))
    await expect(chain_row.locator(".badge.state")).to_have_text("active")
    paused_row = page.locator("tbody tr", has=page.locator(f'td.name a[href="/desk/chains/{content_desk.paused_chain_id}"]'))
    await expect(paused_row.locator(".badge.state")).to_have_text("paused")
    await shot("1-chains")
    await assert_fits_width(page)

    # One chain's results.
    await press(chain_row.get_by_role("link", name="Results of Analytics nurture"), viewport)
    await page.wait_for_url(f"**/desk/chains/{content_desk.chain_id}")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Analytics nurture")
    await expect(page.locator(".cards .card").first).to_contain_text(str(enrolled))
    sent_total = sum(s.sent for s in results.steps)
    assert sent_total >= 40
    await expect(page.locator(".cards .card").nth(1)).to_contain_text(str(sent_total))
    # The step table: one row per step version, its numbers as the results have them.
    steps = page.locator("table.steps tbody tr")
    await expect(steps).to_have_count(len(results.steps))
    for step in results.steps:
        cells = page.locator(f'table.steps tr[data-step="step:{step.position}:{step.version}"] td.num')
        numbers = [int(text.split()[0]) for text in await cells.all_inner_texts()]
        assert numbers == [step.sent, step.delivered, step.bounced, step.opened, step.clicked, step.unsubscribed,
                           step.converted], (step, numbers)
    by_key = {(s.position, s.version): s for s in results.steps}
    assert by_key[(1, "")].bounced == 4
    assert sum(s.unsubscribed for s in results.steps) == 2
    assert by_key[(5, "hot")].sent == 2 and by_key[(5, "cold")].sent >= 1
    # Charts: a funnel per step version, treatment vs control, B vs A, offers, letters per step.
    await assert_charts_fit(page, page.locator(".funnels svg.chart"), len(results.steps))
    lift = page.locator("section[aria-labelledby=lift]")
    assert results.experiment is not None
    await expect(lift.locator("p.verdict")).not_to_be_empty()
    await expect(lift.locator("dd.pvalue")).to_contain_text("z =")
    await expect(lift.locator("tbody tr").first).to_contain_text(str(results.enrolled["treatment"]))
    await assert_charts_fit(page, lift.locator("svg.chart"), 1)
    ab = page.locator("section[aria-labelledby=ab]")
    await expect(ab.locator('.card.ab[data-position="2"] tbody tr')).to_have_count(2)
    assert 2 in results.variant_clicks
    await expect(ab.locator('.card.ab[data-position="2"] p.verdict')).not_to_be_empty()
    await assert_charts_fit(page, ab.locator("svg.chart"), 2)
    offers = page.locator("section[aria-labelledby=offers]")
    await expect(offers.locator("tbody tr")).to_have_count(2)
    await assert_charts_fit(page, offers.locator("svg.chart"), 1)
    await assert_charts_fit(page, page.locator("section[aria-labelledby=volume] svg.chart"), 1)
    await shot("2-chain-results")
    await assert_fits_width(page)

    # The dashboard: warnings, the funnel, cohorts by source, mail health.
    await press(nav.get_by_role("link", name="Dashboard"), viewport)
    await page.wait_for_url("**/desk/dashboard")
    now = datetime.now(timezone.utc)
    warnings = await content_warnings(now)
    kinds = sorted(w.kind for w in warnings.items)
    assert "complaint_rate" in kinds, kinds
    shown = page.locator("ul.warnings > li")
    assert sorted(await shown.evaluate_all("items => items.map(i => i.dataset.kind)")) == kinds
    await expect(page.locator("#warnings-h .badge")).to_have_text(str(len(kinds)))
    await expect(shown.filter(has_text="Stop wasting your ad budget")).to_contain_text("/l/paid-ads")
    funnel = await lead_funnel(parse_period("30"), now)
    await expect(page.locator('tr[data-stage="leads"] td.num').first).to_have_text(str(funnel.counts.leads))
    await expect(page.locator('tr[data-stage="visitors"] td.num').first).to_have_text(str(funnel.visitors))
    assert funnel.counts.leads >= 10
    await assert_charts_fit(page, page.locator("section[aria-labelledby=funnel-h] svg.chart"), 1)
    cohorts = page.locator("table.cohorts tbody tr.cohort")
    assert await cohorts.count() >= 8
    cohort_sources = set(await cohorts.locator("td:nth-of-type(1)").all_inner_texts())
    assert {"landing", "google", "newsletter", "linkedin"} <= cohort_sources, cohort_sources
    assert await page.locator("table.source-totals tbody tr").count() >= 4
    await assert_charts_fit(page, page.locator("section[aria-labelledby=sources-h] svg.chart"), 3)
    await expect(page.locator("table.mail-health tbody tr").first).to_contain_text("All chains")
    await shot("3-dashboard")
    await assert_fits_width(page)

    # Sales pages are not theirs.
    response = await page.goto("/desk/hot")
    assert response is not None and response.status == 403
    await expect(page.get_by_role("heading", level=1)).to_have_text("Not for your role")
    await expect(page.locator("p.notice.err")).to_contain_text("content role cannot open this page")
    await expect(page.locator("tr[data-lead]")).to_have_count(0)
    await shot("4-refused-hot-leads")
    await assert_fits_width(page)
    assert opened == [], opened
