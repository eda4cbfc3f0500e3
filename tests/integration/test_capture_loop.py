"""The first slice through the loop: form -> lead, consent, events, enrollment -> worker -> letter."""

from __future__ import annotations

import pytest

from content.tables import Delivery, DeliveryStatus, Enrollment, Step
from landing.tables import Consent, Event, Lead, Visitor
from server.tables import CaughtMail
from tests.integration.conftest import landing_form, run_worker_burst


async def submit(client, slug: str, **fields: str):
    token = await landing_form(client, slug)
    data = {"_csrf_token": token, **fields}
    return await client.post(f"/l/{slug}", data=data)


async def test_form_capture_writes_lead_consent_events_and_enrollment(client, catalog) -> None:
    response = await submit(client, "seo", email="  Vera.Visitor@Example.ORG ", first_name="Vera", company="Acme", consent="on")
    # Redirect after POST: a reload shows the thank-you page, it does not post again.
    assert response.status_code == 303 and response.headers["location"].startswith("/l/seo/thanks?t=")
    thanks = await client.get(response.headers["location"])
    assert thanks.status_code == 200 and "is yours" in thanks.text and 'href="/d/' in thanks.text

    lead = await Lead.objects().get(Lead.email == "vera.visitor@example.org")
    assert (lead.first_name, lead.company) == ("Vera", "Acme")
    consent = await Consent.objects().get(Consent.lead == lead.id)
    assert consent.page_url == "/l/seo" and consent.version == "v1" and "unsubscribe" in consent.text
    types = sorted(r["type"] for r in await Event.select(Event.type).where(Event.lead == lead.id))
    # The page view made before the email was known now belongs to the lead.
    assert types == ["form_submit", "page_view"]
    visitor = await Visitor.objects().get(Visitor.lead == lead.id)
    assert visitor.cookie_id == client.cookies.get("lk_vid")
    enrollment = await Enrollment.objects().get(Enrollment.lead == lead.id)
    assert enrollment.status == "active" and enrollment.next_position == 1


async def test_worker_sends_the_first_letter_to_the_mail_catcher(client, catalog, sink) -> None:
    await submit(client, "paid-ads", email="ann@example.net", first_name="Ann", consent="on")
    await run_worker_burst(sink.url)

    messages = sink.letters()
    assert len(messages) == 5, "delays are zero: the whole 5-letter chain (4 letters and the offer) plays out"
    first = messages[0]
    assert first["To"] == "ann@example.net"
    assert first["Subject"] == "Your ebook: Paid ads starts here"
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert first["List-Unsubscribe"].startswith("<http://testserver.local/u/")
    assert first["Message-ID"].startswith("<lk.") and first["Date"]
    text = first.get_body(("plain",)).get_content()
    assert "Hi Ann," in text and "Unsubscribe: http://testserver.local/u/" in text
    html = first.get_body(("html",)).get_content()
    assert "<p>Hi Ann,</p>" in html

    # Each letter is in the ledger once, and the catcher kept each for the admin.
    deliveries = await Delivery.select(Delivery.status, Delivery.message_id)
    assert len(deliveries) == 5 and {d["status"] for d in deliveries} == {DeliveryStatus.sent}
    assert {d["message_id"] for d in deliveries} == {m["Message-ID"] for m in messages}
    assert await CaughtMail.count() == 6, "the chain's five and the download letter"
    # Without a score over the threshold the last letter is the cold offer.
    assert messages[-1]["Subject"] == "When you are ready: our Paid ads service"
    enrollment = await Enrollment.objects().first()
    assert enrollment.status == "completed"


async def test_same_email_twice_is_one_lead_with_new_events_and_no_second_chain(client, catalog, sink) -> None:
    await submit(client, "seo", email="ben@example.com", consent="on")
    await submit(client, "seo", email="BEN@example.com", first_name="Ben", consent="on")
    assert await Lead.count() == 1
    lead = await Lead.objects().first()
    assert lead.first_name == "Ben"
    assert await Event.count().where((Event.lead == lead.id) & (Event.type == "form_submit")) == 2
    assert await Enrollment.count() == 1
    await run_worker_burst(sink.url)
    steps = await Step.count().where(Step.chain == (await Enrollment.objects().first()).chain)
    assert len(sink.letters()) == steps


async def test_hot_lead_gets_the_hot_offer(client, catalog, sink) -> None:
    from scoring.tables import ScoringRule

    await ScoringRule.update({ScoringRule.points: 80}).where(ScoringRule.event_type == "form_submit")
    await submit(client, "seo", email="cleo@example.com", consent="on")
    from scoring.service import rescore_lead

    lead = await Lead.objects().first()
    await rescore_lead(lead.id)
    await run_worker_burst(sink.url)
    assert sink.letters()[-1]["Subject"].startswith("Let us look at your SEO")


async def test_a_known_lead_viewing_a_page_is_rescored_by_the_worker(client, catalog, sink) -> None:
    from scoring.tables import Score

    await submit(client, "seo", email="dina@example.com", consent="on")
    await run_worker_burst(sink.url)
    lead = await Lead.objects().first()
    before = (await Score.objects().where((Score.lead == lead.id) & (Score.topic == lead.topic)).first()).combined
    # The same browser (its visitor cookie) comes back: the view joins the lead at once.
    await client.get("/l/seo")
    await run_worker_burst(sink.url)
    after = (await Score.objects().where((Score.lead == lead.id) & (Score.topic == lead.topic)).first()).combined
    assert after == pytest.approx(before + 3, abs=0.1), "the demo rule: 3 points a landing page view"
