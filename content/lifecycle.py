"""A chain's life: checked before it goes live, activated, scheduled or paused; the leads that
waited for it, and the leads that turn hot on its topic, join it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from content.chains import EnrollmentDue, insert_enrollment, enroll, utcnow, zone
from content.delivery import email_hash, lead_context
from content.letters import LetterTemplateError, render_letter
from content.mail import address_of
from content.tables import Chain, ChainStatus, ChainWait, Ebook, Offer, OfferKind, Step, StepKind, Suppression
from landing.tables import Lead, LeadStage, Topic


class ChainNotReady(ValueError):
    """The chain cannot go live; `problems` says what to fix, each naming its step."""

    def __init__(self, chain_name: str, problems: list[str]) -> None:
        super().__init__(f"{chain_name} cannot be activated: " + "; ".join(problems))
        self.problems = problems


def _sample_contexts(topic: Topic | None, chain: Chain) -> list[dict]:
    """A lead with every field filled and one with none: a letter must render for both."""
    full = Lead(email="alex@example.com", first_name="Alex", last_name="Kim", company="Acme", role="Founder")
    blank = Lead(email="someone@example.com")
    links = {"unsubscribe_url": "https://example.com/u/x", "preferences_url": "https://example.com/p/x"}
    return [lead_context(lead, topic, chain) | links for lead in (full, blank)]


def _check_letter(subject: str, body: str, where: str, contexts: list[dict], problems: list[str]) -> None:
    if not subject.strip():
        problems.append(f"{where}: the subject is empty")
        return
    for context in contexts:
        try:
            render_letter(subject, body, context, where)
        except LetterTemplateError as exc:
            problems.append(str(exc))
            return


def _apply(row: Any, values: dict[Any, Any]) -> None:
    """Put edited values on a row; piccolo-admin's hooks key them by column, callers by name."""
    names = {c._meta.name for c in type(row)._meta.columns}
    for key, value in values.items():
        name = key if isinstance(key, str) else key._meta.name
        if name in names and name != "id":
            setattr(row, name, value)


async def check_chain(chain_id: int, edited: dict[int, dict[str, Any]] | None = None,
                      added: list[Step] | None = None, chain_values: dict[Any, Any] | None = None,
                      offer_values: dict[int, dict[Any, Any]] | None = None,
                      removed: set[int] | None = None) -> list[str]:
    """Everything that keeps the chain from going live, or [] when it can. The other
    arguments check the chain as it would be after an edit in the admin: `edited` steps and
    `offer_values` (by id), `added` steps, `chain_values`, `removed` step or offer ids."""
    chain = await Chain.objects().get(Chain.id == chain_id)
    _apply(chain, chain_values or {})
    topic = await Topic.objects().where(Topic.id == chain.topic).first()
    steps = [s for s in await Step.objects().where(Step.chain == chain_id).order_by(Step.position)
             if s.id not in (removed or set())]
    for step in steps:
        _apply(step, (edited or {}).get(step.id, {}))
    steps = sorted(steps + list(added or []), key=lambda s: s.position)
    problems: list[str] = []
    if not steps:
        problems.append("the chain has no steps")
    if zone(chain.timezone) is None:
        problems.append(f"time zone {chain.timezone!r} is unknown (use a name like Europe/Berlin)")
    if not (0 <= chain.send_window_start < chain.send_window_end <= 24):
        problems.append("the send window must start before it ends, within 0-24")
    if not any(c in "0123456" for c in chain.send_weekdays):
        problems.append("no weekday is allowed for sending")
    if not 0 <= chain.holdout_percent <= 100:
        problems.append("the holdout must be 0-100 percent")
    if chain.exit_stage and chain.exit_stage not in {s.value for s in LeadStage}:
        problems.append(f"exit stage {chain.exit_stage!r} is not a sales stage")
    if chain.sender_email and "@" not in address_of(chain.sender_email):
        problems.append(f"sender address {chain.sender_email!r} is not an email address")
    contexts = _sample_contexts(topic, chain)
    for step in steps:
        where = f"step {step.position}"
        if step.delay_minutes < 0:
            problems.append(f"{where}: the delay cannot be negative")
        if step.kind == StepKind.offer:
            if step is not steps[-1]:
                problems.append(f"{where}: the offer must be the last step")
            continue
        _check_letter(step.subject, step.body_markdown, where, contexts, problems)
        if step.subject_b.strip() or step.body_markdown_b.strip():
            _check_letter(step.subject_b.strip() or step.subject, step.body_markdown_b.strip() or step.body_markdown,
                          f"{where} (variant B)", contexts, problems)
    if any(step.kind == StepKind.offer for step in steps):
        offers = {}
        for offer in await Offer.objects().where(Offer.chain == chain_id):
            if offer.id in (removed or set()):
                continue
            _apply(offer, (offer_values or {}).get(offer.id, {}))
            offers[offer.kind] = offer
        for kind in (OfferKind.hot, OfferKind.cold):
            offer = offers.get(kind)
            if offer is None:
                problems.append(f"the {kind.value} offer is missing")
            else:
                _check_letter(offer.subject, offer.body_markdown, f"{kind.value} offer", contexts, problems)
    return problems


@dataclass(frozen=True)
class Activation:
    chain_id: int
    starts_at: datetime | None
    leads_waiting: int
    """Leads waiting for this chain's topic; the sweeper enrolls them within seconds of the start."""


async def activate_chain(chain_id: int, starts_at: datetime | None = None) -> Activation:
    """Make the chain live now, or scheduled from `starts_at`; refuses a chain whose letters
    do not render (ChainNotReady, also kept in `check_error` for the admin). Resuming a
    paused chain is activating it again: steps already sent stay sent (the ledger)."""
    chain = await Chain.objects().get(Chain.id == chain_id)
    problems = await check_chain(chain_id)
    await Chain.update({Chain.check_error: "\n".join(problems)}).where(Chain.id == chain_id)
    if problems:
        raise ChainNotReady(chain.name, problems)
    await Chain.update({Chain.status: ChainStatus.active, Chain.starts_at: starts_at}).where(Chain.id == chain_id)
    waiting = await ChainWait.count().where(
        ChainWait.topic == chain.topic if not chain.is_fallback else ChainWait.id.is_not_null()
    )
    return Activation(chain_id, starts_at, waiting)


async def pause_chain(chain_id: int) -> None:
    """Stop sending: due letters wait, nothing is dropped, and nothing is resent on resume."""
    await Chain.update({Chain.status: ChainStatus.paused}).where(Chain.id == chain_id)


_LIVE_CHAINS = """
SELECT c.topic AS topic, c.is_fallback AS fallback FROM chain c
WHERE c.status = 'active' AND (c.starts_at IS NULL OR c.starts_at <= {})
"""


async def enroll_waiting(now: datetime | None = None, limit: int = 500) -> list[EnrollmentDue]:
    """Enroll leads that asked for an ebook while no chain took its topic, now that one does
    (an activation, a scheduled start, a fallback chain). Run by the sweeper."""
    now = now or utcnow()
    live = await Chain.raw(_LIVE_CHAINS, now)
    if not live:
        return []
    query = ChainWait.select(
        ChainWait.id, ChainWait.lead, ChainWait.topic, ChainWait.lead.email.as_alias("email"),
        ChainWait.lead.erased_at.as_alias("erased_at"),
    ).order_by(ChainWait.id).limit(limit)
    if not any(c["fallback"] for c in live):
        query = query.where(ChainWait.topic.is_in([c["topic"] for c in live]))
    waiting = await query
    hashes = {email_hash(w["email"]) for w in waiting if w["email"]}
    suppressed = {
        s["email_hash"] for s in await Suppression.select(Suppression.email_hash).where(
            Suppression.email_hash.is_in(list(hashes) or [""]))
    }
    dues: list[EnrollmentDue] = []
    for row in waiting:
        async with ChainWait._meta.db.transaction():
            if not row["email"] or row["erased_at"] is not None or email_hash(row["email"]) in suppressed:
                await ChainWait.delete().where(ChainWait.id == row["id"])
                continue
            # Deleted first: enroll() puts the row back if the topic still has no chain for it.
            await ChainWait.delete().where(ChainWait.id == row["id"])
            due = await enroll(row["lead"], row["topic"], now)
        if due is not None:
            dues.append(due)
    return dues


async def refresh_waiting_counts() -> None:
    """Keep each ebook's count of waiting leads current for the admin's warning."""
    await Ebook.raw(
        "UPDATE ebook SET leads_waiting = (SELECT count(*) FROM chain_wait w WHERE w.topic = ebook.topic) "
        "WHERE leads_waiting <> (SELECT count(*) FROM chain_wait w WHERE w.topic = ebook.topic)"
    )


_HOT_CANDIDATES = """
SELECT s.lead AS lead, c.id AS chain, c.holdout_percent AS holdout, st.position AS position, st.delay_minutes AS delay
FROM score s
JOIN lead l ON l.id = s.lead
JOIN chain c ON c.topic = s.topic
JOIN step st ON st.chain = c.id AND st.position = (SELECT min(position) FROM step WHERE chain = c.id)
WHERE s.hot AND c.enroll_when_hot AND c.status = 'active' AND (c.starts_at IS NULL OR c.starts_at <= {now})
  AND l.email IS NOT NULL AND l.erased_at IS NULL AND NOT l.historical
  -- Only a lead that opted in to letters: confirmed, or signed up on a page without double
  -- opt-in (it then joined or waits for a chain). An unconfirmed sign-up gets nothing.
  AND (l.confirmed OR EXISTS (SELECT 1 FROM enrollment e WHERE e.lead = s.lead)
       OR EXISTS (SELECT 1 FROM chain_wait w WHERE w.lead = s.lead))
  AND NOT EXISTS (SELECT 1 FROM enrollment e WHERE e.lead = s.lead AND e.chain = c.id)
  AND NOT EXISTS (SELECT 1 FROM topic_preference p WHERE p.lead = s.lead AND p.topic = c.topic AND NOT p.subscribed)
  {only_lead}
ORDER BY s.lead
LIMIT {limit}
"""


async def enroll_hot(lead_id: int | None = None, now: datetime | None = None, limit: int = 1000) -> list[EnrollmentDue]:
    """Offer a topic's chain to leads that turned hot on that topic, wherever they came from
    (chains with `enroll_when_hot`). One lead after its rescoring, or everyone."""
    now = now or utcnow()
    query = _HOT_CANDIDATES.replace("{now}", "{}").replace("{limit}", str(int(limit)))
    args: list[object] = [now]
    if lead_id is None:
        query = query.replace("{only_lead}", "")
    else:
        query = query.replace("{only_lead}", "AND s.lead = {}")
        args.append(lead_id)
    rows = await Chain.raw(query, *args)
    if not rows:
        return []
    suppressed_leads = await _suppressed_leads([r["lead"] for r in rows])
    dues = []
    for row in rows:
        if row["lead"] in suppressed_leads:
            continue
        due = await insert_enrollment(row["lead"], row["chain"], row["holdout"], row["position"], row["delay"], "hot", now)
        if due is not None:
            dues.append(due)
    return dues


async def _suppressed_leads(lead_ids: list[int]) -> set[int]:
    leads = await Lead.select(Lead.id, Lead.email).where(Lead.id.is_in(lead_ids))
    by_hash = {email_hash(lead["email"]): lead["id"] for lead in leads if lead["email"]}
    if not by_hash:
        return set()
    rows = await Suppression.select(Suppression.email_hash).where(Suppression.email_hash.is_in(list(by_hash)))
    return {by_hash[r["email_hash"]] for r in rows}
