"""When a lead turns hot: one letter to its owner or the sales list, one signed webhook per
endpoint, however often the hand-off runs; erased leads are neither announced nor kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from piccolo.apps.user.tables import BaseUser

from admin.alerts import forget_erased, record_crossings
from admin.tables import AlertStatus, HotAlert, WebhookDelivery, WebhookStatus
from landing.rights import erase_lead
from landing.tables import Event, Lead, Topic
from scoring.service import BECAME_HOT, rescore_lead
from server.settings import get_settings
from tests.integration.conftest import run_worker_burst
from tests.integration.test_capture_loop import submit
from tests.integration.test_webhooks import Receiver, make_endpoint, running_receiver

ALERT_PREFIX = "<lk.h"


async def hand_off(sink) -> None:
    """The hand-off cron once, then a burst worker for the letters and POSTs it queued (a burst
    worker in a test may stop before its own crons fire)."""
    from arq import create_pool

    from workers import jobs
    from workers.settings import redis_settings

    pool = await create_pool(redis_settings())
    try:
        await jobs.hand_off_hot_leads({"redis": pool})
    finally:
        await pool.aclose()
    await run_worker_burst(sink.url)


def alerts(sink) -> list:
    """Letters to sales (their Message-IDs name the alert: <lk.hN@…>)."""
    return [m for m in sink.messages() if str(m["Message-ID"]).startswith(ALERT_PREFIX)]


async def hot_lead(client, email: str = "warm@example.com", **fields: str) -> Lead:
    """A lead that asked for the SEO ebook and then looked at pricing: over the demo threshold of 30."""
    client.cookies.clear()  # a new visitor, whose page view before the form is its own
    await submit(client, "seo", email=email, consent="on", **fields)
    lead = await Lead.objects().get(Lead.email == email)
    await Event.insert(Event(type="page_view", lead=lead.id, topic=lead.topic, properties={"url": "https://x.example/pricing"}))
    scores = await rescore_lead(lead.id)
    assert scores[lead.topic] > 30
    assert await Event.count().where((Event.lead == lead.id) & (Event.type == BECAME_HOT)) == 1
    return lead


@pytest.fixture
def crm() -> Iterator[Receiver]:
    with running_receiver() as receiver:
        yield receiver


@pytest.fixture
def sales_list(monkeypatch):
    monkeypatch.setenv("SALES_ALERT_TO", "sales@example.com")
    get_settings.cache_clear()
    yield "sales@example.com"
    monkeypatch.delenv("SALES_ALERT_TO")
    get_settings.cache_clear()


async def test_a_lead_turning_hot_tells_its_owner_once_and_the_crm_once(client, catalog, sink, crm: Receiver) -> None:
    owner = await BaseUser.create_user(username="maria", password="correct-horse-9", email="maria@example.com", active=True)
    endpoint = await make_endpoint(crm)
    lead = await hot_lead(client, first_name="Vera", company="Acme")
    await Lead.update({Lead.owner: owner.id}).where(Lead.id == lead.id)

    await hand_off(sink)
    await hand_off(sink)
    assert await record_crossings() == 0, "a crossing is recorded once, however often the job runs"

    [letter] = alerts(sink)
    assert letter["To"] == "maria@example.com"
    assert letter["Subject"] == "Hot lead: Vera (Acme) on SEO, score 31"
    assert letter["Auto-Submitted"] == "auto-generated" and letter["List-Unsubscribe"] is None
    text = letter.get_body(("plain",)).get_content()
    assert "Email: warm@example.com" in text, "staff see the real address"
    lines = text.splitlines()
    why = lines.index("Why:")
    assert lines[why + 1:why + 3] == ["- Visited pricing (1×): +15.0", "- Asked for an ebook (1×): +10.0"]
    assert f"Open the lead: http://testserver.local/desk/leads/{lead.id}" in text
    alert = await HotAlert.objects().get(HotAlert.lead == lead.id)
    assert (alert.status, alert.to_address, alert.attempts) == (AlertStatus.sent, "maria@example.com", 1)

    [request] = crm.requests
    assert request["verified"]
    body = json.loads(request["body"])
    hot_event = await Event.objects().get((Event.lead == lead.id) & (Event.type == BECAME_HOT))
    assert body["event"] == "lead.hot" and body["id"] == f"lead.hot:{hot_event.id}"
    assert body["lead"] == {"id": lead.id, "email": "warm@example.com", "first_name": "Vera", "last_name": "",
                            "company": "Acme", "stage": "new", "owner": "maria@example.com",
                            "url": f"http://testserver.local/desk/leads/{lead.id}"}
    seo = await Topic.objects().get(Topic.slug == "seo")
    assert body["topic"] == {"id": seo.id, "name": "SEO"}
    assert body["score"]["combined"] > body["score"]["threshold"] == 30
    assert body["score"]["reasons"][0] == {"factor": "Visited pricing", "source": "rule", "effect": 15.0,
                                           "text": "Visited pricing (1×)"}
    datetime.fromisoformat(body["occurred_at"])
    [delivery] = await WebhookDelivery.select().where(WebhookDelivery.endpoint == endpoint.id)
    assert delivery["status"] == WebhookStatus.delivered and delivery["attempts"] == 1
    assert delivery["event_key"] == body["id"] and request["headers"]["X-Leadkiln-Delivery"] == str(delivery["id"])


async def test_a_lead_without_an_owner_goes_to_the_sales_list(client, catalog, sink, sales_list) -> None:
    await hot_lead(client)
    await hand_off(sink)
    [letter] = alerts(sink)
    assert letter["To"] == "sales@example.com" and letter["Subject"].startswith("Hot lead: warm@example.com on SEO")


async def test_with_no_owner_and_no_sales_list_the_letter_is_skipped_and_the_crm_still_told(
        client, catalog, sink, crm: Receiver) -> None:
    await make_endpoint(crm)
    lead = await hot_lead(client)
    await hand_off(sink)
    assert alerts(sink) == []
    alert = await HotAlert.objects().get(HotAlert.lead == lead.id)
    assert alert.status == AlertStatus.skipped and "SALES_ALERT_TO" in alert.smtp_reply
    assert len(crm.requests) == 1


async def test_what_a_lead_typed_is_inert_in_the_letter(client, catalog, sink, sales_list) -> None:
    lead = await hot_lead(client)
    await Lead.update({Lead.first_name: '<script>alert("x")</script>', Lead.last_name: "Eve\r\nBcc: all@example.com",
                       Lead.company: '<img src=x onerror=alert(1)>'}).where(Lead.id == lead.id)
    await hand_off(sink)
    [letter] = alerts(sink)
    assert letter["Bcc"] is None and "\n" not in letter["Subject"], "no header can be smuggled in a name"
    assert letter["Subject"] == 'Hot lead: <script>alert("x")</script> Eve Bcc: all@example.com (<img src=x onerror=alert(1)>) on SEO, score 31'
    html = letter.get_body(("html",)).get_content()
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html


async def test_old_crossings_are_history_not_news(client, catalog, sink, sales_list) -> None:
    lead = await hot_lead(client)
    await Event.update({Event.occurred_at: datetime.now(timezone.utc) - timedelta(days=2)}).where(
        (Event.lead == lead.id) & (Event.type == BECAME_HOT))
    assert await record_crossings() == 0
    await hand_off(sink)
    assert alerts(sink) == [] and await HotAlert.count() == 0


async def test_an_erased_lead_is_not_announced_and_what_was_logged_about_it_is_emptied(
        client, catalog, sink, sales_list, crm: Receiver) -> None:
    await make_endpoint(crm)
    told = await hot_lead(client, email="told@example.com", first_name="Tom")
    await hand_off(sink)
    assert len(alerts(sink)) == 1 and len(crm.requests) == 1

    crm.answers = [500]
    late = await hot_lead(client, email="late@example.com")
    assert await record_crossings() == 1
    await erase_lead(told.id)
    await erase_lead(late.id)
    assert await forget_erased() == 4
    assert await forget_erased() == 0, "done once"
    await hand_off(sink)
    assert len(alerts(sink)) == 1 and len(crm.requests) == 1, "nothing more about erased leads"
    for alert in await HotAlert.select():
        assert alert["subject"] == ""
    assert {a["status"] for a in await HotAlert.select(HotAlert.status).where(HotAlert.lead == late.id)} == {AlertStatus.skipped}
    for delivery in await WebhookDelivery.select().output(load_json=True):
        assert delivery["payload"] == {} and delivery["response_body"] == ""
        assert "told@example.com" not in json.dumps(delivery, default=str)
    statuses = {d["lead"]: d["status"] for d in await WebhookDelivery.select(WebhookDelivery.lead, WebhookDelivery.status)}
    assert statuses == {told.id: WebhookStatus.delivered, late.id: WebhookStatus.gave_up}
