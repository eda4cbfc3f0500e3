"""Ebook rendering pieces: the contents, the content hash, the per-lead stamp."""

from __future__ import annotations

import io

from pypdf import PdfReader

from content.ebooks import _pdf_string, _with_contents, book_html, content_hash, filename_for, render_pdf, stamp
from content.tables import Ebook


def ebook(**values) -> Ebook:
    return Ebook(**({"title": "T", "slug": "seo-guide", "subtitle": "", "author": "", "body_markdown": "# One\n\ntext",
                     "cover_image": None} | values))


def test_headings_get_anchors_and_a_contents_entry() -> None:
    html, entries = _with_contents("<h1>One <em>big</em></h1><p>x</p><h2>Sub</h2><h3>not listed</h3>")
    assert entries == [(1, "s1", "One big"), (2, "s2", "Sub")]
    assert '<h1 id="s1">' in html and '<h2 id="s2">' in html


def test_the_hash_changes_with_the_text_and_not_with_unrelated_fields() -> None:
    base = content_hash(ebook(), "SEO")
    assert content_hash(ebook(body_markdown="# Two"), "SEO") != base
    assert content_hash(ebook(), "Paid ads") != base
    assert content_hash(ebook(slug="other"), "SEO") == base


def test_pdf_strings_escape_what_would_end_them() -> None:
    assert _pdf_string("a(b)c\\d") == b"(a\\(b\\)c\\\\d)"


def test_the_book_escapes_its_title_and_the_stamp_is_on_every_page() -> None:
    document = book_html(ebook(title="<script>x</script>", body_markdown="# A\n\ntext\n\n# B\n\nmore"), "SEO")
    assert "<script>x" not in document and "&lt;script&gt;" in document
    stamped = stamp(render_pdf(document), "Prepared for a(b)@example.com")
    pages = PdfReader(io.BytesIO(stamped)).pages
    assert len(pages) >= 3
    assert all("Prepared for a(b)@example.com" in page.extract_text() for page in pages)


def test_a_body_cannot_load_files_or_the_network() -> None:
    pdf = render_pdf('<img src="file:///etc/passwd"><link rel="stylesheet" href="http://example.com/x.css"><p>ok</p>')
    assert pdf.startswith(b"%PDF-")
    assert "root:" not in "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def test_download_file_names_are_safe() -> None:
    assert filename_for(ebook(slug="SEO Guide/../x")) == "seo-guide-x.pdf"
