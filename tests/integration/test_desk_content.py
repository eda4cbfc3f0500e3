"""The content desk: the chains list, a chain's results, the dashboard's funnel, cohorts and warnings,
on histories known by construction; roles, bad input and hostile text."""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone

import pytest

from content.dashboard import PERIODS, content_warnings, format_p, lead_cohorts, lead_funnel, parse_period
from content.delivery import suppress
from content.ebooks import new_download_link
from content.experiments import compare
from content.lifecycle import ChainNotReady, activate_chain, pause_chain
from content.tables import (
    Chain,
    ChainStatus,
    Delivery,
    DeliveryStatus,
    Ebook,
    Enrollment,
    LandingPage,
    Step,
    SuppressionReason,
)
from landing.tables import Conversion, Event, Lead, LeadStage, Topic, Visitor
from scoring.tables import Score
from tests.integration.conftest import landing_form
from tests.staff import desk_login, make_staff

HTML = {"accept": "text/html"}
PAYLOADS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')
RAW = ("<script>alert(1)</script>", "<img src=x", "onerror=alert(1)>")


@pytest.fixture
async def content_client(client):
    """The test client, logged in as a content user."""
    await make_staff("carla", "content")
    await desk_login(client, "carla")
    return client


async def _page(client, path: str, status: int = 200) -> str:
    response = await client.get(path, headers=HTML)
    assert response.status_code == status, (path, response.status_code, response.text[:500])
    return response.text


def _cell(page: str, stage: str) -> int:
    match = re.search(rf'data-stage="{stage}"><th scope="row">\w+</th><td class="num">(\d+)</td>', page)
    assert match, f"no {stage} row"
    return int(match.group(1))


async def _lead(email: str | None, created_at: datetime, source: str = "landing", **fields) -> int:
    lead = Lead(email=email, created_at=created_at, source=source, **fields)
    await lead.save()
    return lead.id


async def _topic_chain(slug: str = "seo") -> tuple[Topic, Chain, dict[int, int]]:
    topic = await Topic.objects().get(Topic.slug == slug)
    chain = await Chain.objects().get(Chain.topic == topic.id)
    steps = {s.position: s.id for s in await Step.objects().where(Step.chain == chain.id)}
    return topic, chain, steps


async def _enrolled(lead_id: int, chain_id: int, group: str = "treatment", variant: str = "A",
                    at: datetime | None = None, exit_reason: str = "") -> int:
    enrollment = Enrollment(lead=lead_id, chain=chain_id, group=group, variant=variant, exit_reason=exit_reason,
                            enrolled_at=at or datetime.now(timezone.utc))
    await enrollment.save()
    return enrollment.id


async def _letter(enrollment: int, lead: int, step: int, sent_at: datetime, variant: str = "",
                  status: str = DeliveryStatus.sent, opened: bool = False, clicked: bool = False,
                  offer_kind: str = "") -> None:
    await Delivery(enrollment=enrollment, lead=lead, step=step, status=status, variant=variant, offer_kind=offer_kind,
                   reserved_at=sent_at, sent_at=sent_at if status == DeliveryStatus.sent else None,
                   opened_at=sent_at + timedelta(minutes=30) if opened or clicked else None,
                   clicked_at=sent_at + timedelta(minutes=31) if clicked else None).save()


# --- the funnel -------------------------------------------------------------------------------


async def _known_history(now: datetime) -> dict[str, int]:
    """Five leads and three visitors whose stages are known; one historical lead that never counts."""
    seo, chain, steps = await _topic_chain()
    ebook = await Ebook.objects().get(Ebook.topic == seo.id)
    day = timedelta(days=1)
    # 2 days old: got the ebook (opted in on a page without double opt-in), came back, hot, won.
    one = await _lead("one@example.com", now - 2 * day, "ebook-ads", stage=LeadStage.won)
    await new_download_link(one, ebook.id, now - 2 * day)
    await Event(type="page_view", lead=one, occurred_at=now - day).save()
    await Score(lead=one, topic=seo.id, combined=80, hot=True).save()
    # 3 days old: confirmed by double opt-in, opened a letter (the ledger), not hot.
    two = await _lead("two@example.com", now - 3 * day, confirmed=True)
    await Score(lead=two, topic=seo.id, combined=10, hot=False).save()
    await _letter(await _enrolled(two, chain.id, at=now - 3 * day), two, steps[1], now - 3 * day + timedelta(hours=1),
                  opened=True)
    # 5 days old: never confirmed; its page view came before the capture, its download is no engagement.
    three = await _lead("three@example.com", now - 5 * day)
    await Event(type="page_view", lead=three, occurred_at=now - 6 * day).save()
    await Event(type="download", lead=three, occurred_at=now - 4 * day).save()
    # 20 days old: got the ebook, clicked a letter (an event), lost.
    four = await _lead("four@example.com", now - 20 * day, "google", stage=LeadStage.lost)
    await new_download_link(four, ebook.id, now - 20 * day)
    await Event(type="email_click", lead=four, occurred_at=now - 19 * day).save()
    # 60 days old: hot, nothing else.
    five = await _lead("five@example.com", now - 60 * day, "google")
    await Score(lead=five, topic=seo.id, combined=90, hot=True).save()
    # Imported for training only: never in the funnel.
    await _lead(None, now - day, "import", historical=True, stage=LeadStage.won, confirmed=True)
    for n, age in enumerate((1, 10, 100)):
        await Visitor(cookie_id=f"cookie-{n}", first_seen_at=now - age * day, last_seen_at=now).save()
    return {"one": one, "two": two, "three": three, "four": four, "five": five}


EXPECTED = {
    # period: visitors, leads, confirmed, engaged, hot, won
    "7": (1, 3, 2, 2, 1, 1),
    "30": (2, 4, 3, 3, 1, 1),
    "90": (2, 5, 3, 3, 2, 1),
    "all": (3, 5, 3, 3, 2, 1),
}


async def test_the_funnel_counts_each_stage_by_its_definition_for_each_period(catalog) -> None:
    now = datetime.now(timezone.utc)
    await _known_history(now)
    for key, expected in EXPECTED.items():
        funnel = await lead_funnel(parse_period(key), now)
        counts = funnel.counts
        assert (funnel.visitors, counts.leads, counts.confirmed, counts.engaged, counts.hot, counts.won) == expected, key


async def test_the_dashboard_shows_the_funnel_of_the_chosen_period(content_client, catalog) -> None:
    await _known_history(datetime.now(timezone.utc))
    for key, expected in EXPECTED.items():
        page = await _page(content_client, f"/desk/dashboard?period={key}")
        shown = tuple(_cell(page, stage) for stage in ("visitors", "leads", "confirmed", "engaged", "hot", "won"))
        assert shown == expected, key
        assert f'<option value="{key}" selected>' in page
        assert "<svg" in page and "Funnel, " in page
    default = await _page(content_client, "/desk/dashboard")
    assert '<option value="30" selected>' in default, "no period is the last 30 days"
    assert _cell(default, "leads") == EXPECTED["30"][1]
    assert "came back to the site" in default, "each stage's definition is on the page"


async def test_a_period_the_dashboard_does_not_offer_is_refused_with_what_it_offers(content_client, catalog) -> None:
    for bad in ("14", "yesterday", "-1", "<script>alert(1)</script>"):
        response = await content_client.get("/desk/dashboard", params={"period": bad}, headers=HTML)
        assert response.status_code == 400
        assert "is not a period the dashboard offers: choose 7, 30 or 90 (days) or all." in html.unescape(response.text)
        assert all(f"/desk/dashboard?period={p.key}" in response.text for p in PERIODS)
        assert "<script>alert(1)</script>" not in response.text


# --- cohorts ------------------------------------------------------------------------------------


async def test_cohorts_split_new_leads_by_week_of_capture_and_source(catalog) -> None:
    seo, *_ = await _topic_chain()
    ebook = await Ebook.objects().get(Ebook.topic == seo.id)
    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)  # a Wednesday; its week starts Monday 23 November
    monday = datetime(2026, 11, 23, 0, 30, tzinfo=timezone.utc)
    sunday = datetime(2026, 11, 22, 23, 30, tzinfo=timezone.utc)
    first = await _lead("a@example.com", monday, "ebook")
    await new_download_link(first, ebook.id, monday)
    await Event(type="email_open", lead=first, occurred_at=monday + timedelta(hours=2)).save()
    await _lead("b@example.com", monday + timedelta(days=1), "ebook")
    await _lead("c@example.com", monday + timedelta(days=1), "")
    won = await _lead("d@example.com", sunday, "google", stage=LeadStage.won)
    await Score(lead=won, topic=seo.id, combined=70, hot=True).save()
    await _lead("old@example.com", now - timedelta(weeks=13), "google")

    weeks = await lead_cohorts(now)
    assert len(weeks) == 12 and weeks[0].week.isoformat() == "2026-11-23" and weeks[-1].week.isoformat() == "2026-09-07"
    this_week, last_week = weeks[0], weeks[1]
    assert [(r.source, r.counts.leads, r.counts.confirmed, r.counts.engaged) for r in this_week.rows] == [
        ("ebook", 2, 1, 1), ("(none)", 1, 0, 0)]
    assert this_week.total.leads == 3
    ebook_row = this_week.rows[0]
    assert (ebook_row.counts.share("confirmed"), ebook_row.counts.share("engaged"), ebook_row.counts.share("won")) == (0.5, 0.5, 0.0)
    assert [(r.source, r.counts.leads, r.counts.hot, r.counts.won) for r in last_week.rows] == [("google", 1, 1, 1)]
    assert all(not w.rows for w in weeks[2:]), "the 13-week-old lead is outside the table; empty weeks stay"


async def test_the_dashboard_cohort_table_shows_each_sources_shares(content_client, catalog) -> None:
    seo, *_ = await _topic_chain()
    ebook = await Ebook.objects().get(Ebook.topic == seo.id)
    now = datetime.now(timezone.utc)
    for n in range(4):
        lead = await _lead(f"e{n}@example.com", now - timedelta(hours=n + 1), "ebook-pages")
        if n < 3:
            await new_download_link(lead, ebook.id, now)
        if n == 0:
            await Lead.update({Lead.stage: LeadStage.won}).where(Lead.id == lead)
    await _lead("n@example.com", now - timedelta(hours=2), "newsletter")
    page = await _page(content_client, "/desk/dashboard")
    totals = page[page.index('class="source-totals"'):page.index("</table>", page.index('class="source-totals"'))]
    row = re.search(r'<th scope="row">ebook-pages</th><td class="num">4</td>\s*<td class="num">([^<]+)</td>'
                    r'<td class="num">([^<]+)</td>\s*<td class="num">([^<]+)</td><td class="num">([^<]+)</td>', totals)
    assert row and row.groups() == ("75%", "0%", "0%", "25%"), totals
    assert '<th scope="row">newsletter</th><td class="num">1</td>' in totals
    assert page.count('class="cohort') >= 2


# --- warnings -----------------------------------------------------------------------------------


def _kinds(warnings) -> list[tuple[str, str]]:
    return [(w.kind, w.subject) for w in warnings.items]


async def _submit(client, email: str, slug: str = "seo") -> int:
    token = await landing_form(client, slug)
    response = await client.post(f"/l/{slug}", data={"_csrf_token": token, "email": email, "consent": "on"})
    assert response.status_code == 303, response.text
    return (await Lead.objects().get(Lead.email == email)).id


async def test_an_ebook_without_a_live_chain_warns_until_a_chain_takes_its_topic(content_client, catalog) -> None:
    seo, chain, _ = await _topic_chain()
    ebook = await Ebook.objects().get(Ebook.topic == seo.id)
    assert (await content_warnings()).items == [], "the demo catalogue has a live chain for every ebook"

    await pause_chain(chain.id)
    await _submit(content_client, "waits@example.com")
    warnings = await content_warnings()
    assert _kinds(warnings) == [("no_chain", ebook.title)]
    item = warnings.items[0]
    assert "1 lead is waiting" in item.text and "/l/seo" in item.text
    assert ("Open the ebook", f"/admin/#/ebook/{ebook.id}/") in item.links
    assert any(href == f"/admin/#/chain/{chain.id}/" for _, href in item.links)
    page = await _page(content_client, "/desk/dashboard")
    assert 'data-kind="no_chain"' in page and f'href="/admin/#/ebook/{ebook.id}/"' in page

    # Scheduled: still no letters until it starts, a milder warning.
    await activate_chain(chain.id, starts_at=datetime.now(timezone.utc) + timedelta(days=2))
    assert [w.kind for w in (await content_warnings()).items] == ["chain_scheduled"]

    await activate_chain(chain.id)
    assert (await content_warnings()).items == []
    assert 'data-kind="no_chain"' not in await _page(content_client, "/desk/dashboard")


async def test_an_active_fallback_chain_covers_every_topic(catalog) -> None:
    _, seo_chain, _ = await _topic_chain("seo")
    _, ads_chain, _ = await _topic_chain("paid-ads")
    await pause_chain(seo_chain.id)
    assert [w.kind for w in (await content_warnings()).items] == ["no_chain"]
    await Chain.update({Chain.is_fallback: True}).where(Chain.id == ads_chain.id)
    assert (await content_warnings()).items == []


async def test_an_unpublished_ebook_with_nobody_waiting_collects_nothing(catalog) -> None:
    seo, chain, _ = await _topic_chain()
    await pause_chain(chain.id)
    await LandingPage.update({LandingPage.published: False}).where(LandingPage.slug == "seo")
    assert (await content_warnings()).items == []


async def test_a_chain_with_a_template_error_warns_until_it_is_fixed(content_client, catalog) -> None:
    _, chain, steps = await _topic_chain()
    await Step.update({Step.body_markdown: "Hi {{ lead.shoe_size }"}).where(Step.id == steps[2])
    with pytest.raises(ChainNotReady):
        await activate_chain(chain.id)
    warnings = await content_warnings()
    assert _kinds(warnings) == [("template_error", chain.name)]
    assert "step 2" in warnings.items[0].text and warnings.items[0].links[0] == ("Fix the chain", f"/admin/#/chain/{chain.id}/")
    chains_page = await _page(content_client, "/desk/chains")
    assert "template error" in chains_page
    await Step.update({Step.body_markdown: "Hi {{ lead.first_name }}"}).where(Step.id == steps[2])
    await activate_chain(chain.id)
    assert (await content_warnings()).items == []
    assert "template error" not in await _page(content_client, "/desk/chains")


async def _mail_history(chain: Chain, steps: dict[int, int], letters: int, bounced: int, now: datetime) -> list[str]:
    """`letters` leads each sent step 1 yesterday, `bounced` of them bounced; returns the delivered addresses."""
    delivered = []
    for n in range(letters):
        email = f"mail{chain.id}-{n}@example.com"
        lead = await _lead(email, now - timedelta(days=2))
        enrollment = await _enrolled(lead, chain.id, at=now - timedelta(days=2))
        status = DeliveryStatus.bounced if n < bounced else DeliveryStatus.sent
        await _letter(enrollment, lead, steps[1], now - timedelta(days=1), status=status)
        if status == DeliveryStatus.sent:
            delivered.append(email)
    # An old letter, outside the 30 days, bounced: not counted.
    lead = await _lead(f"old{chain.id}@example.com", now - timedelta(days=60))
    await _letter(await _enrolled(lead, chain.id, at=now - timedelta(days=60)), lead, steps[2], now - timedelta(days=45),
                  status=DeliveryStatus.bounced)
    return delivered


async def test_bounce_and_complaint_rates_over_their_lines_warn_per_chain_and_overall(
        content_client, catalog, monkeypatch) -> None:
    from server.settings import get_settings

    now = datetime.now(timezone.utc)
    _, chain, steps = await _topic_chain()
    _, quiet, quiet_steps = await _topic_chain("analytics")
    delivered = await _mail_history(chain, steps, letters=10, bounced=1, now=now)
    await _mail_history(quiet, quiet_steps, letters=30, bounced=0, now=now)

    warnings = await content_warnings(now)
    assert warnings.bounce_warn == 0.05 and warnings.complaint_warn == 0.003, "the defaults"
    health = {h.chain_id: h for h in warnings.per_chain}
    assert (health[chain.id].attempted, health[chain.id].bounced) == (10, 1)
    assert (warnings.overall.attempted, warnings.overall.bounced) == (40, 1)
    # 1 in 10 is over 5% for the chain; 1 in 40 is 2.5%, under it overall.
    assert _kinds(warnings) == [("bounce_rate", chain.name)]
    assert "10%" in warnings.items[0].text and "(1 of 10 letters)" in warnings.items[0].text

    # A complaint counts against the chain of the lead's last letter.
    await suppress(delivered[0], SuppressionReason.complaint, "feedback loop")
    warnings = await content_warnings(now + timedelta(seconds=1))
    assert health[chain.id].complaints == 0 and {h.chain_id: h for h in warnings.per_chain}[chain.id].complaints == 1
    assert warnings.overall.complaints == 1
    # The chain has the only complaint: one warning, the chain's, not a second about all chains.
    assert _kinds(warnings) == [("bounce_rate", chain.name), ("complaint_rate", chain.name)]
    assert "This chain has every complaint over all chains" in warnings.items[1].text
    assert "every bounce" not in warnings.items[0].text, "the overall bounce rate is under its line"
    page = await _page(content_client, "/desk/dashboard")
    assert page.count('data-kind="complaint_rate"') == 1 and page.count('data-kind="bounce_rate"') == 1
    assert f'href="/desk/chains/{chain.id}"' in page

    # The lines come from the settings.
    monkeypatch.setenv("BOUNCE_RATE_WARN", "20%")
    monkeypatch.setenv("COMPLAINT_RATE_WARN", "0.5")
    get_settings.cache_clear()
    try:
        warnings = await content_warnings(now + timedelta(seconds=1))
        assert (warnings.bounce_warn, warnings.complaint_warn) == (0.2, 0.5)
        assert warnings.items == []
        page = await _page(content_client, "/desk/dashboard")
        assert 'data-kind="bounce_rate"' not in page and "20%" in page
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


# --- chains and a chain's results ---------------------------------------------------------------


async def _experiment(chain: Chain, steps: dict[int, int]) -> None:
    """The history of test_chain_results: an A/B first step, a control group, known conversions."""
    t0 = datetime.now(timezone.utc) - timedelta(days=5)

    def at(hours: float) -> datetime:
        return t0 + timedelta(hours=hours)

    await Step.update({Step.subject_b: "Another subject"}).where((Step.chain == chain.id) & (Step.position == 1))
    for n in range(4):
        lead = await _lead(f"control{n}@example.com", at(0))
        await _enrolled(lead, chain.id, "control", at=at(0))
        if n == 0:
            await Conversion(lead=lead, occurred_at=at(30)).save()
    ids = {}
    for name, variant, exit_reason in (("a1", "A", ""), ("a2", "A", "unsubscribe"), ("a3", "A", ""),
                                       ("b1", "B", ""), ("b2", "B", ""), ("b3", "B", "")):
        lead = await _lead(f"{name}@example.com", at(0))
        ids[name] = (lead, await _enrolled(lead, chain.id, "treatment", variant, at(0), exit_reason))
    for name, opened, clicked in (("a1", True, False), ("a2", False, False), ("a3", False, False),
                                  ("b1", True, True), ("b2", True, True), ("b3", False, False)):
        lead, enrollment = ids[name]
        await _letter(enrollment, lead, steps[1], at(1), name[0].upper(), opened=opened, clicked=clicked)
    for name in ("a1", "a2", "b1", "b2"):
        lead, enrollment = ids[name]
        await _letter(enrollment, lead, steps[2], at(25))
    await _letter(ids["a3"][1], ids["a3"][0], steps[2], at(25), status=DeliveryStatus.bounced)
    await Conversion(lead=ids["a1"][0], occurred_at=at(10)).save()
    await Conversion(lead=ids["b1"][0], occurred_at=at(40)).save()
    await Conversion(lead=ids["b3"][0], occurred_at=at(-5)).save()


async def test_the_chains_list_shows_each_chain_with_its_numbers(content_client, catalog) -> None:
    _, chain, steps = await _topic_chain()
    await _experiment(chain, steps)
    _, draft, _ = await _topic_chain("paid-ads")
    await Chain.update({Chain.status: ChainStatus.draft}).where(Chain.id == draft.id)
    _, later, _ = await _topic_chain("analytics")
    await activate_chain(later.id, starts_at=datetime(2031, 1, 6, 9, tzinfo=timezone.utc))
    page = await _page(content_client, "/desk/chains")
    row = page[page.index(f'<a href="/desk/chains/{chain.id}">'):]
    row = row[:row.index("</tr>")]
    lift = compare(2, 6, 1, 4)
    for text in ("SEO", ">active<", "10", "6 treatment · 4 control", '<td class="num letters">10<span class="sub">1 bounced</span>', "33%", "2 of 6", "25%", "1 of 4",
                 "+8.3 pp", format_p(lift.p_value), "badge ok"):
        assert text in row, (text, row)
    assert re.search(r">draft</span>", page) and "starts 2031-01-06 09:00 UTC" in page and ">scheduled</span>" in page
    assert page.count("/desk/chains/") >= 6, "each chain links to its results"


async def test_a_chains_results_page_shows_steps_tests_and_lift(content_client, catalog) -> None:
    _, chain, steps = await _topic_chain()
    await _experiment(chain, steps)
    await Chain.update({Chain.holdout_percent: 40}).where(Chain.id == chain.id)
    b2 = await Lead.objects().get(Lead.email == "b2@example.com")
    b2_enrollment = await Enrollment.objects().get(Enrollment.lead == b2.id)
    await _letter(b2_enrollment.id, b2.id, steps[5], datetime.now(timezone.utc) - timedelta(days=1), offer_kind="hot",
                  clicked=True)
    page = await _page(content_client, f"/desk/chains/{chain.id}")

    def step_row(key: str) -> list[str]:
        row = page[page.index(f'data-step="{key}"'):]
        return re.findall(r'<td class="num">(\d+)', row[:row.index("</tr>")])

    # sent, delivered, bounced, opened, clicked, unsubscribed, converted
    assert step_row("step:1:A") == ["3", "3", "0", "1", "0", "0", "1"]
    assert step_row("step:1:B") == ["3", "3", "0", "2", "2", "0", "0"]
    assert step_row("step:2:") == ["4", "4", "1", "0", "0", "1", "1"]
    assert step_row("step:5:hot") == ["1", "1", "0", "1", "1", "0", "0"]
    assert step_row("step:5:cold") == ["0", "0", "0", "0", "0", "0", "0"]
    assert "Let us look at your SEO" in page, "the offer step shows the hot offer's own subject"
    assert "<h3>Conversion per delivered letter</h3>" in page, "the hot vs cold chart, with what its % is"
    assert "Another subject" in page, "variant B shows its own subject"

    experiment = compare(2, 6, 1, 4)
    assert "+8.3 pp" in page and "relative +33%" in page
    assert format_p(experiment.p_value) in page and format_p(experiment.p_value) == "p = 0.78"
    assert "Not significant yet" in html.unescape(page)
    clicks = compare(2, 3, 0, 3)
    assert format_p(clicks.p_value) in page
    text = html.unescape(page)
    assert "only 2 successes in 6 letters, far too few to judge" in text, "B's two clicks against A's none: no claim"
    assert "only 2 successes in 6 leads, far too few to judge" in text, "B vs A conversion among the 3 + 3 treated"
    assert "only 3 successes in 10 leads" in text, "treatment vs control"
    assert "not an A/B test" in page, "hot and cold offers are not compared as a test"
    assert page.count("<svg") >= 1 + 8 + 2 + 1, "funnels per step version, lift charts, letters per step"
    assert 'class="difference"' in page, "the lift chart draws the difference with its interval"


async def test_the_chart_and_verdict_steps_serve_any_template_such_as_the_pdf_report(catalog) -> None:
    from admin.desk.content import chain_charts, chain_verdicts, dashboard_charts
    from content.dashboard import source_totals
    from content.results import chain_results

    _, chain, steps = await _topic_chain()
    await _experiment(chain, steps)
    results = await chain_results(chain.id)
    charts = chain_charts(results)
    assert set(charts) == {f"step:{s.position}:{s.version}" for s in results.steps} | {
        "experiment", "variants", "clicks:1", "sent"}, "no offer letter was sent: no offer chart"
    assert all(str(chart).startswith("<svg") for chart in charts.values())
    assert set(chain_verdicts(results)) == {"experiment", "variants", "clicks:1"}
    now = datetime.now(timezone.utc)
    weeks = await lead_cohorts(now)
    drawn = dashboard_charts(await lead_funnel(parse_period("all"), now), weeks, source_totals(weeks))
    assert set(drawn) == {"funnel", "weekly", "sources", "source_engaged", "source_won"}
    assert "Leads 10" in str(drawn["funnel"]), "the funnel's summary names its counts"


async def test_subjects_show_rendered_for_the_chains_topic_and_a_broken_one_as_written(content_client, catalog) -> None:
    seo, chain, steps = await _topic_chain()
    await Step.update({Step.subject: "Your ebook: {{ topic.name }} starts here"}).where(Step.id == steps[1])
    await Step.update({Step.subject: "Hi {{ lead.nickname }}"}).where(Step.id == steps[3])
    page = html.unescape(await _page(content_client, f"/desk/chains/{chain.id}"))
    assert f"Your ebook: {seo.name} starts here" in page and "{{ topic.name }}" not in page
    row = page[page.index('data-step="step:3:"'):]
    row = row[:row.index("</tr>")]
    assert "Hi {{ lead.nickname }}" in row and "does not render: shown as written" in row, row


async def test_the_dashboard_funnel_gives_shares_of_leads_never_over_100_percent(content_client, catalog) -> None:
    now = datetime.now(timezone.utc)
    for n in range(3):
        await _lead(f"imported{n}@example.com", now - timedelta(hours=n + 1), "import")
    await Visitor(first_seen_at=now - timedelta(hours=1)).save()
    funnel = await lead_funnel(parse_period("30"), now)
    assert funnel.counts.leads > funnel.visitors
    page = html.unescape(await _page(content_client, "/desk/dashboard"))
    chart = page[page.index("<svg"):page.index("</svg>")]
    assert "of leads" in chart and "of visitors" not in chart and "of first" not in chart
    assert not re.search(r"\b(\d{4,}|[2-9]\d\d|1\d[1-9]|10[1-9])%", chart), "no share over 100%"
    assert "counted apart: leads need no tracked visit" in chart
    assert "No lead won yet" in page, "the won share chart says why it is empty"


async def test_the_cohort_table_uses_short_dates_and_one_line_per_run_of_quiet_weeks(content_client, catalog) -> None:
    now = datetime.now(timezone.utc)
    await _lead("recent@example.com", now - timedelta(hours=1), "google")
    await _lead("older@example.com", now - timedelta(weeks=5), "landing")
    page = await _page(content_client, "/desk/dashboard")
    table = page[page.index('class="cohorts"'):page.index("</table>", page.index('class="cohorts"'))]
    assert table.count('class="week-start quiet"') == 2, "quiet weeks between and after, each run one line"
    words = re.sub(r"<[^>]+>", "", table)
    assert re.search(r"back to \d{1,2} [A-Z][a-z]{2}: no new leads in 4 weeks", words)
    assert not re.search(r"\d{2} [A-Z][a-z]{2} \d{4}", table), "no long dates: 9 Nov, not 09 Nov 2026"
    assert len(re.findall(r"<tr class=\"cohort", table)) == 2


async def test_the_weekly_chart_stacks_sources_with_whole_number_ticks(content_client, catalog) -> None:
    now = datetime.now(timezone.utc)
    for n, source in enumerate(("google", "google", "landing")):
        await _lead(f"w{n}@example.com", now - timedelta(hours=n + 1), source)
    page = await _page(content_client, "/desk/dashboard")
    section = page[page.index('id="sources-h"'):page.index('id="mail-h"')]
    weekly = section[section.index("New leads per week</h3>"):]
    weekly = weekly[:weekly.index("</svg>")]
    assert weekly.count('class="segment"') == 2
    assert not re.search(r">\d+\.5<", weekly), "no half a lead on the axis"


async def test_a_chain_without_a_control_group_says_how_to_get_one(content_client, catalog) -> None:
    _, chain, _ = await _topic_chain()
    page = await _page(content_client, f"/desk/chains/{chain.id}")
    assert "no control group" in page and "holdout" in page


async def test_a_chain_that_does_not_exist_is_a_404_page(content_client, catalog) -> None:
    for chain_id in ("987654", "99999999999999999999", "0"):
        page = await _page(content_client, f"/desk/chains/{chain_id}", status=404)
        assert "No such chain" in page and 'href="/desk/chains"' in page


# --- who may look -------------------------------------------------------------------------------

PAGES = ["/desk/chains", "/desk/chains/1", "/desk/dashboard", "/desk/dashboard?period=7"]


async def test_sales_users_are_refused_every_content_page(client, catalog) -> None:
    await make_staff("sam", "sales")
    await desk_login(client, "sam")
    for path in PAGES:
        response = await client.get(path, headers=HTML)
        assert response.status_code == 403, path
        assert "sales role cannot open this page" in response.text
        assert (await client.get(path)).status_code == 403


async def test_admins_may_open_every_content_page(client, catalog) -> None:
    await make_staff("ada", "admin")
    await desk_login(client, "ada")
    chain = await Chain.objects().first()
    for path in ["/desk/chains", f"/desk/chains/{chain.id}", "/desk/dashboard"]:
        assert (await client.get(path, headers=HTML)).status_code == 200, path


async def test_anonymous_people_are_sent_to_the_login_and_other_clients_get_401(client, catalog) -> None:
    for path in PAGES:
        response = await client.get(path, headers=HTML)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/desk/login?next=/desk/"), response.headers["location"]
        if "?" in path:
            assert "period%3D7" in response.headers["location"] or "period=7" in response.headers["location"]
        assert (await client.get(path, headers={"accept": "application/json"})).status_code == 401


# --- hostile text -------------------------------------------------------------------------------


async def test_text_staff_and_leads_typed_renders_inert_on_every_page(content_client, catalog) -> None:
    seo, chain, steps = await _topic_chain()
    ads, ads_chain, ads_steps = await _topic_chain("paid-ads")
    script, image = PAYLOADS
    await Chain.update({Chain.name: f"Nurture {script}"}).where(Chain.id == chain.id)
    await Chain.update({Chain.name: f"Ads {image}"}).where(Chain.id == ads_chain.id)
    await Step.update({Step.subject: f"Hello {script}", Step.subject_b: f"Hi {image}"}).where(Step.id == steps[1])
    await Topic.update({Topic.name: f"Ads {script}"}).where(Topic.id == ads.id)
    # The ads ebook collects leads with no chain: its title shows in a warning.
    await Ebook.update({Ebook.title: f"Guide {image}"}).where(Ebook.topic == ads.id)
    await pause_chain(ads_chain.id)
    await Chain.update({Chain.check_error: f"step 1 subject: {script}"}).where(Chain.id == ads_chain.id)
    # A lead whose first touch names a hostile source, captured through the landing page.
    token = await landing_form(content_client, "seo")
    response = await content_client.post("/l/seo", params={"utm_source": script},
                                         data={"_csrf_token": token, "email": "xss@example.com", "consent": "on"})
    assert response.status_code == 303
    assert (await Lead.objects().get(Lead.email == "xss@example.com")).source == script
    lead = await _lead("img@example.com", datetime.now(timezone.utc), image)
    enrollment = await _enrolled(lead, chain.id, variant="B")
    await _letter(enrollment, lead, steps[1], datetime.now(timezone.utc), "B", status=DeliveryStatus.bounced)

    pages = {path: await _page(content_client, path) for path in
             ["/desk/chains", f"/desk/chains/{chain.id}", f"/desk/chains/{ads_chain.id}", "/desk/dashboard"]}
    for path, page in pages.items():
        for raw in RAW:
            assert raw not in page, (path, raw)
    assert "Nurture &lt;script&gt;" in pages["/desk/chains"] and "Ads &#34;&gt;&lt;img" in pages["/desk/chains"]
    assert "Hello &lt;script&gt;" in pages[f"/desk/chains/{chain.id}"] and "Hi &#34;&gt;&lt;img" in pages[f"/desk/chains/{chain.id}"]
    dashboard = pages["/desk/dashboard"]
    assert "Guide &#34;&gt;&lt;img" in dashboard, "the ebook's title, in its warning"
    assert "step 1 subject: &lt;script&gt;" in dashboard, "the chain's check error, in its warning"
    assert '<th scope="row">&lt;script&gt;alert(1)&lt;/script&gt;</th>' in dashboard, "the source, in the cohorts"
