"""The desk's ebooks page and PDF preview: what the content team sees of what they wrote."""

from __future__ import annotations

import html
import io
import re

import pytest
from pypdf import PdfReader, PdfWriter

from content.dashboard import CHAIN_FORM
from content.ebooks import EbookUnavailable, content_hash, media_dir, rendered_dir, rendered_ebook
from content.lifecycle import pause_chain
from content.tables import Chain, Ebook, LandingPage
from landing.tables import Topic
from tests.staff import desk_login, make_staff

HTML = {"accept": "text/html"}
STAMP = "Preview — not for distribution"
SCRIPT = "<script>alert(1)</script>"
# WeasyPrint divides by this size and fails (ZeroDivisionError): a real body that does not render.
BROKEN_LINE = '<p style="font-size:1e30px">Far too big</p>'


def broken_body(marker: str) -> str:
    """A body whose fifth line breaks the rendering; `marker` makes the text (and its hash) unique."""
    return f"# Introduction\n\nFine text, {marker}.\n\n{BROKEN_LINE}\n\n## Later\n\nMore words.\n"


@pytest.fixture(autouse=True)
def leave_no_renders():
    """Remove the PDFs a test here rendered: the PDF cache outlives a test (DATA_DIR is the
    session's), and later files expect the demo ebooks unrendered (test_desk_scoring's render form)."""
    before = set(rendered_dir().glob("*.pdf"))
    yield
    for path in set(rendered_dir().glob("*.pdf")) - before:
        path.unlink(missing_ok=True)


@pytest.fixture
async def content_client(client):
    """The test client, logged in as a content user."""
    await make_staff("carla", "content")
    await desk_login(client, "carla")
    return client


async def _ebook(slug: str) -> Ebook:
    return await Ebook.objects().get(Ebook.slug == slug)


def _row(page: str, ebook_id: int) -> str:
    match = re.search(rf'<tr data-ebook="{ebook_id}">(.*?)</tr>', page, re.S)
    assert match, f"no row for ebook {ebook_id}"
    return match.group(1)


def _state(row: str) -> str:
    match = re.search(r'data-state="(\w+)"', row)
    assert match, row
    return match.group(1)


def pdf_text(data: bytes) -> tuple[str, int]:
    pages = PdfReader(io.BytesIO(data)).pages
    return "\n".join(page.extract_text() for page in pages), len(pages)


async def _list(client) -> str:
    response = await client.get("/desk/ebooks", headers=HTML)
    assert response.status_code == 200, response.text[:500]
    return response.text


# --- the list -----------------------------------------------------------------------------------


async def test_the_list_shows_each_ebook_with_its_pages_chain_and_render_state(content_client, catalog) -> None:
    seo, ads, analytics = [await _ebook(f"{slug}-ebook") for slug in ("seo", "paid-ads", "analytics")]
    await LandingPage(slug="seo-draft", title="Draft page", ebook=seo.id, published=False).save()
    # seo: rendered and current; paid ads: edited since its rendering; analytics: its text fails.
    await rendered_ebook(seo.id)
    await rendered_ebook(ads.id)
    await Ebook.update({Ebook.body_markdown: "# Rewritten for the list test\n\nNew words."}).where(Ebook.id == ads.id)
    await Ebook.update({Ebook.body_markdown: broken_body("list test")}).where(Ebook.id == analytics.id)
    with pytest.raises(EbookUnavailable, match="ZeroDivisionError"):
        await rendered_ebook(analytics.id)

    page = await _list(content_client)
    assert '<a href="/desk/ebooks" aria-current="page">Ebooks</a>' in page, "the menu leads here"
    for ebook, slug in ((seo, "seo"), (ads, "paid-ads"), (analytics, "analytics")):
        row = _row(page, ebook.id)
        assert html.escape(ebook.title) in row
        assert f'<a href="/l/{slug}">/l/{slug}</a>' in row
        assert f'href="/admin/#/ebook/{ebook.id}/"' in row and f'href="/desk/ebooks/{ebook.id}/preview.pdf"' in row
        assert "live chain" in row and "no live chain" not in row
    seo_row = _row(page, seo.id)
    assert '<a href="/l/seo-draft">/l/seo-draft</a> <span class="badge warn">not published</span>' in seo_row
    assert "/l/seo-draft" not in _row(page, ads.id)
    assert _state(seo_row) == "cached" and "Rendered 20" in seo_row
    assert _state(_row(page, ads.id)) == "stale" and "Edited since" in _row(page, ads.id)
    failed = _row(page, analytics.id)
    assert _state(failed) == "failed" and "ZeroDivisionError: float division by zero" in failed
    assert "Markdown cheat sheet" in page and "Contents" in page
    assert '{{ lead.first_name | default("there") }}' in html.unescape(page), "letter personalisation is listed"


async def test_an_ebook_whose_topic_chain_is_paused_shows_no_live_chain(content_client, catalog) -> None:
    seo, ads = await _ebook("seo-ebook"), await _ebook("paid-ads-ebook")
    chain = await Chain.objects().get(Chain.topic == seo.topic)
    before = _row(await _list(content_client), seo.id)
    assert '<span class="badge ok">live chain</span>' in before and f'href="/desk/chains/{chain.id}"' in before

    await pause_chain(chain.id)
    page = await _list(content_client)
    row = _row(page, seo.id)
    assert '<span class="badge err">no live chain (paused)</span>' in row
    assert f'href="{CHAIN_FORM}"' in row
    assert '<span class="badge ok">live chain</span>' in _row(page, ads.id), "other topics keep theirs"


async def test_a_hostile_title_and_render_error_stay_text(content_client, catalog) -> None:
    seo = await _ebook("seo-ebook")
    await Ebook.update({Ebook.title: SCRIPT}).where(Ebook.id == seo.id)
    await Topic.update({Topic.name: f"SEO {SCRIPT}"}).where(Topic.id == seo.topic)
    # A rendering failure recorded for the current text, its message carrying markup.
    edited = await _ebook("seo-ebook")
    digest = content_hash(edited, f"SEO {SCRIPT}")
    await Ebook.update({Ebook.render_error: f"ValueError: {SCRIPT}", Ebook.content_hash: digest}).where(Ebook.id == seo.id)

    page = await _list(content_client)
    assert SCRIPT not in page
    assert html.escape(SCRIPT) in _row(page, seo.id)
    failed = await content_client.get(f"/desk/ebooks/{seo.id}/preview.pdf", headers=HTML)
    assert failed.status_code == 422
    assert SCRIPT not in failed.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in failed.text


# --- the preview --------------------------------------------------------------------------------


async def test_the_preview_is_the_book_stamped_on_every_page(content_client, catalog) -> None:
    seo = await _ebook("seo-ebook")
    response = await content_client.get(f"/desk/ebooks/{seo.id}/preview.pdf")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")
    assert response.headers["content-disposition"].startswith("inline")
    assert response.headers["cache-control"] == "no-store"
    text, pages = pdf_text(response.content)
    assert "The 30-minute SEO audit" in text and "Contents" in text
    assert text.count(STAMP) == pages > 1
    # The render is the one downloads use: cached on the row under the current content hash.
    rendered = await _ebook("seo-ebook")
    assert rendered.content_hash and (rendered_dir() / f"{rendered.content_hash}.pdf").is_file()


async def test_an_edited_body_shows_in_the_next_preview(content_client, catalog) -> None:
    seo = await _ebook("seo-ebook")
    first, _ = pdf_text((await content_client.get(f"/desk/ebooks/{seo.id}/preview.pdf")).content)
    assert "Introduction" in first
    await Ebook.update({Ebook.body_markdown: "# A chapter written just now\n\nFresh words for the preview test."}).where(
        Ebook.id == seo.id)
    response = await content_client.get(f"/desk/ebooks/{seo.id}/preview.pdf")
    assert response.status_code == 200
    text, _ = pdf_text(response.content)
    assert "A chapter written just now" in text and "Fresh words" in text
    assert "Introduction" not in text, "the stale cached PDF was served"
    assert STAMP in text


async def test_a_body_that_fails_to_render_shows_the_error_and_the_line_to_fix(content_client, catalog) -> None:
    seo = await _ebook("seo-ebook")
    assert (await content_client.get(f"/desk/ebooks/{seo.id}/preview.pdf")).status_code == 200
    good = await _ebook("seo-ebook")
    files = sorted(rendered_dir().glob("*.pdf"))
    body = broken_body("failure test")
    await Ebook.update({Ebook.body_markdown: body}).where(Ebook.id == seo.id)

    response = await content_client.get(f"/desk/ebooks/{seo.id}/preview.pdf", headers=HTML)
    assert response.status_code == 422 and response.headers["content-type"].startswith("text/html")
    page = html.unescape(response.text)
    assert "could not be rendered: ZeroDivisionError: float division by zero" in page
    assert "Line 5 of the body breaks the rendering" in page
    assert BROKEN_LINE in page and "Fine text" not in page.split("Line 5")[1], "only the failing block is blamed"
    assert f'href="/admin/#/ebook/{seo.id}/"' in response.text

    # As content/ebooks.py defines: the failure is recorded for this text, the last good PDF stays.
    after = await _ebook("seo-ebook")
    assert "ZeroDivisionError" in after.render_error and after.content_hash != good.content_hash
    assert after.body_markdown == body
    assert (after.rendered_path, after.rendered_at) == (good.rendered_path, good.rendered_at)
    assert sorted(rendered_dir().glob("*.pdf")) == files and (rendered_dir() / f"{good.content_hash}.pdf").is_file()
    again = await content_client.get(f"/desk/ebooks/{seo.id}/preview.pdf", headers=HTML)
    assert again.status_code == 422 and "Line 5" in again.text


async def test_an_uploaded_pdf_is_previewed_as_it_is_with_the_stamp(content_client, catalog) -> None:
    seo = await _ebook("seo-ebook")
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    writer.add_blank_page(width=595, height=842)
    upload = io.BytesIO()
    writer.write(upload)
    (media_dir() / "pdfs").mkdir(parents=True, exist_ok=True)
    (media_dir() / "pdfs" / "desk-preview.pdf").write_bytes(upload.getvalue())
    (media_dir() / "pdfs" / "not-a-pdf.pdf").write_bytes(b"this is no PDF at all")
    await Ebook.update({Ebook.uploaded_pdf: "desk-preview.pdf"}).where(Ebook.id == seo.id)

    response = await content_client.get(f"/desk/ebooks/{seo.id}/preview.pdf")
    assert response.status_code == 200
    text, pages = pdf_text(response.content)
    assert pages == 2 and text.count(STAMP) == 2
    assert "The 30-minute SEO audit" not in text, "the body is not rendered for an uploaded PDF"
    assert _state(_row(await _list(content_client), seo.id)) == "uploaded"

    await Ebook.update({Ebook.uploaded_pdf: "not-a-pdf.pdf"}).where(Ebook.id == seo.id)
    broken = await content_client.get(f"/desk/ebooks/{seo.id}/preview.pdf", headers=HTML)
    assert broken.status_code == 422 and "cannot be read as a PDF" in broken.text


# --- refusals -----------------------------------------------------------------------------------


async def test_an_unknown_ebook_is_a_404_page(content_client, catalog) -> None:
    for ebook_id in (999999, 2**40):
        response = await content_client.get(f"/desk/ebooks/{ebook_id}/preview.pdf", headers=HTML)
        assert response.status_code == 404 and "No such ebook" in response.text
        assert 'href="/desk/ebooks"' in response.text


async def test_sales_are_refused_and_anonymous_visitors_sent_to_log_in(client, catalog) -> None:
    seo = await _ebook("seo-ebook")
    paths = ["/desk/ebooks", f"/desk/ebooks/{seo.id}/preview.pdf"]
    for path in paths:
        anonymous = await client.get(path, headers=HTML)
        assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/desk/login?next=")
    await make_staff("sam", "sales")
    await desk_login(client, "sam")
    for path in paths:
        refused = await client.get(path, headers=HTML)
        assert refused.status_code == 403 and "Not for your role" in refused.text, path
        assert b"%PDF" not in refused.content
    assert 'href="/desk/ebooks"' not in (await client.get("/desk/hot", headers=HTML)).text, "not in a sales menu"
