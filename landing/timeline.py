"""One lead as sales see it: its profile, and what it did (events, conversions), newest first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from content.chains import instant
from landing.tables import Consent, Conversion, Event, Lead

EVENTS_SHOWN = 300


@dataclass(frozen=True)
class LeadProfile:
    id: int
    email: str
    first_name: str
    last_name: str
    company: str
    role: str
    source: str
    first_touch: dict[str, str]
    last_touch: dict[str, str]
    landing_url: str
    """Where the lead first gave its address (the first consent's page)."""
    stage: str
    owner_id: int | None
    owner_name: str
    topic_name: str
    created_at: datetime | None
    confirmed: bool
    historical: bool
    outcome_at: datetime | None

    @property
    def name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)


def _dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value or "{}")
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _touch(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _dict(value).items() if v not in (None, "")}


async def lead_profile(lead_id: int) -> LeadProfile | None:
    """The lead, or None when there is none or it was erased (its personal data is gone)."""
    row = await Lead.select(
        Lead.id, Lead.email, Lead.first_name, Lead.last_name, Lead.company, Lead.role, Lead.source, Lead.first_touch,
        Lead.last_touch, Lead.stage, Lead.owner.id.as_alias("owner_id"), Lead.owner.username.as_alias("owner_name"),
        Lead.topic.name.as_alias("topic_name"), Lead.created_at, Lead.confirmed, Lead.historical, Lead.outcome_at,
        Lead.erased_at,
    ).where(Lead.id == lead_id).first()
    if row is None or row["erased_at"] is not None:
        return None
    consent = await Consent.select(Consent.page_url).where(Consent.lead == lead_id).order_by(Consent.given_at).first()
    return LeadProfile(
        id=row["id"], email=row["email"] or "", first_name=row["first_name"] or "", last_name=row["last_name"] or "",
        company=row["company"] or "", role=row["role"] or "", source=row["source"] or "",
        first_touch=_touch(row["first_touch"]), last_touch=_touch(row["last_touch"]),
        landing_url=consent["page_url"] if consent else "", stage=row["stage"] or "", owner_id=row["owner_id"],
        owner_name=row["owner_name"] or "", topic_name=row["topic_name"] or "", created_at=instant(row["created_at"]),
        confirmed=bool(row["confirmed"]), historical=bool(row["historical"]), outcome_at=instant(row["outcome_at"]),
    )


@dataclass(frozen=True)
class LeadEvent:
    id: int
    type: str
    topic_name: str
    properties: dict[str, Any]
    occurred_at: datetime | None


async def lead_events(lead_id: int, limit: int = EVENTS_SHOWN) -> list[LeadEvent]:
    """The lead's latest events, newest first."""
    rows = await Event.select(Event.id, Event.type, Event.topic.name.as_alias("topic_name"), Event.properties,
                              Event.occurred_at).where(Event.lead == lead_id).order_by(
        Event.occurred_at, ascending=False).order_by(Event.id, ascending=False).limit(limit).output(load_json=True)
    return [LeadEvent(r["id"], r["type"] or "", r["topic_name"] or "", _dict(r["properties"]), instant(r["occurred_at"]))
            for r in rows]


async def count_events(lead_id: int) -> int:
    return await Event.count().where(Event.lead == lead_id)


@dataclass(frozen=True)
class LeadConversion:
    kind: str
    value: float
    occurred_at: datetime | None


async def lead_conversions(lead_id: int, limit: int = EVENTS_SHOWN) -> list[LeadConversion]:
    """The lead's conversions (orders, booked calls), newest first."""
    rows = await Conversion.select(Conversion.kind, Conversion.value, Conversion.occurred_at).where(
        Conversion.lead == lead_id).order_by(Conversion.occurred_at, ascending=False).limit(limit)
    return [LeadConversion(r["kind"] or "", float(r["value"] or 0.0), instant(r["occurred_at"])) for r in rows]


async def count_conversions(lead_id: int) -> int:
    return await Conversion.count().where(Conversion.lead == lead_id)
