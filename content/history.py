"""The letters one lead was sent (chain letters and one-off notices), for its timeline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from content.chains import instant
from content.tables import Delivery, Notice

LETTERS_SHOWN = 300


@dataclass(frozen=True)
class Letter:
    """A chain letter from the send ledger: what it was, and what the lead did with it."""

    delivery_id: int
    chain_name: str
    position: int | None
    subject: str
    status: str
    offer_kind: str
    variant: str
    reserved_at: datetime | None
    sent_at: datetime | None
    opened_at: datetime | None
    clicked_at: datetime | None


@dataclass(frozen=True)
class NoticeLetter:
    """A letter the lead asked for: the confirmation, the download link, a data request."""

    kind: str
    subject: str
    status: str
    created_at: datetime | None
    sent_at: datetime | None


async def lead_letters(lead_id: int, limit: int = LETTERS_SHOWN) -> list[Letter]:
    """The lead's chain letters, newest first (old ledger rows name the lead only through their enrollment)."""
    rows = await Delivery.select(
        Delivery.id, Delivery.enrollment.chain.name.as_alias("chain_name"), Delivery.step.position.as_alias("position"),
        Delivery.subject, Delivery.status, Delivery.offer_kind, Delivery.variant, Delivery.reserved_at, Delivery.sent_at,
        Delivery.opened_at, Delivery.clicked_at,
    ).where((Delivery.lead == lead_id) | (Delivery.lead.is_null() & (Delivery.enrollment.lead == lead_id))).order_by(
        Delivery.id, ascending=False).limit(limit)
    return [Letter(r["id"], r["chain_name"] or "", r["position"], r["subject"] or "", r["status"] or "",
                   r["offer_kind"] or "", r["variant"] or "", instant(r["reserved_at"]), instant(r["sent_at"]),
                   instant(r["opened_at"]), instant(r["clicked_at"]))
            for r in rows]


async def letter_subjects(delivery_ids: set[int]) -> dict[int, str]:
    """Subjects by delivery id, for opens and clicks of letters older than the ones listed."""
    if not delivery_ids:
        return {}
    rows = await Delivery.select(Delivery.id, Delivery.subject).where(Delivery.id.is_in(sorted(delivery_ids)))
    return {r["id"]: r["subject"] or "" for r in rows}


async def lead_notices(lead_id: int, limit: int = LETTERS_SHOWN) -> list[NoticeLetter]:
    """The one-off letters the lead asked for, newest first."""
    rows = await Notice.select(Notice.kind, Notice.subject, Notice.status, Notice.created_at, Notice.sent_at).where(
        Notice.lead == lead_id).order_by(Notice.id, ascending=False).limit(limit)
    return [NoticeLetter(r["kind"] or "", r["subject"] or "", r["status"] or "", instant(r["created_at"]),
                         instant(r["sent_at"]))
            for r in rows]


async def count_letters(lead_id: int) -> int:
    deliveries = await Delivery.count().where(
        (Delivery.lead == lead_id) | (Delivery.lead.is_null() & (Delivery.enrollment.lead == lead_id)))
    return deliveries + await Notice.count().where(Notice.lead == lead_id)
