"""Ebooks as PDFs: rendered once per content hash with WeasyPrint, stamped per lead, behind signed links."""

from __future__ import annotations

import asyncio
import hashlib
import html
import io
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from content.tables import DownloadLink, Ebook
from landing.tables import Event, Lead, Topic
from landing.tokens import TokenError, sign, unsign
from server.settings import get_settings

log = logging.getLogger("leadkiln.ebooks")

RENDER_VERSION = "1"
"""Part of the content hash: a change to the book's layout re-renders every ebook."""
LINK_LIFETIME = timedelta(days=7)
DOWNLOAD_LIMIT = 10
"""Downloads one link allows: enough for a person's devices, not for passing a link around."""

# Staff write ebooks, so raw HTML is allowed here (unlike letters); what it may load is
# limited by `_fetch_local` below.
_markdown = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": True}).enable("table")


class EbookUnavailable(Exception):
    """The ebook has no body and no uploaded PDF, or its rendering failed; the message says why."""


class LinkRefused(Exception):
    """A download link that cannot be used: tampered, expired, used up, or its lead erased."""


def media_dir() -> Path:
    """Where uploaded files are kept, under DATA_DIR: `covers/ebooks/` and `covers/pages/`
    (public images) and `pdfs/` (uploaded ebooks, only ever sent through a download link)."""
    return get_settings().data_dir / "media"


def rendered_dir() -> Path:
    return get_settings().data_dir / "ebooks"


def content_hash(ebook: Ebook, topic_name: str) -> str:
    """Everything that changes the rendered book; equal hashes share one PDF."""
    parts = [RENDER_VERSION, ebook.title, ebook.subtitle, ebook.author, topic_name, ebook.body_markdown,
             ebook.cover_image or ""]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


_HEADING = re.compile(r"<h([12])>(.*?)</h\1>", re.S)


def _with_contents(body_html: str) -> tuple[str, list[tuple[int, str, str]]]:
    """Give every h1/h2 an id and return the table of contents entries (level, id, text)."""
    entries: list[tuple[int, str, str]] = []

    def anchor(match: re.Match[str]) -> str:
        level, inner = int(match.group(1)), match.group(2)
        ident = f"s{len(entries) + 1}"
        entries.append((level, ident, re.sub(r"<[^>]+>", "", inner)))
        return f'<h{level} id="{ident}">{inner}</h{level}>'

    return _HEADING.sub(anchor, body_html), entries


BOOK_CSS = """
@page { size: A4; margin: 22mm 20mm 24mm; @bottom-center { content: counter(page); font-size: 9pt; color: #666; } }
@page :first { @bottom-center { content: none; } }
body { font-family: "DejaVu Serif", Georgia, serif; font-size: 11pt; line-height: 1.5; color: #1b1f24; }
h1, h2, h3 { font-family: "DejaVu Sans", Helvetica, sans-serif; line-height: 1.25; }
h1 { break-before: page; font-size: 20pt; }
.cover { break-after: page; height: 240mm; display: flex; flex-direction: column; justify-content: center; }
.cover .topic { text-transform: uppercase; letter-spacing: .08em; color: #b3400a; font: 600 10pt "DejaVu Sans", sans-serif; }
.cover h1 { break-before: avoid; font-size: 30pt; margin: 4mm 0; }
.cover .subtitle { font-size: 14pt; color: #4a5360; }
.cover .author { margin-top: 12mm; font-size: 11pt; }
.cover img { max-width: 100%; max-height: 110mm; object-fit: contain; margin-bottom: 10mm; }
.contents { break-after: page; }
.contents h2 { font-size: 16pt; }
.contents ol { list-style: none; padding: 0; }
.contents li.l2 { padding-left: 6mm; }
.contents a { color: inherit; text-decoration: none; }
.contents a::after { content: leader('.') target-counter(attr(href), page); }
img { max-width: 100%; }
table { border-collapse: collapse; } td, th { border: 1px solid #bbb; padding: 2pt 4pt; }
pre { white-space: pre-wrap; font-size: 9pt; }
"""


def book_html(ebook: Ebook, topic_name: str) -> str:
    """The whole book as one HTML document: cover, contents, body."""
    body, entries = _with_contents(_markdown.render(ebook.body_markdown))
    cover_image = ""
    if ebook.cover_image:
        cover_image = f'<img src="media:covers/ebooks/{html.escape(ebook.cover_image, quote=True)}" alt="">'
    contents = ""
    if entries:
        items = "".join(
            f'<li class="l{level}"><a href="#{ident}">{html.escape(text)}</a></li>' for level, ident, text in entries
        )
        contents = f'<section class="contents"><h2>Contents</h2><ol>{items}</ol></section>'
    esc = html.escape
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(ebook.title)}</title>"
        f"<meta name='author' content='{esc(ebook.author, quote=True)}'><style>{BOOK_CSS}</style></head><body>"
        f"<section class='cover'>{cover_image}<p class='topic'>{esc(topic_name)}</p><h1>{esc(ebook.title)}</h1>"
        f"<p class='subtitle'>{esc(ebook.subtitle)}</p><p class='author'>{esc(ebook.author)}</p></section>"
        f"{contents}{body}</body></html>"
    )


def _local_fetcher():
    """WeasyPrint's URL fetcher, limited to uploaded media and inline data: never the
    network or other files (an ebook body is HTML a staff member wrote)."""
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class LocalFetcher(URLFetcher):
        def fetch(self, url: str, headers: Any = None) -> URLFetcherResponse:
            if url.startswith("data:"):
                return super().fetch(url, headers)
            if url.startswith("media:"):
                root = media_dir().resolve()
                path = (root / url[len("media:"):]).resolve()
                if path.is_relative_to(root) and path.is_file():
                    return URLFetcherResponse(url, path.read_bytes())
            raise ValueError(f"an ebook may only use uploaded media, not {url[:80]!r}")

    return LocalFetcher(allowed_protocols=("data", "media"))


def render_pdf(document: str) -> bytes:
    """HTML to PDF with WeasyPrint (about 50 ms a page): call it in a thread."""
    from weasyprint import HTML  # imported here: it is slow to import and only workers need it

    return HTML(string=document, url_fetcher=_local_fetcher()).write_pdf()


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


async def rendered_ebook(ebook_id: int) -> Path:
    """The ebook's PDF: the uploaded one, or the cached rendering of its current content
    (rendered now if the content changed since). Raises EbookUnavailable."""
    ebook = await Ebook.objects().where(Ebook.id == ebook_id).first()
    if ebook is None:
        raise EbookUnavailable("this ebook no longer exists")
    if ebook.uploaded_pdf:
        root = (media_dir() / "pdfs").resolve()
        path = (root / ebook.uploaded_pdf).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise EbookUnavailable(f"the uploaded PDF {ebook.uploaded_pdf!r} is missing")
        return path
    if not ebook.body_markdown.strip():
        raise EbookUnavailable("this ebook has no text and no uploaded PDF yet")
    topic = await Topic.select(Topic.name).where(Topic.id == ebook.topic).first()
    digest = content_hash(ebook, topic["name"] if topic else "")
    path = rendered_dir() / f"{digest}.pdf"
    if ebook.content_hash == digest and ebook.render_error and not path.is_file():
        # This very text failed before: it fails again until someone edits it.
        raise EbookUnavailable(f"the ebook could not be rendered: {ebook.render_error}")
    if path.is_file():
        if ebook.content_hash != digest:
            await Ebook.update({Ebook.content_hash: digest, Ebook.rendered_path: str(path), Ebook.render_error: ""}).where(
                Ebook.id == ebook.id
            )
        return path
    return await _render(ebook, topic["name"] if topic else "", digest, path)


async def _render(ebook: Ebook, topic_name: str, digest: str, path: Path) -> Path:
    """Render the book off the event loop and record the result on its row: the PDF (written
    atomically, so a download never reads half a file) or the error, kept until an edit."""
    try:
        pdf = await asyncio.to_thread(render_pdf, book_html(ebook, topic_name))
    except Exception as exc:  # noqa: BLE001 - any rendering failure is shown to the content team
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        await Ebook.update({Ebook.render_error: reason, Ebook.content_hash: digest}).where(Ebook.id == ebook.id)
        log.error("ebook %s did not render: %s", ebook.id, reason)
        raise EbookUnavailable(f"the ebook could not be rendered: {reason}") from None
    await asyncio.to_thread(_write_atomically, path, pdf)
    await Ebook.update(
        {Ebook.content_hash: digest, Ebook.rendered_path: str(path), Ebook.render_error: "",
         Ebook.rendered_at: datetime.now(timezone.utc)}
    ).where(Ebook.id == ebook.id)
    return path


async def render_again(ebook_id: int) -> Path:
    """Render the ebook's current text now, whatever is cached: a failure kept until an edit
    is tried again, a cached PDF is replaced (after new fonts or a WeasyPrint upgrade). The
    cached PDF stays in place until the new one is written, so downloads keep working; if
    the rendering fails, the error is recorded and raised. Raises EbookUnavailable."""
    ebook = await Ebook.objects().where(Ebook.id == ebook_id).first()
    if ebook is None:
        raise EbookUnavailable("this ebook no longer exists")
    if ebook.uploaded_pdf:
        raise EbookUnavailable("this ebook is an uploaded PDF, sent as it is: there is nothing to render")
    if not ebook.body_markdown.strip():
        raise EbookUnavailable("this ebook has no text and no uploaded PDF yet")
    topic = await Topic.select(Topic.name).where(Topic.id == ebook.topic).first()
    topic_name = topic["name"] if topic else ""
    digest = content_hash(ebook, topic_name)
    return await _render(ebook, topic_name, digest, rendered_dir() / f"{digest}.pdf")


@dataclass(frozen=True)
class FailingBlock:
    """The part of an ebook's body that makes its rendering fail: lines `first`..`last` (from 1)."""

    first: int
    last: int
    text: str


def failing_block(ebook: Ebook, topic_name: str) -> FailingBlock | None:
    """After a failed rendering, the first Markdown block of the body the failure comes with,
    found by rendering ever shorter beginnings of the body (about log2(blocks) renderings).
    None when the book fails without any of its text, or renders now: then the fault is not
    in the body (fonts, WeasyPrint) or has passed. Slow and blocking: call it in a thread."""
    lines = ebook.body_markdown.splitlines(keepends=True)
    blocks = sorted({(t.map[0], t.map[1]) for t in _markdown.parse(ebook.body_markdown) if t.level == 0 and t.map})
    if not blocks:
        return None

    def fails(count: int) -> bool:
        end = blocks[count][0] if count < len(blocks) else len(lines)
        shorter = Ebook(title=ebook.title, subtitle=ebook.subtitle, author=ebook.author,
                        cover_image=ebook.cover_image, body_markdown="".join(lines[:end]))
        try:
            render_pdf(book_html(shorter, topic_name))
        except Exception:  # noqa: BLE001 - any failure counts, as in _render
            return True
        return False

    if fails(0) or not fails(len(blocks)):
        return None
    ok, failing = 0, len(blocks)  # the first `ok` blocks render; the first `failing` do not
    while failing - ok > 1:
        middle = (ok + failing) // 2
        if fails(middle):
            failing = middle
        else:
            ok = middle
    first, last = blocks[failing - 1]
    text = "".join(lines[first:last]).strip()
    return FailingBlock(first + 1, max(last, first + 1), text if len(text) <= 600 else text[:600] + "…")


def _pdf_string(text: str) -> bytes:
    """A PDF literal string in WinAnsi: backslash and parentheses escaped, others replaced."""
    data = text.encode("cp1252", errors="replace")
    return b"(" + data.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def stamp(pdf: bytes, line: str) -> bytes:
    """Write a small grey line at the foot of every page, without re-rendering the book."""
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import ArrayObject, DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"),
        NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"),
        NameObject("/Encoding"): NameObject("/WinAnsiEncoding"),
    }))
    text = _pdf_string(line)
    for page in writer.pages:
        box = page.mediabox
        x, y = float(box.left) + 28, float(box.bottom) + 14
        before = DecodedStreamObject()
        before.set_data(b"q\n")
        after = DecodedStreamObject()
        after.set_data(b"Q\nq BT /LkStamp 7 Tf 0.45 g 1 0 0 1 %.1f %.1f Tm %s Tj ET Q\n" % (x, y, text))
        contents = page.get("/Contents")
        streams = ArrayObject([writer._add_object(before)])
        if contents is not None:
            existing = contents.get_object()
            streams.extend(existing if isinstance(existing, ArrayObject) else [contents])
        streams.append(writer._add_object(after))
        page[NameObject("/Contents")] = streams
        resources = page.get("/Resources")
        resources = resources.get_object() if resources is not None else DictionaryObject()
        fonts = resources.get("/Font")
        fonts = fonts.get_object() if fonts is not None else DictionaryObject()
        fonts[NameObject("/LkStamp")] = font
        resources[NameObject("/Font")] = fonts
        page[NameObject("/Resources")] = resources
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def prepared_for(email: str) -> str:
    return f"Prepared for {email}"


@dataclass(frozen=True)
class EbookFile:
    """A PDF ready to send to one lead."""

    data: bytes
    filename: str


def filename_for(ebook: Ebook) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", ebook.slug.lower()).strip("-") or "ebook"
    return f"{slug}.pdf"


async def ebook_for_lead(ebook_id: int, email: str) -> EbookFile:
    """The ebook's PDF as this lead gets it: uploaded PDFs as they are, rendered ones
    stamped with the lead's address so a leaked copy can be traced."""
    path = await rendered_ebook(ebook_id)
    ebook = await Ebook.objects().get(Ebook.id == ebook_id)
    data = await asyncio.to_thread(path.read_bytes)
    if not ebook.uploaded_pdf:
        data = await asyncio.to_thread(stamp, data, prepared_for(email))
    return EbookFile(data, filename_for(ebook))


async def new_download_link(lead_id: int, ebook_id: int, now: datetime | None = None) -> str:
    """Make a download link for one lead and ebook (call inside the caller's transaction);
    returns its signed token."""
    now = now or datetime.now(timezone.utc)
    nonce = secrets.token_hex(12)
    await DownloadLink.raw(
        "INSERT INTO download_link (nonce, lead, ebook, created_at, expires_at, downloads, last_download_at) "
        "VALUES ({}, {}, {}, {}, {}, 0, NULL)", nonce, lead_id, ebook_id, now, now + LINK_LIFETIME)
    return sign("download", nonce)


@dataclass(frozen=True)
class Download:
    """A counted download: what to send, and the lead to rescore."""

    file: EbookFile
    lead_id: int


async def use_download_link(token: str, now: datetime | None = None) -> Download:
    """Check a link, produce the lead's PDF, then count the download and record its event.

    Raises LinkRefused (with a message for the visitor) or EbookUnavailable.
    """
    now = now or datetime.now(timezone.utc)
    try:
        nonce = unsign("download", token, max_age_seconds=int(LINK_LIFETIME.total_seconds()) + 3600)
    except TokenError as exc:
        raise LinkRefused(f"This download link {str(exc).removeprefix('this link ')}.") from None
    link = await DownloadLink.objects().where(DownloadLink.nonce == str(nonce)).first()
    if link is None:
        raise LinkRefused("This download link is no longer valid.")
    if link.expires_at <= now:
        raise LinkRefused("This download link has expired.")
    if link.downloads >= DOWNLOAD_LIMIT:
        raise LinkRefused(f"This download link has been used {link.downloads} times, its limit.")
    lead = await Lead.select(Lead.email, Lead.erased_at).where(Lead.id == link.lead).first()
    if lead is None or lead["erased_at"] is not None or not lead["email"]:
        raise LinkRefused("This download link is no longer valid.")
    # The file first: a rendering that fails must not use up a download.
    file = await ebook_for_lead(link.ebook, lead["email"])
    ebook = await Ebook.select(Ebook.slug, Ebook.topic).where(Ebook.id == link.ebook).first()
    async with DownloadLink._meta.db.transaction():
        counted = await DownloadLink.update(
            {DownloadLink.downloads: DownloadLink.downloads + 1, DownloadLink.last_download_at: now}
        ).where((DownloadLink.id == link.id) & (DownloadLink.downloads < DOWNLOAD_LIMIT)).returning(DownloadLink.id)
        if not counted:
            raise LinkRefused(f"This download link has been used {DOWNLOAD_LIMIT} times, its limit.")
        await Event.insert(
            Event(type="download", lead=link.lead, topic=ebook["topic"],
                  properties={"ebook": ebook["slug"], "link": link.nonce[:8]}, occurred_at=now)
        )
    return Download(file, link.lead)
