"""Admin form: render an ebook again now, past its cached PDF or a failure kept until an edit."""

from __future__ import annotations

from piccolo_admin.endpoints import FormConfig
from pydantic import BaseModel, Field
from starlette.requests import Request

from content.ebooks import EbookUnavailable, render_again
from content.tables import Ebook


class EbookChoice(BaseModel):
    ebook: str = Field(min_length=1, max_length=200, description="The ebook's slug or title (or its id).")


async def _ebook(choice: str) -> Ebook:
    value = choice.strip()
    ebook = None
    if value.isdigit():
        ebook = await Ebook.objects().where(Ebook.id == int(value)).first()
    if ebook is None:
        ebook = await Ebook.objects().where(Ebook.slug == value).first()
    if ebook is None:
        titled = await Ebook.objects().where(Ebook.title == value)
        if len(titled) > 1:
            raise ValueError(f"{len(titled)} ebooks are titled {value!r}: give the ebook's slug instead.")
        ebook = titled[0] if titled else None
    if ebook is None:
        raise ValueError(f"No ebook has the slug or title {value!r}.")
    return ebook


async def render(request: Request, data: EbookChoice) -> str:
    ebook = await _ebook(data.ebook)
    try:
        path = await render_again(ebook.id)
    except EbookUnavailable as exc:
        # A failed rendering is on the ebook's row (render_error) until it renders.
        raise ValueError(f"{ebook.title}: {exc}") from None
    size = path.stat().st_size
    return f"{ebook.title} is rendered again ({size / 1024:.0f} KB): downloads get the new PDF, the render error is cleared."


RENDER_FORM = FormConfig(name="Render an ebook again", pydantic_model=EbookChoice, endpoint=render,
                         description="Renders the ebook's current text to PDF now (WeasyPrint), even when a rendering "
                                     "is cached or failed before; answers with the result or the error.",
                         form_group="Content")
