"""Admin forms for the content team: activate, schedule or pause a chain; preview a step for a
lead; send a step as a test letter. Plus the table hooks that keep a live chain's letters valid."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from piccolo_admin.endpoints import FormConfig
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request

from content.letters import LetterTemplateError
from content.lifecycle import ChainNotReady, activate_chain, check_chain, pause_chain
from content.mail import Relay, SmtpReplyError
from content.results import preview_step, send_test_letter
from content.tables import Chain, ChainStatus, Offer, Step
from landing.forms import normalise_email
from landing.tables import Lead
from server.settings import get_settings


class ChainAction(str, Enum):
    activate = "activate"
    pause = "pause"


class ChainChange(BaseModel):
    chain: str = Field(min_length=1, max_length=200, description="The chain's name (or its id).")
    action: ChainAction = Field(ChainAction.activate, description="Activate (or resume), or pause.")
    starts_at: datetime | None = Field(None, description="Activate: start at this time (UTC) instead of now.")


class StepChoice(BaseModel):
    chain: str = Field(min_length=1, max_length=200, description="The chain's name (or its id).")
    position: int = Field(1, ge=1, description="The step's position in the chain.")
    lead_email: str = Field("", max_length=254, description="Personalise for this lead (empty: a sample lead).")
    variant: str = Field("A", pattern="^[AB]$", description="A or B, for a step with a B version.")
    offer: str = Field("auto", pattern="^(auto|hot|cold)$", description="On the offer step: hot, cold, or auto (by the lead's score).")


class TestLetter(StepChoice):
    to_address: str = Field(min_length=3, max_length=254, description="Send the test letter here.")


async def _chain(name_or_id: str) -> Chain:
    value = name_or_id.strip()
    chain = None
    if value.isdigit():
        chain = await Chain.objects().where(Chain.id == int(value)).first()
    if chain is None:
        named = await Chain.objects().where(Chain.name == value)
        if len(named) > 1:
            raise ValueError(f"{len(named)} chains are called {value!r}: give the chain's id instead.")
        chain = named[0] if named else None
    if chain is None:
        raise ValueError(f"No chain is called {value!r}.")
    return chain


async def change_chain(request: Request, data: ChainChange) -> str:
    chain = await _chain(data.chain)
    if data.action == ChainAction.pause:
        await pause_chain(chain.id)
        return f"{chain.name} is paused: due letters wait and nothing is resent when it resumes."
    starts_at = data.starts_at
    if starts_at is not None and starts_at.tzinfo is None:
        starts_at = starts_at.replace(tzinfo=timezone.utc)
    try:
        activation = await activate_chain(chain.id, starts_at)
    except ChainNotReady as exc:
        raise ValueError(str(exc)) from None
    when = "now" if starts_at is None or starts_at <= datetime.now(timezone.utc) else f"from {starts_at:%Y-%m-%d %H:%M} UTC"
    waiting = f" {activation.leads_waiting} waiting leads join it within seconds of its start." if activation.leads_waiting else ""
    return f"{chain.name} is active {when}.{waiting}"


async def _step(data: StepChoice) -> tuple[Step, int | None]:
    chain = await _chain(data.chain)
    step = await Step.objects().where((Step.chain == chain.id) & (Step.position == data.position)).first()
    if step is None:
        raise ValueError(f"{chain.name} has no step {data.position}.")
    lead_id = None
    if data.lead_email.strip():
        address = normalise_email(data.lead_email)
        row = await Lead.select(Lead.id).where(Lead.email == address).first()
        if row is None:
            raise ValueError(f"No lead has the address {address}.")
        lead_id = row["id"]
    return step, lead_id


async def preview(request: Request, data: StepChoice) -> str:
    step, lead_id = await _step(data)
    try:
        letter = await preview_step(step.id, lead_id, data.variant, data.offer)
    except LetterTemplateError as exc:
        raise ValueError(str(exc)) from None
    return f"Subject: {letter.subject}\n\n{letter.text}"


async def test_send(request: Request, data: TestLetter) -> str:
    step, lead_id = await _step(data)
    address = normalise_email(data.to_address)
    settings = get_settings()
    if settings.smtp is None:
        raise ValueError("No relay is configured (SMTP_URL).")
    relay = Relay(settings.smtp, connections=1)
    try:
        reply = await send_test_letter(step.id, address, relay, lead_id, data.variant, data.offer)
    except LetterTemplateError as exc:
        raise ValueError(str(exc)) from None
    except (SmtpReplyError, OSError) as exc:
        raise ValueError(f"The relay did not take the letter: {exc}") from None
    finally:
        await relay.close()
    return f"Test letter sent to {address}: {reply}"


CHAIN_FORM = FormConfig(name="Activate, schedule or pause a chain", pydantic_model=ChainChange, endpoint=change_chain,
                        description="Activation checks every letter for every lead first; a chain with an error stays as it is.",
                        form_group="Content")
PREVIEW_FORM = FormConfig(name="Preview a step", pydantic_model=StepChoice, endpoint=preview,
                          description="The letter as a lead (or a sample lead) would get it.", form_group="Content")
TEST_FORM = FormConfig(name="Send a test letter", pydantic_model=TestLetter, endpoint=test_send,
                       description="Sends the step to a staff address, marked [Test]; nothing enters the send ledger.",
                       form_group="Content")


def _named(values: dict[Any, Any]) -> dict[str, Any]:
    """piccolo-admin's hooks key the new values by column object; by name here."""
    return {key if isinstance(key, str) else key._meta.name: value for key, value in values.items()}


def _refuse(what: str, problems: list[str]) -> None:
    if problems:
        raise HTTPException(status_code=400, detail=f"{what}: " + "; ".join(problems))


async def _live(chain_id: Any) -> bool:
    chain = await Chain.select(Chain.status).where(Chain.id == chain_id).first()
    return chain is not None and chain["status"] == ChainStatus.active


async def guard_chain_patch(row_id: Any, values: dict[Any, Any]) -> dict[Any, Any]:
    """Table hook: a live chain, or one switched on here, is checked as it would be after the
    edit (its letters, time zone, window, sender, exit stage), like the activation form."""
    if _named(values).get("status") == ChainStatus.active or await _live(row_id):
        _refuse("Cannot save this chain as active", await check_chain(int(row_id), chain_values=values))
    return values


def guard_chain_save(row: Chain) -> Chain:
    """Table hook: a new chain has no steps yet, so it starts as a draft."""
    if row.status == ChainStatus.active:
        raise HTTPException(status_code=400, detail="Save the chain as a draft, add its steps, then activate it.")
    return row


async def guard_step_patch(row_id: Any, values: dict[Any, Any]) -> dict[Any, Any]:
    """Table hook: an edit that would break a live chain's letter is refused, naming the step;
    a step moved to another live chain is checked there too."""
    step = await Step.objects().where(Step.id == row_id).first()
    if step is None:
        return values
    if await _live(step.chain):
        _refuse("This edit would break a live chain", await check_chain(step.chain, edited={step.id: values}))
    target = _named(values).get("chain", step.chain)
    if target != step.chain and await _live(target):
        moved = Step(**{c._meta.name: getattr(step, c._meta.name) for c in Step._meta.columns})
        for name, value in _named(values).items():
            setattr(moved, name, value)
        _refuse("This step would break a live chain", await check_chain(int(target), added=[moved]))
    return values


async def guard_step_save(row: Step) -> Step:
    """Table hook: a step added to a live chain must render too."""
    if await _live(row.chain):
        _refuse("This step would break a live chain", await check_chain(row.chain, added=[row]))
    return row


async def guard_offer_patch(row_id: Any, values: dict[Any, Any]) -> dict[Any, Any]:
    """Table hook: a live chain's offers are checked as they would be after the edit."""
    offer = await Offer.objects().where(Offer.id == row_id).first()
    if offer is not None and await _live(offer.chain):
        _refuse("This edit would break a live chain", await check_chain(offer.chain, offer_values={offer.id: values}))
    return values


async def refuse_removing_from_live_chain(piccolo_crud: Any, request: Request) -> None:
    """Validator: a step or an offer of a live chain is not deleted (pause the chain first);
    a delete would also take its letters' history with it."""
    row_id = request.path_params.get("row_id")
    row = await piccolo_crud.table.select(piccolo_crud.table.chain).where(piccolo_crud.table.id == row_id).first()
    if row is not None and await _live(row["chain"]):
        raise HTTPException(status_code=400, detail="This chain is live: pause it before removing its steps or offers.")
