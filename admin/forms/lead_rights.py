"""Admin forms: export a lead's data as JSON, or erase it (personal data removed, address suppressed)."""

from __future__ import annotations

import json

from piccolo_admin.endpoints import FormConfig
from pydantic import BaseModel, Field
from starlette.requests import Request

from landing.forms import normalise_email
from landing.rights import erase_lead, export_lead
from landing.tables import Lead


class LeadByEmail(BaseModel):
    email: str = Field(min_length=3, max_length=254, description="The lead's address.")


class EraseLead(LeadByEmail):
    confirm: bool = Field(False, description="Tick to confirm: the lead's personal data is removed for good.")


async def _lead_id(email: str) -> int:
    try:
        address = normalise_email(email)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    row = await Lead.select(Lead.id).where(Lead.email == address).first()
    if row is None:
        raise ValueError(f"No lead has the address {address}.")
    return row["id"]


async def export(request: Request, data: LeadByEmail) -> str:
    exported = await export_lead(await _lead_id(data.email))
    return json.dumps(exported, ensure_ascii=False)


async def erase(request: Request, data: EraseLead) -> str:
    if not data.confirm:
        raise ValueError("Tick 'confirm' to erase the lead.")
    lead_id = await _lead_id(data.email)
    await erase_lead(lead_id, detail=f"erased in the admin by {getattr(request.user, 'display_name', 'staff')}")
    return f"Lead {lead_id} erased: personal data removed, the address suppressed by its hash."


EXPORT_FORM = FormConfig(name="Export lead data", pydantic_model=LeadByEmail, endpoint=export,
                         description="Everything held about a lead, as JSON.", form_group="Sales")
ERASE_FORM = FormConfig(name="Erase a lead", pydantic_model=EraseLead, endpoint=erase,
                        description="Removes the lead's personal data; counts are kept and the address is never mailed or imported again.",
                        form_group="Sales")
