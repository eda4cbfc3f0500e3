"""Gated ebooks (PDF, signed links, double opt-in) and the lead's rights (preferences, export, erasure)."""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

from pypdf import PdfReader

from content.delivery import email_hash
from content.ebooks import DOWNLOAD_LIMIT, rendered_dir
from content.tables import (
    DownloadLink,
    Ebook,
    Enrollment,
    LandingPage,
    Notice,
    Suppression,
    SuppressionReason,
)
from landing.tables import Consent, Event, Lead, Topic, TopicPreference, Visitor
from landing.tokens import sign, unsign
from tests.integration.conftest import CSRF_INPUT, landing_form, run_worker_burst


async def capture(client, slug: str, email: str, **fields: str):
    token = await landing_form(client, slug)
    response = await client.post(f"/l/{slug}", data={"_csrf_token": token, "email": email, "consent": "on", **fields})
    assert response.status_code == 303
    return unsign("thanks", parse_qs(urlsplit(response.headers["location"]).query)["t"][0])


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


async def test_the_download_is_a_rendered_book_stamped_for_the_lead(client, catalog) -> None:
    state = await capture(client, "seo", "noor@example.com")
    response = await client.get(f"/d/{state['d']}")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"] == 'attachment; filename="seo-ebook.pdf"'
    text = pdf_text(response.content)
    assert "The 30-minute SEO audit" in text and "Contents" in text and "Introduction" in text
    assert text.count("Prepared for noor@example.com") == len(PdfReader(io.BytesIO(response.content)).pages)
    # Rendered once, cached by content hash; the download is an event scoring reads.
    ebook = await Ebook.objects().get(Ebook.slug == "seo-ebook")
    assert ebook.content_hash and (rendered_dir() / f"{ebook.content_hash}.pdf").is_file()
    lead = await Lead.objects().get(Lead.email == "noor@example.com")
    assert await Event.count().where((Event.lead == lead.id) & (Event.type == "download")) == 1
    # Another lead gets the same book (no second rendering) with its own line.
    renderings = sorted(rendered_dir().glob("*.pdf"))
    other = await capture(client, "seo", "omar@example.com")
    second = await client.get(f"/d/{other['d']}")
    assert "Prepared for omar@example.com" in pdf_text(second.content)
    assert sorted(rendered_dir().glob("*.pdf")) == renderings


async def test_an_edited_ebook_is_rendered_again(client, catalog) -> None:
    state = await capture(client, "seo", "pia@example.com")
    await client.get(f"/d/{state['d']}")
    before = (await Ebook.objects().get(Ebook.slug == "seo-ebook")).content_hash
    await Ebook.update({Ebook.body_markdown: "# A new chapter\n\nFresh text."}).where(Ebook.slug == "seo-ebook")
    response = await client.get(f"/d/{state['d']}")
    after = (await Ebook.objects().get(Ebook.slug == "seo-ebook")).content_hash
    assert after != before and "A new chapter" in pdf_text(response.content)


async def test_an_uploaded_pdf_is_served_as_it_is(client, catalog) -> None:
    from content.ebooks import media_dir

    original = b"%PDF-1.4\n% an uploaded file, byte for byte\n%%EOF\n"
    (media_dir() / "pdfs").mkdir(parents=True, exist_ok=True)
    (media_dir() / "pdfs" / "guide.pdf").write_bytes(original)
    await Ebook.update({Ebook.uploaded_pdf: "guide.pdf"}).where(Ebook.slug == "seo-ebook")
    state = await capture(client, "seo", "quin@example.com")
    response = await client.get(f"/d/{state['d']}")
    assert response.status_code == 200 and response.content == original


async def test_tampered_expired_and_used_up_links_are_refused_and_not_counted(client, catalog) -> None:
    state = await capture(client, "seo", "rex@example.com")
    token = state["d"]
    tampered = await client.get(f"/d/{token[:-3]}abc")
    other_purpose = await client.get(f"/d/{sign('unsubscribe', 1)}")
    assert tampered.status_code == 400 and "not valid" in tampered.text
    assert other_purpose.status_code == 400
    for _ in range(DOWNLOAD_LIMIT):
        assert (await client.get(f"/d/{token}")).status_code == 200
    replayed = await client.get(f"/d/{token}")
    assert replayed.status_code == 410 and "its limit" in replayed.text
    link = await DownloadLink.objects().first()
    assert link.downloads == DOWNLOAD_LIMIT
    assert await Event.count().where(Event.type == "download") == DOWNLOAD_LIMIT

    fresh = await capture(client, "seo", "sol@example.com")
    await DownloadLink.update({DownloadLink.expires_at: datetime.now(timezone.utc) - timedelta(seconds=1)}).where(
        DownloadLink.lead == (await Lead.objects().get(Lead.email == "sol@example.com")).id)
    expired = await client.get(f"/d/{fresh['d']}")
    assert expired.status_code == 410 and "expired" in expired.text
    assert await Event.count().where(Event.type == "download") == DOWNLOAD_LIMIT


async def test_the_worker_sends_the_download_letter_once(client, catalog, sink) -> None:
    state = await capture(client, "paid-ads", "tom@example.com", first_name="Tom")
    await run_worker_burst(sink.url, sweep_first=True)
    await run_worker_burst(sink.url, sweep_first=True)  # a second sweep finds nothing to resend
    notices = sink.notices()
    assert len(notices) == 1
    letter = notices[0]
    assert letter["Subject"] == "Your ebook: Stop wasting your ad budget" and letter["To"] == "tom@example.com"
    text = letter.get_body(("plain",)).get_content()
    assert f"http://testserver.local/d/{state['d']}" in text and "Hello Tom," in text
    assert "Your preferences and data: http://testserver.local/p/" in text
    assert letter["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    notice = await Notice.objects().first()
    assert notice.status == "sent" and notice.message_id == letter["Message-ID"]


async def test_double_opt_in_sends_a_confirmation_then_enrolls_on_confirm(client, catalog, sink) -> None:
    state = await capture(client, "analytics", "uli@example.com")
    assert state["c"] is True and state.get("d") is None
    thanks = await client.get(f"/l/analytics/thanks?t={sign('thanks', state)}")
    assert "please confirm" in thanks.text and "/d/" not in thanks.text
    lead = await Lead.objects().get(Lead.email == "uli@example.com")
    assert not lead.confirmed and await Enrollment.count() == 0, "no chain before the address is confirmed"

    await run_worker_burst(sink.url, sweep_first=True)
    [letter] = sink.notices()
    assert letter["Subject"] == "Please confirm: Analytics that answer questions"
    link = re.search(r"http://testserver\.local(/c/\S+)", letter.get_body(("plain",)).get_content()).group(1)
    # A GET (a link scanner) only shows the button.
    page = await client.get(link)
    assert page.status_code == 200 and "Confirm and get the ebook" in page.text
    assert not (await Lead.objects().get(Lead.id == lead.id)).confirmed
    csrf = CSRF_INPUT.search(page.text).group(1)
    confirmed = await client.post(link, data={"_csrf_token": csrf})
    assert confirmed.status_code == 200 and "Thank you for confirming" in confirmed.text
    download = re.search(r'href="(/d/[^"]+)"', confirmed.text).group(1)
    assert (await client.get(download)).content.startswith(b"%PDF-")
    assert (await Lead.objects().get(Lead.id == lead.id)).confirmed
    assert await Enrollment.count().where(Enrollment.lead == lead.id) == 1
    # Replayed: no second enrollment or event, a fresh download link.
    again = await client.post(link, data={"_csrf_token": csrf})
    assert again.status_code == 200 and "already confirmed" in again.text
    assert await Enrollment.count() == 1
    assert await Event.count().where(Event.type == "confirmed") == 1


async def test_tampered_and_expired_confirmations_are_refused(client, catalog) -> None:
    state = await capture(client, "analytics", "vel@example.com")
    page = await LandingPage.objects().get(LandingPage.slug == "analytics")
    token = sign("confirm", {"l": state["l"], "p": page.id})
    csrf = CSRF_INPUT.search((await client.get(f"/c/{token}")).text).group(1)
    tampered = await client.post(f"/c/{token[:-3]}xyz", data={"_csrf_token": csrf})
    assert tampered.status_code == 400 and "not valid" in tampered.text
    from itsdangerous import TimestampSigner, URLSafeTimedSerializer

    from server.settings import get_settings

    class FourDaysAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(datetime.now(timezone.utc).timestamp()) - 4 * 86400

    old = URLSafeTimedSerializer(get_settings().secret_key, salt="leadkiln:confirm", signer=FourDaysAgo).dumps(
        {"l": state["l"], "p": page.id})
    expired = await client.post(f"/c/{old}", data={"_csrf_token": csrf})
    assert expired.status_code == 400 and "expired" in expired.text
    assert not (await Lead.objects().get(Lead.id == state["l"])).confirmed and await Enrollment.count() == 0


async def test_confirming_lifts_an_earlier_unsubscribe_but_not_a_bounce(client, catalog) -> None:
    state = await capture(client, "analytics", "wyn@example.com")
    await Suppression.insert(Suppression(email_hash=email_hash("wyn@example.com"), reason=SuppressionReason.unsubscribe))
    page = await LandingPage.objects().get(LandingPage.slug == "analytics")
    token = sign("confirm", {"l": state["l"], "p": page.id})
    csrf = CSRF_INPUT.search((await client.get(f"/c/{token}")).text).group(1)
    await client.post(f"/c/{token}", data={"_csrf_token": csrf})
    assert await Suppression.count() == 0


async def test_preferences_stop_one_topic_and_keep_the_others(client, catalog) -> None:
    await capture(client, "seo", "xia@example.com")
    await capture(client, "paid-ads", "xia@example.com")
    lead = await Lead.objects().get(Lead.email == "xia@example.com")
    token = sign("preferences", lead.id)
    page = await client.get(f"/p/{token}")
    assert page.status_code == 200 and "xia@example.com" in page.text
    seo = await Topic.objects().get(Topic.slug == "seo")
    others = [t["id"] for t in await Topic.select(Topic.id).where(Topic.id != seo.id)]
    csrf = CSRF_INPUT.search(page.text).group(1)
    response = await client.post(f"/p/{token}", data={"_csrf_token": csrf, "action": "save",
                                                     **{f"topic-{t}": "on" for t in others}})
    assert response.status_code == 303 and response.headers["location"].endswith("saved=topics")
    enrollments = {e["chain.topic"]: e["status"] for e in await Enrollment.select(Enrollment.chain.topic, Enrollment.status)}
    assert enrollments[seo.id] == "exited" and "active" in enrollments.values()
    assert await TopicPreference.count().where((TopicPreference.lead == lead.id) & (TopicPreference.subscribed == False)) == 1  # noqa: E712
    # A later capture on the topic it left adds no enrollment there.
    await Enrollment.delete().where(Enrollment.lead == lead.id)
    await capture(client, "seo", "xia@example.com")
    assert await Enrollment.count() == 0


async def test_unsubscribe_from_everything_on_the_preference_page(client, catalog) -> None:
    await capture(client, "seo", "yan@example.com")
    lead = await Lead.objects().get(Lead.email == "yan@example.com")
    token = sign("preferences", lead.id)
    csrf = CSRF_INPUT.search((await client.get(f"/p/{token}")).text).group(1)
    await client.post(f"/p/{token}", data={"_csrf_token": csrf, "action": "unsubscribe"})
    assert await Suppression.exists().where(Suppression.email_hash == email_hash("yan@example.com"))
    assert (await Enrollment.objects().first()).status == "exited"
    assert "You get no letters from us" in (await client.get(f"/p/{token}")).text


async def test_export_comes_by_letter_and_holds_the_leads_data(client, catalog, sink) -> None:
    await capture(client, "seo", "zoe@example.com", first_name="Zoe", company="Zenith")
    lead = await Lead.objects().get(Lead.email == "zoe@example.com")
    token = sign("preferences", lead.id)
    csrf = CSRF_INPUT.search((await client.get(f"/p/{token}")).text).group(1)
    asked = await client.post(f"/p/{token}", data={"_csrf_token": csrf, "action": "export"})
    assert asked.status_code == 303 and asked.headers["location"].endswith("saved=export")
    await run_worker_burst(sink.url, sweep_first=True)
    letter = [m for m in sink.notices() if m["Subject"] == "Your data, as a file"][0]
    link = re.search(r"http://testserver\.local(/r/\S+)", letter.get_body(("plain",)).get_content()).group(1)
    page = await client.get(link)
    assert "Download my data" in page.text
    exported = await client.post(link, data={"_csrf_token": CSRF_INPUT.search(page.text).group(1)})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/json")
    data = exported.json()
    assert data["lead"]["email"] == "zoe@example.com" and data["lead"]["company"] == "Zenith"
    assert data["consents"][0]["ip"] == "127.0.0.1" and data["consents"][0]["text"]
    assert {e["type"] for e in data["events"]} >= {"page_view", "form_submit"}
    assert data["visitors"] and data["enrollments"]
    assert any(letter["subject"] == "Your ebook: The 30-minute SEO audit" for letter in data["letters"])


async def test_erasure_removes_personal_data_keeps_counts_and_blocks_reimport(client, catalog, tmp_path) -> None:
    await capture(client, "seo", "ada@example.com", first_name="Ada", company="Analytical")
    lead = await Lead.objects().get(Lead.email == "ada@example.com")
    events_before = await Event.count().where(Event.lead == lead.id)
    token = sign("rights", {"l": lead.id, "a": "erase"})
    page = await client.get(f"/r/{token}")
    assert "Erase my data" in page.text
    erased = await client.post(f"/r/{token}", data={"_csrf_token": CSRF_INPUT.search(page.text).group(1)})
    assert erased.status_code == 200 and "erased" in erased.text
    row = await Lead.objects().output(load_json=True).get(Lead.id == lead.id)
    assert row.email is None and row.first_name == "" and row.company == "" and row.erased_at is not None
    assert row.first_touch == {} and row.last_touch == {}
    assert await Visitor.count() == 0 and await DownloadLink.count() == 0
    consent = await Consent.objects().get(Consent.lead == lead.id)
    assert consent.ip == "" and consent.user_agent == "" and consent.version == "v1"
    assert await Event.count().where(Event.lead == lead.id) == events_before + 1, "counts kept (and the erasure noted)"
    assert (await Enrollment.objects().first()).status == "exited"
    assert await Suppression.exists().where(
        (Suppression.email_hash == email_hash("ada@example.com")) & (Suppression.reason == SuppressionReason.erased))
    # Replayed: nothing left to erase. Its download, preference and export links are dead.
    assert (await client.post(f"/r/{token}", data={"_csrf_token": CSRF_INPUT.search(page.text).group(1)})).status_code == 410
    assert (await client.get(f"/p/{sign('preferences', lead.id)}")).status_code == 410

    # A CRM export still holding the address does not bring it back.
    from scoring.importer import ImportOptions
    from scoring.service import import_leads

    csv = tmp_path / "crm.csv"
    csv.write_text("Email,Status\nada@example.com,won\nbea@example.com,lost\n")
    report = await import_leads(ImportOptions(path=csv, outcome="Status", positive="won", email_column="Email"))
    assert report.created == 1 and any("erased on request" in s for s in report.skipped)
    assert not await Lead.exists().where(Lead.email == "ada@example.com")


async def test_a_name_written_as_markdown_stays_words_in_the_letter(client, catalog, sink) -> None:
    await capture(client, "seo", "quinn@example.com", first_name="[Verify](https://evil.example/login)")
    await run_worker_burst(sink.url, sweep_first=True)
    [letter] = sink.notices()
    html = letter.get_body(("html",)).get_content()
    assert "evil.example" in html and 'href="https://evil.example' not in html


async def test_erasure_after_an_unsubscribe_still_keeps_the_address_out_of_imports(client, catalog, tmp_path) -> None:
    from landing.rights import erase_lead
    from scoring.importer import ImportOptions
    from scoring.service import import_leads

    await capture(client, "seo", "una@example.com")
    lead = await Lead.objects().get(Lead.email == "una@example.com")
    await Suppression.insert(Suppression(email_hash=email_hash("una@example.com"), reason=SuppressionReason.unsubscribe))
    assert await erase_lead(lead.id)
    suppression = await Suppression.objects().get(Suppression.email_hash == email_hash("una@example.com"))
    assert suppression.reason == "erased"
    csv = tmp_path / "crm.csv"
    csv.write_text("Email,Status\nuna@example.com,won\n")
    report = await import_leads(ImportOptions(path=csv, outcome="Status", positive="won", email_column="Email"))
    assert report.created == 0 and not await Lead.exists().where(Lead.email == "una@example.com")
