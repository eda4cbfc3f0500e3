"""Opens and clicks in chain letters (the pixel and the link redirect), and RFC 8058 one-click unsubscribe."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest

from content.chains import utcnow
from content.delivery import Outcome, email_hash, send_due_step
from content.mail import Relay
from content.tables import Chain, Delivery, DeliveryStatus, Enrollment, Step, Suppression
from content.tracking import click_url, open_url, read_click_token, read_open_token
from landing.rights import erase_lead
from landing.tables import Event, Lead
from landing.tokens import sign, unsign
from server.settings import _parse_smtp_url
from tests.integration.conftest import run_worker_burst
from tests.integration.test_delivery_ledger import capture

@pytest.fixture(autouse=True)
async def our_site(clean_state) -> None:
    """example.com is the customer's own site (its browser API key's origin): links there
    carry the lead's token; links elsewhere do not."""
    from landing.api import create_api_key
    from landing.tables import ApiKeyScope

    await create_api_key("www", ApiKeyScope.browser, "https://example.com\nhttp://example.com")


GUIDE = "https://example.com/guide?utm_source=mail&q=a%20b&empty=#part-2"
LINKS = ["https://example.com/pricing", GUIDE]


async def sent_delivery(client, email: str, links: list[str], with_lead: bool = True) -> tuple[int, int, int]:
    """A captured lead and a sent first letter holding `links`: (delivery, lead, topic) ids."""
    enrollment = await Enrollment.objects().get(Enrollment.id == await capture(client, email))
    step = await Step.objects().get((Step.chain == enrollment.chain) & (Step.position == 1))
    rows = await Delivery.insert(Delivery(
        enrollment=enrollment.id, step=step.id, lead=enrollment.lead if with_lead else None, links=links,
        status=DeliveryStatus.sent, to_address=email, attempts=1, sent_at=utcnow(),
    )).returning(Delivery.id)
    chain = await Chain.objects().get(Chain.id == enrollment.chain)
    return rows[0]["id"], enrollment.lead, chain.topic


async def tracking_events() -> list[dict]:
    return await Event.select().where(Event.type.is_in(["email_open", "email_click"])).order_by(Event.id).output(
        load_json=True)


async def ledger(delivery_id: int) -> dict:
    return await Delivery.select(Delivery.opened_at, Delivery.clicked_at).where(Delivery.id == delivery_id).first()


async def queued_rescores() -> list[tuple]:
    """The arguments of the follow-up jobs waiting in Redis."""
    from arq import create_pool

    from workers.settings import redis_settings

    pool = await create_pool(redis_settings())
    try:
        return [job.args for job in await pool.queued_jobs() if job.function == "follow_up"]
    finally:
        await pool.aclose()


async def forget_queued_jobs() -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(os.environ["REDIS_URL"])
    await redis.flushdb()
    await redis.aclose()


def flipped(token: str, at: int) -> str:
    """The token with one character changed (a whole base64 digit, never only padding bits)."""
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]


async def test_the_pixel_records_the_first_open_on_the_ledger_and_every_open_as_an_event(client, catalog) -> None:
    delivery_id, lead_id, topic_id = await sent_delivery(client, "abe@example.com", LINKS)
    await forget_queued_jobs()

    first = await client.get(open_url(delivery_id))
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/gif" and first.content.startswith(b"GIF89a")
    assert "no-store" in first.headers["cache-control"] and "private" in first.headers["cache-control"]
    assert "set-cookie" not in first.headers, "a pixel sets no cookie in a mail program"
    opened_at = (await ledger(delivery_id))["opened_at"]
    assert opened_at is not None
    assert await queued_rescores() == [(lead_id, None, None)]

    assert (await client.get(open_url(delivery_id))).status_code == 200
    assert (await ledger(delivery_id)) == {"opened_at": opened_at, "clicked_at": None}, "the first open stays"
    events = await tracking_events()
    assert [(e["type"], e["lead"], e["topic"], e["properties"]) for e in events] == [
        ("email_open", lead_id, topic_id, {"delivery": delivery_id, "step": 1})] * 2


async def test_a_click_redirects_to_the_stored_link_with_the_leads_token(client, catalog) -> None:
    delivery_id, lead_id, topic_id = await sent_delivery(client, "bea@example.com", LINKS)

    response = await client.get(click_url(delivery_id, 1))
    assert response.status_code == 302
    assert "no-store" in response.headers["cache-control"]
    target = urlsplit(response.headers["location"])
    guide = urlsplit(GUIDE)
    assert (target.scheme, target.netloc, target.path, target.fragment) == ("https", "example.com", "/guide", "part-2")
    # The link's own query is kept as written, the lead's token added after it.
    assert target.query.startswith(guide.query + "&lk=")
    lk = parse_qs(target.query)["lk"]
    assert len(lk) == 1 and unsign("identify", lk[0], max_age_seconds=90 * 86400) == lead_id

    row = await ledger(delivery_id)
    assert row["clicked_at"] is not None and row["opened_at"] is not None, "a click implies an open"
    events = await tracking_events()
    assert [(e["type"], e["lead"], e["topic"], e["properties"]) for e in events] == [
        ("email_click", lead_id, topic_id, {"delivery": delivery_id, "step": 1, "url": GUIDE})]

    again = await client.get(click_url(delivery_id, 0))
    assert again.headers["location"].startswith("https://example.com/pricing?lk=")
    assert (await ledger(delivery_id)) == row, "the first click stays"
    assert [e["properties"]["url"] for e in await tracking_events()] == [GUIDE, LINKS[0]]


async def test_a_stored_link_carrying_its_own_lk_gets_the_leads_instead(client, catalog) -> None:
    delivery_id, lead_id, _ = await sent_delivery(client, "cy@example.com", ["http://example.com/?lk=someone-else&a=1"])
    response = await client.get(click_url(delivery_id, 0))
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["a"] == ["1"] and len(query["lk"]) == 1
    assert unsign("identify", query["lk"][0]) == lead_id


def refused_clicks(delivery_id: int) -> dict[str, str]:
    """Click addresses that name no link stored with the delivery, by what is wrong with them."""
    token = urlsplit(click_url(delivery_id, 0)).path.removeprefix("/t/c/")
    return {
        "index past the stored links": click_url(delivery_id, len(LINKS)),
        "negative index": click_url(delivery_id, -1),
        "unknown delivery": click_url(delivery_id + 1000, 0),
        "an open token": f"/t/c/{sign('open', delivery_id)}",
        "another purpose with the same payload": f"/t/c/{sign('identify', [delivery_id, 0])}",
        "flipped in the payload": f"/t/c/{flipped(token, 2)}",
        "flipped in the signature": f"/t/c/{flipped(token, token.rindex('.') + 1)}",
        "no signature": f"/t/c/{token.rpartition('.')[0]}",
    }


async def test_a_click_that_names_no_stored_link_is_refused_and_writes_nothing(client, catalog) -> None:
    delivery_id, _, _ = await sent_delivery(client, "dot@example.com", LINKS)
    await forget_queued_jobs()
    for case, url in refused_clicks(delivery_id).items():
        response = await client.get(url, headers={"accept": "text/html"})
        assert response.status_code == 404, case
        assert "location" not in response.headers, case
        assert "cannot be used" in response.text, case
    assert await tracking_events() == []
    assert await ledger(delivery_id) == {"opened_at": None, "clicked_at": None}
    assert await queued_rescores() == []


async def test_a_pixel_with_a_bad_token_is_refused_and_writes_nothing(client, catalog) -> None:
    delivery_id, _, _ = await sent_delivery(client, "eve@example.com", LINKS)
    token = urlsplit(open_url(delivery_id)).path.removeprefix("/t/o/")
    for url in (f"/t/o/{flipped(token, 1)}", f"/t/o/{flipped(token, token.rindex('.') + 1)}",
                f"/t/o/{sign('click', [delivery_id, 0])}", open_url(delivery_id + 1000)):
        response = await client.get(url)
        assert response.status_code == 404 and len(response.content) < 100, url
    assert await tracking_events() == []
    assert await ledger(delivery_id) == {"opened_at": None, "clicked_at": None}


async def test_a_link_never_stored_as_http_is_not_followed(client, catalog) -> None:
    delivery_id, _, _ = await sent_delivery(client, "fay@example.com", ["javascript:alert(1)", "//evil.example/"])
    for index in (0, 1):
        response = await client.get(click_url(delivery_id, index))
        assert response.status_code == 404 and "location" not in response.headers
    assert await tracking_events() == []


async def test_an_erased_leads_click_goes_through_without_a_token_and_records_nothing(client, catalog) -> None:
    delivery_id, lead_id, _ = await sent_delivery(client, "gil@example.com", LINKS)
    assert await erase_lead(lead_id)
    await forget_queued_jobs()

    response = await client.get(click_url(delivery_id, 1))
    assert response.status_code == 302 and response.headers["location"] == GUIDE
    pixel = await client.get(open_url(delivery_id))
    assert pixel.status_code == 200 and pixel.content.startswith(b"GIF89a")
    assert await tracking_events() == []
    assert await ledger(delivery_id) == {"opened_at": None, "clicked_at": None}
    assert await queued_rescores() == []


async def test_an_old_delivery_without_its_lead_is_tracked_through_its_enrollment(client, catalog) -> None:
    delivery_id, lead_id, _ = await sent_delivery(client, "hal@example.com", LINKS, with_lead=False)
    response = await client.get(click_url(delivery_id, 0))
    assert unsign("identify", parse_qs(urlsplit(response.headers["location"]).query)["lk"][0]) == lead_id
    assert (await client.get(open_url(delivery_id))).status_code == 200
    assert [(e["type"], e["lead"]) for e in await tracking_events()] == [("email_click", lead_id), ("email_open", lead_id)]


async def test_the_links_in_a_real_letter_lead_through_the_redirect(client, catalog, sink) -> None:
    """Only once letters are tracked (`track` in the letter's composition); skipped before."""
    for step in await Step.objects().where(Step.position == 1):
        step.body_markdown += f"\n\nRead [the guide]({GUIDE}).\n"
        await step.save([Step.body_markdown])
    await capture(client, "ida@example.com")
    await run_worker_burst(sink.url)
    delivery = await Delivery.objects().where(Delivery.step.position == 1).output(load_json=True).first()
    assert delivery is not None and delivery.status == DeliveryStatus.sent
    if not delivery.links:
        pytest.skip("chain letters are not tracked yet: the delivery stored no links")
    lead = await Lead.objects().get(Lead.email == "ida@example.com")
    letter = next(m for m in sink.letters() if str(m["Message-ID"]).startswith(f"<lk.{delivery.id}."))
    html = unescape(next(p for p in letter.walk() if p.get_content_type() == "text/html").get_content())
    assert f'href="{GUIDE}"' not in html, "the letter's links go through the redirect"
    clicks = {read_click_token(urlsplit(url).path.removeprefix("/t/c/")): url
              for url in re.findall(r'href="(http://testserver\.local/t/c/[^"]+)"', html)}
    pixels = [read_open_token(urlsplit(url).path.removeprefix("/t/o/"))
              for url in re.findall(r'src="(http://testserver\.local/t/o/[^"]+)"', html)]
    assert pixels == [delivery.id]

    response = await client.get(clicks[(delivery.id, delivery.links.index(GUIDE))])
    assert response.status_code == 302
    target = urlsplit(response.headers["location"])
    assert target.query.startswith(urlsplit(GUIDE).query + "&lk=") and target.fragment == "part-2"
    assert unsign("identify", parse_qs(target.query)["lk"][0]) == lead.id
    assert (await ledger(delivery.id))["clicked_at"] is not None


# RFC 8058 one-click unsubscribe: a mailbox provider POSTs the List-Unsubscribe URL with
# `List-Unsubscribe=One-Click`, without cookies or a CSRF token; a GET must change nothing.


async def first_letters(client, sink, *emails: str) -> None:
    """Capture the leads and send each its first letter; the second waits an hour.

    Sent by the worker's service rather than a burst worker: a burst worker runs until the
    queue is empty, and the second letter's job would wait there for its hour.
    """
    await Step.update({Step.delay_minutes: 60}).where(Step.position == 2)
    relay = Relay(_parse_smtp_url(sink.url))
    try:
        for email in emails:
            assert (await send_due_step(await capture(client, email), relay)).outcome == Outcome.sent
    finally:
        await relay.close()
    assert sorted(str(m["To"]) for m in sink.letters()) == sorted(emails)


async def test_one_click_unsubscribe_without_cookies_stops_the_chain_at_once(client, catalog, sink) -> None:
    await first_letters(client, sink, "ola@example.com", "pia@example.com")
    letter = next(m for m in sink.letters() if str(m["To"]) == "ola@example.com")
    assert letter["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = str(letter["List-Unsubscribe"]).strip("<>")

    client.cookies.clear()  # the mailbox provider has none of the visitor's cookies
    response = await client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200 and "unsubscribed" in response.text
    assert await Suppression.exists().where(Suppression.email_hash == email_hash("ola@example.com"))
    ola = await Lead.objects().get(Lead.email == "ola@example.com")
    enrollment = await Enrollment.objects().get(Enrollment.lead == ola.id)
    assert (enrollment.status, enrollment.due_at, enrollment.exit_reason) == ("exited", None, "unsubscribe")

    # Both enrollments due again as far as the clock goes: only the lead still subscribed
    # gets the rest of the chain (letter 2 and, with no delay after it, the others).
    await Enrollment.update({Enrollment.due_at: datetime.now(timezone.utc) - timedelta(minutes=1)}, force=True)
    await run_worker_burst(sink.url, sweep_first=True)
    recipients = [str(m["To"]) for m in sink.letters()]
    assert recipients.count("ola@example.com") == 1
    assert recipients.count("pia@example.com") == 5, "the worker did send what was due"
    assert await Delivery.count().where(Delivery.enrollment == enrollment.id) == 1


async def test_one_click_unsubscribe_opened_by_get_only_asks(client, catalog, sink) -> None:
    await first_letters(client, sink, "quin@example.com")
    unsubscribe = str(sink.letters()[0]["List-Unsubscribe"]).strip("<>")
    client.cookies.clear()

    page = await client.get(unsubscribe)
    assert page.status_code == 200
    assert 'method="post"' in page.text and "Yes, unsubscribe me" in page.text
    assert await Suppression.count() == 0
    assert await Event.count().where(Event.type == "unsubscribe") == 0
    assert (await Enrollment.objects().first()).status == "active"


async def test_one_click_unsubscribe_with_a_bad_token_writes_nothing(client, catalog, sink) -> None:
    await first_letters(client, sink, "rey@example.com")
    lead = await Lead.objects().get(Lead.email == "rey@example.com")
    token = urlsplit(str(sink.letters()[0]["List-Unsubscribe"]).strip("<>")).path.removeprefix("/u/")
    client.cookies.clear()

    for bad in (flipped(token, 1), flipped(token, token.rindex(".") + 1), sign("preferences", lead.id)):
        for response in (await client.post(f"/u/{bad}", data={"List-Unsubscribe": "One-Click"}),
                         await client.get(f"/u/{bad}")):
            assert response.status_code == 400, bad
            assert "could not read this link" in response.text
    assert await Suppression.count() == 0
    assert await Event.count().where(Event.type == "unsubscribe") == 0
    assert (await Enrollment.objects().first()).status == "active"


async def test_a_link_to_another_site_does_not_carry_the_leads_token(client, catalog) -> None:
    delivery_id, _, _ = await sent_delivery(client, "dee@example.com", ["https://partner.example.org/offer?x=1"])
    response = await client.get(urlsplit(click_url(delivery_id, 0)).path, follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "https://partner.example.org/offer?x=1", "no token for a third party"
