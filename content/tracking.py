"""Open and click tracking for chain letters: links and a pixel signed for one delivery, and what they record."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape, unescape
from typing import Any
from urllib.parse import urlsplit

from content.tables import Delivery
from landing.tables import Event
from landing.tokens import TokenError, public_link, sign, unsign

# markdown-it writes every link as `<a href="…"`, with the URL HTML-escaped.
_LINK = re.compile(r'<a href="(https?://[^"]*)"', re.I)


@dataclass(frozen=True)
class TrackedLetter:
    """The HTML part with tracked links and a pixel, and the links as written, in order."""

    html: str
    links: list[str]


def open_url(delivery_id: int) -> str:
    return public_link(f"/t/o/{sign('open', delivery_id)}")


def click_url(delivery_id: int, index: int) -> str:
    """A redirect to the letter's `index`-th link; the token names the delivery and the index
    only, so it can lead nowhere but to a link stored with that delivery."""
    return public_link(f"/t/c/{sign('click', [delivery_id, index])}")


def track(html: str, delivery_id: int) -> TrackedLetter:
    """Rewrite each http(s) link of a rendered letter to its click redirect and add the pixel.

    The same URL twice in a letter is one stored link, so its clicks count together.
    """
    links: list[str] = []

    def rewrite(match: re.Match[str]) -> str:
        url = unescape(match.group(1))
        if url not in links:
            links.append(url)
        return f'<a href="{escape(click_url(delivery_id, links.index(url)), quote=True)}"'

    tracked = _LINK.sub(rewrite, html)
    pixel = f'<img src="{escape(open_url(delivery_id), quote=True)}" width="1" height="1" alt="" style="display:block;border:0">'
    return TrackedLetter(tracked + pixel, links)


def read_open_token(token: str) -> int:
    """The delivery a pixel's token names; TokenError if it was not signed as one."""
    delivery_id = unsign("open", token)
    if type(delivery_id) is not int:
        raise TokenError("this link is not valid")
    return delivery_id


def read_click_token(token: str) -> tuple[int, int]:
    """The delivery and link index a click's token names; TokenError if it was not signed as one."""
    payload = unsign("click", token)
    if not (isinstance(payload, list) and len(payload) == 2 and all(type(p) is int for p in payload)):
        raise TokenError("this link is not valid")
    return payload[0], payload[1]


@dataclass(frozen=True)
class Interaction:
    """A counted open or click: the lead to rescore (None when nothing was kept, for an
    erased lead), and for a click the stored link it leads to."""

    lead_id: int | None
    url: str = ""


async def _tracked(delivery_id: int) -> dict[str, Any] | None:
    """The delivery with its lead (old rows name it only through their enrollment), step and topic."""
    row = await Delivery.select(
        Delivery.links, Delivery.opened_at, Delivery.clicked_at,
        Delivery.lead, Delivery.lead.erased_at.as_alias("lead_erased_at"),
        Delivery.enrollment.lead.as_alias("enrollment_lead"),
        Delivery.enrollment.lead.erased_at.as_alias("enrollment_lead_erased_at"),
        Delivery.step.position.as_alias("position"),
        Delivery.enrollment.chain.topic.as_alias("topic"),
    ).where(Delivery.id == delivery_id).output(load_json=True).first()
    if row is None:
        return None
    if row["lead"] is None:
        row["lead"], row["lead_erased_at"] = row["enrollment_lead"], row["enrollment_lead_erased_at"]
    return row


async def _record(delivery_id: int, row: dict[str, Any], event_type: str, properties: dict[str, Any],
                  now: datetime, clicked: bool) -> None:
    async with Delivery._meta.db.transaction():
        # Conditional: two requests at once must not move the first time.
        if clicked and row["clicked_at"] is None:
            await Delivery.update({Delivery.clicked_at: now}).where(
                (Delivery.id == delivery_id) & Delivery.clicked_at.is_null())
        if row["opened_at"] is None:
            # A click implies an open, whether or not the mail program showed the pixel.
            await Delivery.update({Delivery.opened_at: now}).where(
                (Delivery.id == delivery_id) & Delivery.opened_at.is_null())
        await Event.insert(Event(type=event_type, lead=row["lead"], topic=row["topic"],
                                 properties={"delivery": delivery_id, "step": row["position"]} | properties,
                                 occurred_at=now))


async def record_open(delivery_id: int, now: datetime | None = None) -> Interaction | None:
    """Count an open of the delivery's letter: its first time on the ledger, an event every
    time. None for a delivery we do not know."""
    row = await _tracked(delivery_id)
    if row is None:
        return None
    if row["lead_erased_at"] is not None:
        return Interaction(None)
    await _record(delivery_id, row, "email_open", {}, now or datetime.now(timezone.utc), clicked=False)
    return Interaction(row["lead"])


async def record_click(delivery_id: int, index: int, now: datetime | None = None) -> Interaction | None:
    """Count a click on the delivery's `index`-th link and return that link; None unless it
    is an http(s) link stored with the delivery, so a click can never lead anywhere else."""
    row = await _tracked(delivery_id)
    if row is None:
        return None
    links = row["links"] if isinstance(row["links"], list) else []
    url = links[index] if 0 <= index < len(links) else None
    if not isinstance(url, str) or urlsplit(url).scheme.lower() not in ("http", "https"):
        return None
    if row["lead_erased_at"] is not None:
        return Interaction(None, url)
    await _record(delivery_id, row, "email_click", {"url": url}, now or datetime.now(timezone.utc), clicked=True)
    return Interaction(row["lead"], url)
