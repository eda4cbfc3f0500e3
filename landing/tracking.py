"""Open and click tracking for chain letters: the pixel /t/o/<token> and the link redirect /t/c/<token>."""

from __future__ import annotations

from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

from arq.connections import ArqRedis
from litestar import Controller, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_302_FOUND, HTTP_404_NOT_FOUND

from content.tracking import read_click_token, read_open_token, record_click, record_open
from landing.controllers import _message, enqueue_after_commit
from landing.tables import ApiKey
from landing.tokens import TokenError, sign
from server.settings import get_settings

PIXEL = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
         b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
"""A 1×1 transparent GIF."""

# Per lead and per request: neither the pixel nor the redirect may be cached on the way.
NOT_CACHED = CacheControlHeader(no_store=True, private=True)


def with_lead_token(url: str, lead_id: int) -> str:
    """The link with `lk=<identify token>` added, so the site's snippet knows who came; the
    link's own query is kept as written (an `lk` it carried is replaced) and so is its fragment."""
    parts = urlsplit(url)
    kept = [p for p in parts.query.split("&") if p and unquote_plus(p.partition("=")[0]) != "lk"]
    query = "&".join([*kept, urlencode({"lk": sign("identify", lead_id)})])
    return urlunsplit(parts._replace(query=query))


async def own_hosts() -> set[str]:
    """Hosts a lead's token may travel to: this server and the sites its browser API keys
    serve (their allowed origins). A link elsewhere must not carry a token that identifies
    the lead to a third party."""
    hosts = {urlsplit(get_settings().public_url).hostname or ""}
    for row in await ApiKey.select(ApiKey.allowed_origins).where(ApiKey.active == True):  # noqa: E712
        hosts |= {urlsplit(origin.strip()).hostname or "" for origin in row["allowed_origins"].splitlines()}
    hosts.discard("")
    return hosts


def _gone() -> Template:
    return _message("This link cannot be used", "It does not lead anywhere we know of.", HTTP_404_NOT_FOUND)


class TrackingController(Controller):
    """Opens and clicks in chain letters: counted, then the pixel or the letter's own link."""

    path = "/t"
    include_in_schema = False

    @get("/o/{token:str}", cache_control=NOT_CACHED)
    async def opened(self, token: FromPath[str], arq: NamedDependency[ArqRedis | None]) -> Response[bytes]:
        """Count an open and send the pixel."""
        try:
            delivery_id = read_open_token(token)
        except TokenError:
            return Response(b"Not found", status_code=HTTP_404_NOT_FOUND, media_type="text/plain")
        opened = await record_open(delivery_id)
        if opened is None:
            return Response(b"Not found", status_code=HTTP_404_NOT_FOUND, media_type="text/plain")
        if opened.lead_id is not None:
            await enqueue_after_commit(arq, opened.lead_id)
        return Response(PIXEL, media_type="image/gif")

    @get("/c/{token:str}", cache_control=NOT_CACHED)
    async def clicked(self, token: FromPath[str], arq: NamedDependency[ArqRedis | None]) -> Redirect | Template:
        """Count a click and redirect to the link the letter held there."""
        try:
            delivery_id, index = read_click_token(token)
        except TokenError as exc:
            return _message("This link cannot be used", f"The link {str(exc).removeprefix('this link ')}.",
                            HTTP_404_NOT_FOUND)
        clicked = await record_click(delivery_id, index)
        if clicked is None:
            return _gone()
        if clicked.lead_id is None:
            # An erased lead: the link still works, but nothing says who followed it.
            return Redirect(clicked.url, status_code=HTTP_302_FOUND)
        await enqueue_after_commit(arq, clicked.lead_id)
        if urlsplit(clicked.url).hostname not in await own_hosts():
            return Redirect(clicked.url, status_code=HTTP_302_FOUND)
        return Redirect(with_lead_token(clicked.url, clicked.lead_id), status_code=HTTP_302_FOUND)
