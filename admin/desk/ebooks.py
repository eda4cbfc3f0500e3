"""Desk pages for authoring ebooks: every ebook with its pages, its chain and its render state, a
stamped PDF preview of the current text, and what the Markdown of ebooks and letters supports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from litestar import Controller, Request, Response, get
from litestar.params import FromPath
from litestar.response import Template
from litestar.status_codes import HTTP_404_NOT_FOUND, HTTP_422_UNPROCESSABLE_ENTITY

from admin.desk.auth import page_context, requires
from admin.roles import CONTENT
from content.chains import instant
from content.dashboard import CHAIN_FORM, ChainPlan, admin_row, chain_plans, ebook_coverage
from content.ebooks import (
    EbookUnavailable,
    FailingBlock,
    content_hash,
    failing_block,
    filename_for,
    rendered_dir,
    rendered_ebook,
    stamp,
)
from content.tables import Ebook, LandingPage
from landing.tables import Topic

log = logging.getLogger("leadkiln.desk.ebooks")

PREVIEW_LINE = "Preview — not for distribution"
"""Stamped at the foot of every page of a preview, so a forwarded preview is recognised as one."""
RENDER_FORM = "/admin/#/forms/render-an-ebook-again/"
MAX_ID = 2**31 - 1


# ----------------------------------------------------------------------------- what the page shows


@dataclass(frozen=True)
class RenderState:
    """Where an ebook's PDF stands: `kind` is uploaded, empty, cached, stale, failed or unrendered;
    `badge` the badge class (ok, warn, err); `error` the recorded render error, shown as text."""

    kind: str
    badge: str
    label: str
    detail: str
    error: str = ""


def render_state(*, uploaded_pdf: str | None, has_text: bool, digest: str, content_hash: str | None,
                 render_error: str, rendered_at: datetime | None, cached: bool) -> RenderState:
    """The state of one ebook's PDF from its row, the hash of its current text (`digest`) and
    whether a PDF of that text is on disk (`cached`); mirrors what `rendered_ebook` would do."""
    when = f" {instant(rendered_at):%Y-%m-%d %H:%M} UTC" if rendered_at else ""  # type: ignore[union-attr]
    if uploaded_pdf:
        return RenderState("uploaded", "ok", "uploaded PDF", f"{uploaded_pdf} is sent as it is; the body is not used.")
    if not has_text:
        return RenderState("empty", "warn", "no text yet", "Write the body or upload a PDF: its pages have nothing to send.")
    if cached:
        done = f"Rendered{when}" if content_hash == digest and when else "Rendered"
        return RenderState("cached", "ok", "rendered", f"{done}; the current text's PDF is cached.")
    if content_hash == digest and render_error:
        return RenderState("failed", "err", "render failed",
                           "The current text does not render; downloads fail until the text is edited.", render_error)
    if content_hash:
        last = "the last rendering failed" if render_error else f"last rendered{when or ' earlier'}"
        return RenderState("stale", "warn", "stale: edited since",
                           f"Edited since: {last}. The preview, the first download or the worker renders it again.")
    return RenderState("unrendered", "warn", "not rendered yet",
                       "The preview, the first download or the worker renders it.")


@dataclass(frozen=True)
class ChainCover:
    """Whether a live chain takes the leads of an ebook's topic: `badge` ok, warn or err."""

    badge: str
    label: str
    links: tuple[tuple[str, str], ...]


def chain_cover(topic_id: int, plans: Sequence[ChainPlan], now: datetime) -> ChainCover:
    """The topic's own live chain, else a live fallback chain, else a scheduled one, else none."""
    own = [c for c in plans if c.topic_id == topic_id]
    for chain in own:
        if chain.live(now):
            return ChainCover("ok", "live chain", ((chain.name, f"/desk/chains/{chain.id}"),))
    for chain in plans:
        if chain.is_fallback and chain.live(now):
            return ChainCover("ok", "live fallback chain", ((chain.name, f"/desk/chains/{chain.id}"),))
    scheduled = sorted((c for c in plans if (c.topic_id == topic_id or c.is_fallback) and c.scheduled(now)),
                       key=lambda c: instant(c.starts_at))  # type: ignore[arg-type,return-value]
    if scheduled:
        chain = scheduled[0]
        return ChainCover("warn", f"no live chain: starts {instant(chain.starts_at):%Y-%m-%d %H:%M} UTC",  # type: ignore[union-attr]
                          ((chain.name, f"/desk/chains/{chain.id}"),))
    if own:
        return ChainCover("err", f"no live chain ({own[0].status})",
                          ((own[0].name, f"/desk/chains/{own[0].id}"), ("Activate it", CHAIN_FORM)))
    return ChainCover("err", "no live chain", (("Create a chain", "/admin/#/chain/add/"),))


@dataclass(frozen=True)
class PageLink:
    slug: str
    title: str
    published: bool


@dataclass(frozen=True)
class EbookRow:
    id: int
    title: str
    topic: str
    pages: tuple[PageLink, ...]
    chain: ChainCover
    waiting: int
    state: RenderState

    @property
    def edit_url(self) -> str:
        return admin_row("ebook", self.id)

    @property
    def preview_url(self) -> str:
        return f"/desk/ebooks/{self.id}/preview.pdf"


async def ebook_rows(now: datetime | None = None) -> list[EbookRow]:
    """Every ebook, by title, as the list shows it."""
    now = now or datetime.now(timezone.utc)
    coverage = await ebook_coverage()
    plans = await chain_plans()
    ebooks = {e.id: e for e in await Ebook.objects()}
    topics = {t["id"]: t["name"] for t in await Topic.select(Topic.id, Topic.name)}
    pages: dict[int, list[PageLink]] = {}
    for page in await LandingPage.select(LandingPage.slug, LandingPage.title, LandingPage.published,
                                         LandingPage.ebook).order_by(LandingPage.slug):
        pages.setdefault(page["ebook"], []).append(PageLink(page["slug"], page["title"], bool(page["published"])))
    digests = {e.id: content_hash(e, topics.get(e.topic, "")) for e in ebooks.values()}
    on_disk = await asyncio.to_thread(lambda: {d for d in digests.values() if (rendered_dir() / f"{d}.pdf").is_file()})
    rows = []
    for book in coverage:
        ebook = ebooks.get(book.id)
        if ebook is None:  # deleted between the two reads
            continue
        digest = digests[book.id]
        state = render_state(uploaded_pdf=ebook.uploaded_pdf, has_text=bool(ebook.body_markdown.strip()),
                             digest=digest, content_hash=ebook.content_hash, render_error=ebook.render_error or "",
                             rendered_at=ebook.rendered_at, cached=digest in on_disk)
        rows.append(EbookRow(book.id, book.title, book.topic, tuple(pages.get(book.id, ())),
                             chain_cover(book.topic_id, plans, now), book.waiting, state))
    return rows


_BLAMED: dict[str, FailingBlock | None] = {}
"""Failing blocks already found, by content hash: a failed text fails the same way each time."""
_BLAMED_KEPT = 64


async def blamed_block(ebook: Ebook, topic_name: str, digest: str) -> FailingBlock | None:
    """The block of the body a failed rendering comes with (several renderings, in a thread), once per text."""
    if digest not in _BLAMED:
        block = await asyncio.to_thread(failing_block, ebook, topic_name)
        while len(_BLAMED) >= _BLAMED_KEPT:
            _BLAMED.pop(next(iter(_BLAMED)))
        _BLAMED[digest] = block
    return _BLAMED[digest]


# ----------------------------------------------------------------------------- pages


def _no_such_ebook(request: Request, ebook_id: int) -> Template:
    return Template("desk/content/problem.html", status_code=HTTP_404_NOT_FOUND, context=page_context(
        request, title="No such ebook", detail=f"There is no ebook {ebook_id}: it may have been deleted.",
        links=[("All ebooks", "/desk/ebooks")]))


class EbookController(Controller):
    """The content team's ebooks: the list with each one's state, and a preview of its PDF (admins too)."""

    path = "/desk/ebooks"
    guards = [requires(CONTENT)]

    @get("/")
    async def ebooks(self, request: Request) -> Template:
        """Every ebook: topic, landing pages, chain, leads waiting, render state, edit and preview links."""
        return Template("desk/ebooks/list.html", context=page_context(
            request, ebooks=await ebook_rows(), render_form=RENDER_FORM))

    @get("/{ebook_id:int}/preview.pdf")
    async def preview(self, request: Request, ebook_id: FromPath[int]) -> Response:
        """The ebook's current text as a PDF (cached or rendered now), stamped as a preview on every page."""
        ebook = await Ebook.objects().where(Ebook.id == ebook_id).first() if 0 < ebook_id <= MAX_ID else None
        if ebook is None:
            return _no_such_ebook(request, ebook_id)
        try:
            path = await rendered_ebook(ebook.id)
        except EbookUnavailable as exc:
            return await self._unavailable(request, ebook.id, str(exc))
        data = await asyncio.to_thread(path.read_bytes)
        try:
            data = await asyncio.to_thread(stamp, data, PREVIEW_LINE)
        except Exception as exc:  # noqa: BLE001 - an uploaded file that pypdf cannot read is the uploader's to fix
            if not ebook.uploaded_pdf:
                raise
            log.warning("uploaded PDF of ebook %s cannot be stamped: %s", ebook.id, exc)
            return await self._unavailable(
                request, ebook.id, f"the uploaded PDF {ebook.uploaded_pdf!r} cannot be read as a PDF "
                                   f"({type(exc).__name__}: {exc}); upload it again")
        return Response(data, media_type="application/pdf", headers={
            "content-disposition": f'inline; filename="preview-{filename_for(ebook)}"', "cache-control": "no-store"})

    async def _unavailable(self, request: Request, ebook_id: int, reason: str) -> Response:
        """Why there is no PDF, and, when the text fails to render, the block of it to fix."""
        ebook = await Ebook.objects().where(Ebook.id == ebook_id).first()
        if ebook is None:
            return _no_such_ebook(request, ebook_id)
        topic = await Topic.select(Topic.name).where(Topic.id == ebook.topic).first()
        topic_name = topic["name"] if topic else ""
        digest = content_hash(ebook, topic_name)
        block = None
        rendering_failed = (not ebook.uploaded_pdf and ebook.body_markdown.strip() and ebook.render_error
                            and ebook.content_hash == digest)
        if rendering_failed:
            block = await blamed_block(ebook, topic_name, digest)
        return Template("desk/ebooks/failed.html", status_code=HTTP_422_UNPROCESSABLE_ENTITY, context=page_context(
            request, ebook=ebook, reason=reason, block=block, rendering_failed=bool(rendering_failed),
            edit_url=admin_row("ebook", ebook.id), render_form=RENDER_FORM))


HANDLERS = [EbookController]
