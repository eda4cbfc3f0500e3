"""What sales record about a lead, its stage and its owner: every change kept with who made it and when."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Mapping

from piccolo.apps.user.tables import BaseUser
from piccolo.columns import Column

from content.chains import instant
from landing.tables import Lead, LeadChange, LeadStage

OUTCOME_STAGES = ("qualified", "won", "lost")
"""Stages that are outcomes: training reads a lead as of the moment it reached one."""
STAGES = tuple(stage.value for stage in LeadStage)


class Keep(Enum):
    """Leave this field as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


class OutcomeProblem(ValueError):
    """The change cannot be made (an unknown stage, an owner who cannot own leads): nothing was written."""


class LeadGone(LookupError):
    """No such lead, or it was erased."""


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a user (kept by id and by name, in case the user is deleted later), or a process."""

    user_id: int | None
    name: str


@dataclass(frozen=True)
class Change:
    field: str
    old_value: str
    new_value: str


@dataclass(frozen=True)
class OutcomeResult:
    """What a call changed (nothing for a no-op) and, when the stage became an outcome, when."""

    changes: list[Change] = field(default_factory=list)
    outcome_at: datetime | None = None

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def plain(value: Any) -> Any:
    """An enum member as its value (piccolo-admin hands stages over as enum members)."""
    return value.value if isinstance(value, Enum) else value


def check_stage(stage: Any) -> str:
    stage = plain(stage)
    if not isinstance(stage, str) or stage not in STAGES:
        raise OutcomeProblem(f"Unknown stage {str(stage)[:40]!r}: choose one of {', '.join(STAGES)}.")
    return stage


async def _owner_name(owner_id: int) -> str:
    user = await BaseUser.select(BaseUser.username, BaseUser.active).where(BaseUser.id == owner_id).first()
    if user is None:
        raise OutcomeProblem(f"There is no user #{owner_id}.")
    if not user["active"]:
        raise OutcomeProblem(f"{user['username']} is locked out and cannot own leads.")
    return user["username"]


async def change_outcome(lead_id: int, *, actor: Actor, stage: str | Keep = KEEP, owner: int | None | Keep = KEEP,
                         via: str = "desk", also: Mapping[Any, Any] | None = None,
                         now: datetime | None = None) -> OutcomeResult:
    """Set a lead's stage and/or owner in one transaction: one `LeadChange` per field that
    changed, `outcome_at` stamped when the stage moves to qualified, won or lost; a value
    equal to the current one changes and writes nothing.

    `also` are other columns written in the same statement when something changes (an admin
    table edit of the stage and the company at once is one write). Raises OutcomeProblem for a value that
    cannot be set and LeadGone for a missing or erased lead, having written nothing. Whether
    a user may own leads by role is the caller's rule; here an owner is an active user.
    """
    now = now or datetime.now(timezone.utc)
    if stage is not KEEP:
        stage = check_stage(stage)
    if owner is not KEEP and owner is not None and (isinstance(owner, bool) or not isinstance(owner, int)):
        raise OutcomeProblem("The owner must be a user's id.")
    async with Lead._meta.db.transaction():
        query = Lead.select(Lead.id, Lead.stage, Lead.owner.id.as_alias("owner_id"),
                            Lead.owner.username.as_alias("owner_name"), Lead.erased_at).where(Lead.id == lead_id)
        if Lead._meta.db.engine_type == "postgres":
            # Two people changing one lead at once: the second reads the first's values.
            query = query.lock_rows(of=(Lead,))
        lead = await query.first()
        if lead is None or lead["erased_at"] is not None:
            raise LeadGone(f"There is no lead #{lead_id}.")
        values: dict[Any, Any] = {}
        changes: list[Change] = []
        outcome_at = None
        if stage is not KEEP and stage != lead["stage"]:
            values[Lead.stage] = stage
            changes.append(Change("stage", lead["stage"] or "", stage))
            if stage in OUTCOME_STAGES:
                values[Lead.outcome_at] = outcome_at = now
        if owner is not KEEP and owner != lead["owner_id"]:
            new_name = await _owner_name(owner) if owner is not None else ""
            values[Lead.owner] = owner
            changes.append(Change("owner", lead["owner_name"] or "", new_name))
        if not values:
            return OutcomeResult()
        extra = {key: value for key, value in (also or {}).items()
                 if column_name(key) not in ("stage", "owner", "outcome_at", "id")}
        await Lead.update({**extra, **values}).where(Lead.id == lead_id)
        if changes:
            await LeadChange.insert(*[
                LeadChange(lead=lead_id, field=c.field, old_value=c.old_value[:200], new_value=c.new_value[:200],
                           changed_by=actor.user_id, changed_by_name=actor.name[:100], via=via[:20], changed_at=now)
                for c in changes
            ])
    return OutcomeResult(changes, outcome_at)


def column_name(key: Any) -> str:
    return key._meta.name if isinstance(key, Column) else str(key)


def named(values: Mapping[Any, Any]) -> dict[str, Any]:
    """piccolo-admin's hook values (keyed by column objects) keyed by column name."""
    return {column_name(key): value for key, value in values.items()}


def stamp_outcome_on_save(row: Lead) -> Lead:
    """Admin hook: a lead created with an outcome stage gets its outcome time."""
    if row.stage in OUTCOME_STAGES and row.outcome_at is None:
        row.outcome_at = datetime.now(timezone.utc)
    return row


@dataclass(frozen=True)
class ChangeRecord:
    """A kept change, for the lead page's history."""

    id: int
    field: str
    old_value: str
    new_value: str
    changed_by_name: str
    via: str
    changed_at: datetime | None


async def lead_changes(lead_id: int, limit: int = 300) -> list[ChangeRecord]:
    """The lead's stage and owner changes, newest first."""
    rows = await LeadChange.select(
        LeadChange.id, LeadChange.field, LeadChange.old_value, LeadChange.new_value,
        LeadChange.changed_by.username.as_alias("username"), LeadChange.changed_by_name, LeadChange.via,
        LeadChange.changed_at,
    ).where(LeadChange.lead == lead_id).order_by(LeadChange.changed_at, ascending=False).order_by(
        LeadChange.id, ascending=False).limit(limit)
    return [ChangeRecord(r["id"], r["field"], r["old_value"] or "", r["new_value"] or "",
                         r["changed_by_name"] or r["username"] or "", r["via"] or "", instant(r["changed_at"]))
            for r in rows]


async def count_changes(lead_id: int) -> int:
    return await LeadChange.count().where(LeadChange.lead == lead_id)
