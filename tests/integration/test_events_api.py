"""POST /api/events: keys, URL patterns mapped to topics, identity joins, and what is refused."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from landing.api import create_api_key
from landing.tables import ApiKey, ApiKeyScope, Event, Lead, Topic, UrlTopic, Visitor
from landing.tokens import sign
from tests.integration.conftest import landing_form

VISITOR = "visitor-0123456789abcdef"


@pytest.fixture
async def keys(catalog) -> dict[str, str]:
    return {
        "server": await create_api_key("crm sync", ApiKeyScope.server),
        "browser": await create_api_key("www snippet", ApiKeyScope.browser, "https://www.example.com\nhttps://example.com"),
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_a_page_view_from_the_site_maps_to_its_topic(client, keys) -> None:
    await UrlTopic.insert(UrlTopic(pattern="*/pricing*", topic=(await Topic.objects().get(Topic.slug == "paid-ads")).id,
                                   event_type="pricing_view", priority=1))
    response = await client.post("/api/events", json={
        "type": "page_view", "visitor_id": VISITOR, "url": "https://www.example.com/services/seo/audit?x=1",
        "referrer": "https://google.com/", "properties": {"section": "services"},
    }, headers=bearer(keys["browser"]) | {"origin": "https://www.example.com"})
    assert response.status_code == 202, response.text
    assert response.json()["topic"] == "SEO" and response.json()["type"] == "page_view"
    event = await Event.objects().output(load_json=True).get(Event.id == response.json()["id"])
    assert event.properties["url"].endswith("/services/seo/audit?x=1") and event.properties["section"] == "services"
    assert await Visitor.exists().where(Visitor.cookie_id == VISITOR)
    # A pricing page counts as a pricing view of the topic its pattern names.
    pricing = await client.post("/api/events", json={"type": "page_view", "visitor_id": VISITOR,
                                                     "url": "https://www.example.com/pricing"},
                                headers=bearer(keys["browser"]))
    assert pricing.json()["type"] == "pricing_view" and pricing.json()["topic"] == "Paid ads"
    assert (await ApiKey.objects().where(ApiKey.scope == "browser").first()).last_used_at is not None


async def test_the_snippet_sends_text_plain_with_the_key_in_the_body(client, keys) -> None:
    body = json.dumps({"key": keys["browser"], "type": "click", "visitor_id": VISITOR, "url": "https://example.com/"})
    response = await client.post("/api/events", content=body, headers={"content-type": "text/plain;charset=UTF-8"})
    assert response.status_code == 202, response.text
    snippet = await client.get("/api/snippet.js")
    assert snippet.status_code == 200 and snippet.headers["content-type"].startswith("application/javascript")
    assert "sendBeacon" in snippet.text and "lk_site" in snippet.text


async def test_a_letter_link_token_joins_the_visitor_and_its_history_to_the_lead(client, keys) -> None:
    token = await landing_form(client, "seo")
    await client.post("/l/seo", data={"_csrf_token": token, "email": "ivy@example.com", "consent": "on"})
    lead = await Lead.objects().get(Lead.email == "ivy@example.com")
    anonymous = await client.post("/api/events", json={"type": "page_view", "visitor_id": VISITOR, "url": "https://example.com/a"},
                                  headers=bearer(keys["browser"]))
    assert anonymous.json()["lead_id"] is None
    joined = await client.post("/api/events", json={"type": "page_view", "visitor_id": VISITOR, "url": "https://example.com/b",
                                                    "lead_token": sign("identify", lead.id)}, headers=bearer(keys["browser"]))
    assert joined.json()["lead_id"] == lead.id
    urls = [e.properties.get("url") for e in await Event.objects().output(load_json=True).where(Event.lead == lead.id)]
    assert "https://example.com/a" in urls, "the anonymous view before the token now belongs to the lead"
    later = await client.post("/api/events", json={"type": "page_view", "visitor_id": VISITOR, "url": "https://example.com/c"},
                              headers=bearer(keys["browser"]))
    assert later.json()["lead_id"] == lead.id, "the visitor stays joined"


async def test_a_server_key_names_a_lead_by_email_and_reads_it_back(client, keys) -> None:
    token = await landing_form(client, "seo")
    await client.post("/l/seo", data={"_csrf_token": token, "email": "jay@example.com", "first_name": "Jay", "consent": "on"})
    response = await client.post("/api/events", json={"type": "reply", "email": "JAY@example.com"}, headers=bearer(keys["server"]))
    assert response.status_code == 202 and response.json()["lead_id"]
    lead = await client.get("/api/leads", params={"email": "jay@example.com"}, headers=bearer(keys["server"]))
    assert lead.status_code == 200 and lead.json()["first_name"] == "Jay"
    by_id = await client.get(f"/api/leads/{lead.json()['id']}", headers=bearer(keys["server"]))
    assert by_id.json()["email"] == "jay@example.com"
    assert (await client.get(f"/api/leads/{lead.json()['id']}", headers=bearer(keys["browser"]))).status_code == 403


async def test_bad_events_are_refused_with_a_clear_reason_and_nothing_stored(client, keys) -> None:
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    ancient = (datetime.now(timezone.utc) - timedelta(days=400)).isoformat()
    cases = [
        ({"type": "purchase", "visitor_id": VISITOR}, keys["server"], {}, 422, "Unknown event type"),
        ({"type": "form_submit", "visitor_id": VISITOR}, keys["browser"], {}, 422, "Unknown event type"),
        ({"type": "page_view", "visitor_id": VISITOR}, "lks_wrong", {}, 401, "not valid"),
        ({"type": "page_view", "visitor_id": VISITOR}, "", {}, 401, "API key is required"),
        ({"type": "page_view", "visitor_id": VISITOR, "occurred_at": future}, keys["server"], {}, 422, "in the future"),
        ({"type": "page_view", "visitor_id": VISITOR, "occurred_at": ancient}, keys["server"], {}, 422, "days ago"),
        ({"type": "page_view", "email": "a@example.com"}, keys["browser"], {}, 403, "browser key cannot"),
        ({"type": "page_view", "visitor_id": VISITOR}, keys["browser"], {"origin": "https://evil.example"}, 403, "does not accept"),
        ({"type": "page_view"}, keys["server"], {}, 422, "Name the visitor"),
        ({"type": "page_view", "email": "nobody@example.com"}, keys["server"], {}, 422, "No lead has this email"),
        ({"type": "page_view", "lead_token": "forged"}, keys["server"], {}, 422, "lead_token is not valid"),
        ({"type": "page_view", "visitor_id": "short"}, keys["server"], {}, 400, "visitor_id"),
        ({"type": "page_view", "visitor_id": VISITOR, "surprise": 1}, keys["server"], {}, 400, "surprise"),
        ({"type": "page_view", "visitor_id": VISITOR, "properties": {"a": "x" * 501}}, keys["server"], {}, 422, "longer than 500"),
    ]
    for body, key, headers, status, reason in cases:
        response = await client.post("/api/events", json=body, headers=(bearer(key) if key else {}) | headers)
        assert response.status_code == status, (body, response.text)
        assert reason in response.text, (body, response.text)
    revoked = await create_api_key("old", ApiKeyScope.server)
    await ApiKey.update({ApiKey.active: False}).where(ApiKey.name == "old")
    assert (await client.post("/api/events", json={"type": "page_view", "visitor_id": VISITOR},
                              headers=bearer(revoked))).status_code == 401
    not_json = await client.post("/api/events", content=b"\xff\xfe{", headers=bearer(keys["server"]) | {"content-type": "application/json"})
    assert not_json.status_code == 400
    assert await Event.count() == 0 and await Visitor.count() == 0


async def test_a_key_sending_too_much_is_told_to_wait(client, keys, monkeypatch) -> None:
    import dataclasses

    import landing.api
    from server.settings import RateLimit, get_settings

    tight = dataclasses.replace(get_settings(), api_limit_key=RateLimit(3, 60))
    monkeypatch.setattr(landing.api, "get_settings", lambda: tight)
    statuses = []
    for _ in range(5):
        response = await client.post("/api/events", json={"type": "page_view", "visitor_id": VISITOR},
                                     headers=bearer(keys["browser"]))
        statuses.append(response.status_code)
    assert statuses == [202, 202, 202, 429, 429] and int(response.headers["retry-after"]) > 0
    assert await Event.count() == 3
