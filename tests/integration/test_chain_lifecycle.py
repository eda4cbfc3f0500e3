"""A chain's life and its rules: activation checks, waiting leads, fallback, scheduling, pause,
send windows, the frequency cap, exit rules, hot leads from other topics, A/B versions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from content.delivery import Outcome, send_due_step
from content.lifecycle import ChainNotReady, activate_chain, check_chain, enroll_hot, pause_chain
from content.mail import Relay
from content.tables import (
    Chain,
    ChainStatus,
    ChainWait,
    Delivery,
    DeliveryStatus,
    Ebook,
    Enrollment,
    EnrollmentStatus,
    Offer,
    OfferKind,
    Step,
)
from landing.tables import Conversion, Lead, LeadStage, Topic
from scoring.tables import Score
from server.settings import _parse_smtp_url, get_settings
from tests.integration.conftest import landing_form, run_worker_burst
from tests.integration.test_delivery_ledger import capture
from workers import jobs


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def _chain(slug: str = "seo") -> Chain:
    topic = await Topic.objects().get(Topic.slug == slug)
    return await Chain.objects().get(Chain.topic == topic.id)


async def _submit(client, email: str, slug: str = "seo") -> int:
    token = await landing_form(client, slug)
    response = await client.post(f"/l/{slug}", data={"_csrf_token": token, "email": email, "consent": "on"})
    assert response.status_code == 303
    return (await Lead.objects().get(Lead.email == email)).id


async def _sweep() -> None:
    from arq import create_pool

    from workers.settings import redis_settings

    pool = await create_pool(redis_settings())
    try:
        await jobs.sweep({"redis": pool})
    finally:
        await pool.aclose()


async def _send(enrollment_id: int, sink) -> Outcome:
    relay = Relay(_parse_smtp_url(sink.url))
    try:
        return (await send_due_step(enrollment_id, relay)).outcome
    finally:
        await relay.close()


# --- activation -------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "expected"), [
    (Step.body_markdown, "Hi {{ lead.first_name ", "step 2 body"),
    (Step.subject, "About {{ lead.nickname }}", "step 2 subject"),
    (Step.body_markdown, "{{ ''.__class__.__mro__ }}", "step 2 body"),
    (Step.subject_b, "{% if %}", "step 2 (variant B) subject"),
])
async def test_a_chain_whose_letter_does_not_render_cannot_be_activated(catalog, field, value, expected) -> None:
    chain = await _chain()
    await Chain.update({Chain.status: ChainStatus.draft}).where(Chain.id == chain.id)
    await Step.update({field: value}).where((Step.chain == chain.id) & (Step.position == 2))
    with pytest.raises(ChainNotReady) as refused:
        await activate_chain(chain.id)
    assert any(p.startswith(expected) for p in refused.value.problems), refused.value.problems
    stored = await Chain.objects().get(Chain.id == chain.id)
    assert stored.status == ChainStatus.draft, "a refused chain stays as it was"
    assert expected in stored.check_error, "the admin shows why"


async def test_a_chain_with_an_offer_step_needs_both_offers(catalog) -> None:
    chain = await _chain()
    await Offer.delete().where((Offer.chain == chain.id) & (Offer.kind == OfferKind.cold))
    assert "the cold offer is missing" in await check_chain(chain.id)
    await Offer.update({Offer.body_markdown: "{{ lead.shoe_size }}"}).where(Offer.chain == chain.id)
    problems = await check_chain(chain.id)
    assert any(p.startswith("hot offer body") for p in problems), problems


async def test_a_good_chain_activates_and_its_error_is_cleared(catalog) -> None:
    chain = await _chain()
    await Chain.update({Chain.status: ChainStatus.draft, Chain.check_error: "old"}).where(Chain.id == chain.id)
    await activate_chain(chain.id)
    stored = await Chain.objects().get(Chain.id == chain.id)
    assert (stored.status, stored.check_error) == (ChainStatus.active, "")


# --- nobody silently left out -------------------------------------------------------------

async def test_leads_collected_without_a_chain_wait_and_join_when_it_is_activated(client, catalog, sink) -> None:
    chain = await _chain()
    await Chain.update({Chain.status: ChainStatus.draft}).where(Chain.id == chain.id)
    first = await _submit(client, "wait1@example.com")
    await _submit(client, "wait2@example.com")
    assert await Enrollment.count() == 0
    assert await ChainWait.count().where(ChainWait.lead == first) == 1
    await _sweep()
    ebook = await Ebook.objects().get(Ebook.topic == chain.topic)
    assert ebook.leads_waiting == 2, "the admin's ebook list warns: two leads wait for a chain"

    activation = await activate_chain(chain.id)
    assert activation.leads_waiting == 2
    await run_worker_burst(sink.url, sweep_first=True)
    assert sorted({str(m["To"]) for m in sink.letters()}) == ["wait1@example.com", "wait2@example.com"]
    assert await ChainWait.count() == 0
    await _sweep()
    assert (await Ebook.objects().get(Ebook.id == ebook.id)).leads_waiting == 0


async def test_a_fallback_chain_takes_topics_without_a_chain_of_their_own(client, catalog, sink) -> None:
    seo = await _chain("seo")
    ads = await _chain("paid-ads")
    await Chain.update({Chain.status: ChainStatus.draft}).where(Chain.id == seo.id)
    await Chain.update({Chain.is_fallback: True}).where(Chain.id == ads.id)
    lead_id = await _submit(client, "fallback@example.com", "seo")
    enrollment = await Enrollment.objects().get(Enrollment.lead == lead_id)
    assert (enrollment.chain, enrollment.reason) == (ads.id, "fallback")
    assert await ChainWait.count() == 0
    # The topic's own chain, once active, wins over the fallback for the next lead.
    await activate_chain(seo.id)
    other = await _submit(client, "own@example.com", "seo")
    assert (await Enrollment.objects().get(Enrollment.lead == other)).chain == seo.id


async def test_a_scheduled_chain_starts_taking_its_waiting_leads_at_its_start(client, catalog, sink) -> None:
    chain = await _chain()
    await Chain.update({Chain.status: ChainStatus.draft}).where(Chain.id == chain.id)
    await activate_chain(chain.id, starts_at=_now() + timedelta(hours=2))
    await _submit(client, "early@example.com")
    await run_worker_burst(sink.url, sweep_first=True)
    assert sink.letters() == [] and await ChainWait.count() == 1, "before its start the chain takes nobody"
    await Chain.update({Chain.starts_at: _now() - timedelta(seconds=1)}).where(Chain.id == chain.id)
    await run_worker_burst(sink.url, sweep_first=True)
    assert [str(m["To"]) for m in sink.letters()] == ["early@example.com"] * 5


async def test_a_lead_that_left_the_topic_does_not_wait_for_it(client, catalog) -> None:
    from landing.tables import TopicPreference

    chain = await _chain()
    await Chain.update({Chain.status: ChainStatus.draft}).where(Chain.id == chain.id)
    lead_id = await _submit(client, "left@example.com")
    await ChainWait.delete(force=True)
    await TopicPreference(lead=lead_id, topic=chain.topic, subscribed=False).save()
    await _submit(client, "left@example.com")
    assert await ChainWait.count() == 0


# --- pause and resume ---------------------------------------------------------------------

async def test_pause_holds_due_letters_and_resume_sends_each_once(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "pause@example.com")
    chain = await _chain()
    await Step.update({Step.delay_minutes: 60}).where((Step.chain == chain.id) & (Step.position == 2))
    # The first letter by the send service itself: a burst worker would wait for the
    # second letter's delayed job.
    assert await _send(enrollment_id, sink) == Outcome.sent
    await pause_chain(chain.id)
    await Enrollment.update({Enrollment.due_at: _now() - timedelta(seconds=1)}).where(Enrollment.id == enrollment_id)
    await run_worker_burst(sink.url, sweep_first=True)
    assert await _send(enrollment_id, sink) == Outcome.not_due
    assert len(sink.letters()) == 1, "a paused chain sends nothing, even when a job runs"
    await activate_chain(chain.id)
    await run_worker_burst(sink.url, sweep_first=True)
    positions = [str(m["Message-ID"]).split(".")[3].split("@")[0] for m in sink.letters()]
    assert positions == ["1", "2", "3", "4", "5"], "resumed at the step it stopped, nothing resent"


# --- send windows ---------------------------------------------------------------------------

async def test_outside_the_send_window_a_letter_waits_for_the_next_opening(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "window@example.com")
    chain = await _chain()
    local_hour = _now().astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo")).hour
    # A two-hour window that is closed now, in the lead's zone (Tokyo), not the chain's (UTC).
    start = (local_hour + 3) % 24
    start = min(start, 22)
    await Chain.update({Chain.send_window_start: start, Chain.send_window_end: start + 2}).where(Chain.id == chain.id)
    await Lead.update({Lead.timezone: "Asia/Tokyo"}).where(Lead.email == "window@example.com")
    assert await _send(enrollment_id, sink) == Outcome.deferred
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    opens = enrollment.due_at.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert (opens.hour, opens.minute) == (start, 0)
    assert enrollment.status == EnrollmentStatus.active and sink.letters() == []
    assert await Delivery.count() == 0, "nothing claimed while waiting"


# --- frequency cap -------------------------------------------------------------------------

@pytest.fixture
def one_letter_a_day(monkeypatch):
    monkeypatch.setenv("FREQUENCY_CAP", "1/86400")
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("FREQUENCY_CAP")
    get_settings.cache_clear()


async def test_the_frequency_cap_defers_letters_across_chains_never_drops_them(client, catalog, sink, one_letter_a_day) -> None:
    await capture(client, "busy@example.com", "seo")
    await capture(client, "busy@example.com", "paid-ads")
    assert await Enrollment.count() == 2, "one lead in two chains"
    await run_worker_burst(sink.url, sweep_first=True)
    assert len(sink.letters()) == 1, "one letter a day across both chains"
    enrollments = await Enrollment.objects()
    waiting = [e for e in enrollments if e.next_position == 1]
    assert len(waiting) == 1, "one chain sent its first letter, the other's waits"
    assert all(e.status == EnrollmentStatus.active for e in enrollments)
    assert waiting[0].due_at > _now() + timedelta(hours=23), "deferred by a day"
    # A day later (the ledger's clock moved back a day), the deferred letter goes.
    await Delivery.update({Delivery.reserved_at: _now() - timedelta(days=1, minutes=1),
                           Delivery.sent_at: _now() - timedelta(days=1, minutes=1)}, force=True)
    await Enrollment.update({Enrollment.due_at: _now() - timedelta(seconds=1)}).where(Enrollment.id == waiting[0].id)
    await run_worker_burst(sink.url, sweep_first=True)
    assert len(sink.letters()) == 2


# --- exit rules ----------------------------------------------------------------------------

async def test_a_conversion_ends_the_chain(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "buyer@example.com")
    lead = await Lead.objects().get(Lead.email == "buyer@example.com")
    await Conversion(lead=lead.id, kind="order", value=500).save()
    assert await _send(enrollment_id, sink) == Outcome.exited
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    assert (enrollment.status, enrollment.exit_reason) == (EnrollmentStatus.exited, "converted")
    assert sink.letters() == []


@pytest.mark.parametrize(("stage", "exits"), [(LeadStage.contacted, False), (LeadStage.qualified, True),
                                              (LeadStage.won, True), (LeadStage.lost, True)])
async def test_a_sales_stage_at_the_chains_exit_stage_ends_it(client, catalog, sink, stage, exits) -> None:
    enrollment_id = await capture(client, "stage@example.com")
    await Lead.update({Lead.stage: stage}).where(Lead.email == "stage@example.com")
    outcome = await _send(enrollment_id, sink)
    assert (outcome == Outcome.exited) == exits
    if exits:
        assert (await Enrollment.objects().get(Enrollment.id == enrollment_id)).exit_reason == f"stage {stage.value}"


# --- a lead hot on another topic -------------------------------------------------------------

async def test_a_lead_hot_on_another_topic_joins_that_chain_when_the_chain_allows(client, catalog, sink) -> None:
    await capture(client, "wanderer@example.com", "seo")
    lead = await Lead.objects().get(Lead.email == "wanderer@example.com")
    ads = await _chain("paid-ads")
    await Score.insert(Score(lead=lead.id, topic=ads.topic, rule_points=90, combined=90.0, hot=True, explanation={}))
    assert await enroll_hot(lead.id) == [], "the chain does not take hot leads unless told"
    await Chain.update({Chain.enroll_when_hot: True}).where(Chain.id == ads.id)
    dues = await enroll_hot(lead.id)
    assert len(dues) == 1
    enrollment = await Enrollment.objects().get((Enrollment.lead == lead.id) & (Enrollment.chain == ads.id))
    assert enrollment.reason == "hot"
    assert await enroll_hot(lead.id) == [], "once"


# --- A/B versions and tracking -----------------------------------------------------------------

async def test_variant_b_leads_get_the_b_text_and_the_ledger_records_it(client, catalog, sink) -> None:
    chain = await _chain()
    await Step.update({Step.subject_b: "B: {{ topic.name }} in five minutes"}).where(
        (Step.chain == chain.id) & (Step.position == 1))
    for n in range(8):
        await capture(client, f"ab{n}@example.com")
    await run_worker_burst(sink.url, sweep_first=True)
    first_letters = {str(m["To"]): str(m["Subject"]) for m in sink.letters() if ".1@" in str(m["Message-ID"])}
    enrollments = await Enrollment.select(Enrollment.id, Enrollment.variant, Enrollment.lead.email.as_alias("email"))
    assert {e["variant"] for e in enrollments} == {"A", "B"}, "eight leads land in both groups (stable buckets)"
    for e in enrollments:
        expected = "B: SEO in five minutes" if e["variant"] == "B" else "Your ebook: SEO starts here"
        assert first_letters[e["email"]] == expected
    recorded = await Delivery.select(Delivery.variant).where(Delivery.step.position == 1)
    assert {r["variant"] for r in recorded} == {"A", "B"}
    later = await Delivery.select(Delivery.variant).where(Delivery.step.position == 3)
    assert {r["variant"] for r in later} == {""}, "a step without a B text is not an A/B test"


async def test_sent_letters_carry_tracked_links_and_the_ledger_keeps_the_originals(client, catalog, sink) -> None:
    chain = await _chain()
    await Step.update({Step.body_markdown: "Read [the guide](https://example.com/guide?a=1&b=2) or "
                                           "[again](https://example.com/guide?a=1&b=2) and [pricing](https://example.com/pricing)."}).where(
        (Step.chain == chain.id) & (Step.position == 1))
    await capture(client, "links@example.com")
    await run_worker_burst(sink.url, sweep_first=True)
    letter = next(m for m in sink.letters() if ".1@" in str(m["Message-ID"]))
    html = letter.get_body(("html",)).get_content()
    text = letter.get_body(("plain",)).get_content()
    assert "https://example.com/guide" not in html and html.count("/t/c/") == 3 and "/t/o/" in html
    assert "https://example.com/guide?a=1&b=2" in text, "the text part keeps readable links"
    delivery = await Delivery.objects().where(Delivery.step.position == 1).first()
    links = json.loads(delivery.links) if isinstance(delivery.links, str) else delivery.links
    assert links == ["https://example.com/guide?a=1&b=2", "https://example.com/pricing"]
    assert delivery.status == DeliveryStatus.sent and delivery.lead is not None


async def test_an_unconfirmed_double_opt_in_lead_is_not_enrolled_for_turning_hot(client, catalog) -> None:
    await _submit(client, "unconfirmed@example.com", "analytics")  # a double opt-in page, not confirmed
    lead = await Lead.objects().get(Lead.email == "unconfirmed@example.com")
    ads = await _chain("paid-ads")
    await Chain.update({Chain.enroll_when_hot: True}).where(Chain.id == ads.id)
    await Score.insert(Score(lead=lead.id, topic=ads.topic, rule_points=90, combined=90.0, hot=True, explanation={}))
    assert await enroll_hot(lead.id) == [] and await Enrollment.count() == 0, "no letter without the opt-in"


async def test_confirming_two_double_opt_in_pages_joins_both_chains(client, catalog) -> None:
    from content.tables import LandingPage
    from landing.service import confirm

    await LandingPage.update({LandingPage.double_opt_in: True}).where(LandingPage.slug == "seo")
    await _submit(client, "twice.confirmed@example.com", "seo")
    lead_id = await _submit(client, "twice.confirmed@example.com", "analytics")
    assert await Enrollment.count() == 0
    for slug in ("seo", "analytics"):
        page = await LandingPage.objects().get(LandingPage.slug == slug)
        assert await confirm(lead_id, page.id) is not None
    chains = {e["chain"] for e in await Enrollment.select(Enrollment.chain).where(Enrollment.lead == lead_id)}
    assert chains == {(await _chain("seo")).id, (await _chain("analytics")).id}


async def test_letters_waiting_for_a_person_never_crowd_out_the_rest_of_the_sweep(client, catalog, sink) -> None:
    from content.chains import due_enrollments

    stuck = await capture(client, "stuck@example.com")
    fine = await capture(client, "fine@example.com", "paid-ads")
    step = await Step.objects().get((Step.chain == (await _chain()).id) & (Step.position == 1))
    await Delivery(enrollment=stuck, step=step.id, status=DeliveryStatus.unknown).save()
    await Enrollment.update({Enrollment.due_at: _now() - timedelta(hours=1)}).where(Enrollment.id == stuck)
    # The oldest due enrollment waits on an `unknown` row: a sweep of one still finds the other.
    assert [d.enrollment_id for d in await due_enrollments(limit=1)] == [fine]


async def test_the_offer_letter_links_to_its_call_to_action(client, catalog, sink) -> None:
    chain = await _chain()
    await Offer.update({Offer.call_to_action_url: "https://example.com/book?plan=audit",
                        Offer.body_markdown: "[Book your free audit]({{ offer.url }})"}).where(Offer.chain == chain.id)
    await capture(client, "cta@example.com")
    await run_worker_burst(sink.url, sweep_first=True)
    offer = await Delivery.objects().where(Delivery.offer_kind != "").first()
    links = json.loads(offer.links) if isinstance(offer.links, str) else offer.links
    assert links == ["https://example.com/book?plan=audit"]


async def test_the_sweeper_queues_in_batches_once_each_and_frees_a_dead_workers_job(catalog) -> None:
    from arq import create_pool
    from arq.constants import in_progress_key_prefix

    from content.chains import EnrollmentDue, queue_sends, send_job_id
    from workers.settings import redis_settings

    now = _now()
    dues = [EnrollmentDue(n, 1, now - timedelta(seconds=n % 3)) for n in range(1, 2501)]
    dues.append(EnrollmentDue(9999, 2, now + timedelta(hours=1)))  # not yet due: deferred in the queue
    pool = await create_pool(redis_settings())
    try:
        first = await queue_sends(pool, dues, timedelta(minutes=10))
        assert (first.queued, first.freed) == (2501, [])
        assert await pool.zcard(pool.default_queue_name) == 2501
        again = await queue_sends(pool, dues, timedelta(minutes=10))
        assert again.queued == 0, "an id already queued is not queued twice"
        # A worker died running one of them: its id stays "in progress" for an hour in ARQ.
        dead = dues[0]
        await pool.set(in_progress_key_prefix + send_job_id(dead), b"1", px=3_600_000)
        assert (await queue_sends(pool, [dead], timedelta(minutes=10))).freed == [], "not yet stuck long enough"
        stuck = await queue_sends(pool, [dead], timedelta(seconds=0))
        assert stuck.freed == [send_job_id(dead)] and not await pool.exists(in_progress_key_prefix + send_job_id(dead))
        jobs = {j.job_id: j for j in await pool.queued_jobs()}
        assert jobs[send_job_id(dues[-1])].function == "send_step" and jobs[send_job_id(dues[-1])].args == (9999,)
    finally:
        await pool.aclose()


async def test_the_due_steps_are_read_page_by_page_to_the_end(client, catalog) -> None:
    from content.chains import all_due, due_enrollments

    ids = [await capture(client, f"page{n}@example.com") for n in range(5)]
    same_time = _now() - timedelta(minutes=1)
    await Enrollment.update({Enrollment.due_at: same_time}).where(Enrollment.id.is_in(ids[:3]))  # ties on due_at
    pages = [[d.enrollment_id for d in page] async for page in all_due(page=2)]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(sum(pages, [])) == sorted(ids), "every due step once, ties included"
    assert [d.enrollment_id for d in await due_enrollments()] == sum(pages, [])
