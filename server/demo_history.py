"""A past for the demo's leads: chain letters, opens, clicks, conversions, stage changes and score history."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
from piccolo.apps.user.tables import BaseUser
from piccolo.table import Table

from content.chains import assign_group, bucket, instant
from content.delivery import STAGE_RANK, email_hash, lead_context
from content.letters import render_letter
from content.tables import (
    Chain,
    Delivery,
    DeliveryStatus,
    Ebook,
    Enrollment,
    EnrollmentGroup,
    EnrollmentStatus,
    LandingPage,
    Offer,
    OfferKind,
    Step,
    StepKind,
    Suppression,
    SuppressionReason,
)
from content.tracking import track
from landing.outcomes import OUTCOME_STAGES
from landing.tables import Conversion, Event, Lead, LeadChange, LeadStage, Topic, Visitor
from scoring.service import active_model, cached_rules, cached_topics, compute_scores, load_batch, rescore_all
from scoring.tables import ScoreHistory
from server.settings import get_settings

HOLDOUT_PERCENT = 20
"""The demo team keeps a fifth of each chain's leads as a control group, so the results show a lift."""
LETTER_GAP = timedelta(days=2)
"""Between letters in the past; the demo chains' own delays are a minute so that a visitor trying the demo
sees the chain play out, which would squeeze months of history into minutes."""
DOUBLE_OPT_IN_CONFIRMED = 0.85
OPEN_RATE = {(1, ""): 0.52, (2, "A"): 0.38, (2, "B"): 0.48, (3, ""): 0.38, (4, ""): 0.33, (5, ""): 0.44}
"""Of the letters delivered, by position and version: letter 2's B subject ("Are you making this
… mistake?") does a bit better than A."""
CLICK_OF_OPENS = {(1, ""): 0.16, (2, "A"): 0.14, (2, "B"): 0.18, (3, ""): 0.22, (4, ""): 0.14}
"""Of the letters opened (the offers have no link: they ask for a reply)."""
BOUNCE_RATE = 0.02
"""Of first letters: a mistyped address bounces on the first letter (and sales never reached it)."""
UNSUBSCRIBE_RATE = 0.005
"""Of letters delivered."""
CONVERSION_RATE = {EnrollmentGroup.treatment: 0.15, EnrollmentGroup.control: 0.05}
ENGAGEMENT = {LeadStage.new: 0.9, LeadStage.contacted: 1.1, LeadStage.qualified: 1.4, LeadStage.won: 1.6,
              LeadStage.lost: 0.8}
"""Who opens and clicks: leads sales went on to win read more of their letters (the closed loop has something to show)."""
BUYING = {LeadStage.new: 0.7, LeadStage.contacted: 1.0, LeadStage.qualified: 1.5, LeadStage.won: 2.2,
          LeadStage.lost: 0.6}
"""Who converts."""
PRICING_VISITS = {LeadStage.contacted: (0, 1), LeadStage.qualified: (1, 2), LeadStage.won: (1, 3), LeadStage.lost: (0, 1)}
"""Visits to the pricing page before sales reached an outcome: leads that were won had looked."""
ANONYMOUS_VISITORS = 3
"""Browsers that never gave an address, per lead: about a quarter of the visitors become leads."""
NEW_LEADS_OWNED = 0.2
"""New leads sales took on but have not contacted yet."""
INSERT_CHUNK = 1000
"""Rows per INSERT, under SQLite's 32,766 parameters for the widest table here."""


def share(rate: float, n: int) -> int:
    """How many of `n` make `rate`, rounded half up: rates are met exactly, whatever the luck of a small demo."""
    return int(rate * n + 0.5)


def pick(rng: random.Random, items: Sequence[Any], k: int, weight: Callable[[Any], float]) -> list[Any]:
    """`k` of the items at random, each as likely as its weight (without replacement)."""
    keyed = [(rng.random() ** (1.0 / weight(item)), index) for index, item in enumerate(items)]
    return [items[index] for _, index in sorted(keyed, reverse=True)[:k]]


@dataclass(frozen=True)
class ChainInfo:
    """A topic's chain as the history needs it: its steps and offers, its topic's name and slug."""

    id: int
    name: str
    topic_id: int
    topic_name: str
    topic_slug: str
    holdout: int
    hot_threshold: int
    exit_stage: str
    steps: list[Step]
    offers: dict[str, Offer]


@dataclass
class Letter:
    """One planned ledger row."""

    step: Step
    version: str
    reserved_at: datetime
    bounced: bool = False
    opened_at: datetime | None = None
    clicked_at: datetime | None = None
    unsubscribed_at: datetime | None = None
    subject: str = ""
    links: list[str] = field(default_factory=list)
    delivery_id: int | None = None


@dataclass
class Past:
    """What happened to one demo lead."""

    lead: dict[str, Any]
    chain: ChainInfo
    changes: list[tuple[datetime, str, str, str]] = field(default_factory=list)
    """(when, field, old, new)."""
    owned: bool = False
    outcome_at: datetime | None = None
    confirmed_at: datetime | None = None
    enrolled_at: datetime | None = None
    group: EnrollmentGroup = EnrollmentGroup.treatment
    variant: str = "A"
    letters: list[Letter] = field(default_factory=list)
    status: EnrollmentStatus = EnrollmentStatus.active
    next_position: int = 1
    exit_reason: str = ""
    converted_at: datetime | None = None
    conversion: tuple[str, float] = ("order", 0.0)
    bounces: bool = False
    unsubscribes_after: int | None = None
    pricing_visits: list[datetime] = field(default_factory=list)

    def stage_at(self, moment: datetime) -> str:
        stage = LeadStage.new.value
        for when, name, _, new in self.changes:
            if name == "stage" and when <= moment:
                stage = new
        return stage


def _between(rng: random.Random, start: datetime, end: datetime, low: float = 0.0, high: float = 1.0) -> datetime:
    return start + (end - start) * rng.uniform(low, high)


def plan_stages(past: Past, rng: random.Random, now: datetime) -> None:
    """The stage changes that brought the lead to its stage today, and when sales took it on."""
    created, stage = past.lead["created_at"], past.lead["stage"]
    latest = now - timedelta(hours=1)
    path: list[str] = []
    if stage == LeadStage.contacted:
        path = ["contacted"]
    elif stage == LeadStage.qualified:
        path = ["contacted", "qualified"]
    elif stage == LeadStage.won:
        path = ["contacted", "qualified", "won"]
    elif stage == LeadStage.lost:
        path = ["contacted", "lost"] if rng.random() < 0.6 else ["contacted", "qualified", "lost"]
    if not path:
        if rng.random() < NEW_LEADS_OWNED:
            past.owned = True
            past.changes.append((_between(rng, created, latest, 0.3, 0.9), "owner", "", "sales"))
        return
    past.owned = True
    when = _between(rng, created, latest, 0.15, 0.45)
    past.changes.append((max(created, when - timedelta(minutes=rng.uniform(5, 120))), "owner", "", "sales"))
    previous = LeadStage.new.value
    for step in path:
        past.changes.append((when, "stage", previous, step))
        if step in OUTCOME_STAGES:
            past.outcome_at = when
        previous = step
        when = _between(rng, when, latest, 0.2, 0.6)
    decided = past.outcome_at or latest
    low, high = PRICING_VISITS[LeadStage(stage)]
    past.pricing_visits = sorted(_between(rng, created, decided, 0.1, 0.95) for _ in range(rng.randint(low, high)))


def plan_enrollment(past: Past, rng: random.Random) -> None:
    """The lead joins its topic's chain on capture (or on confirming its address), in the group
    and variant the real enrollment gives it."""
    lead, chain = past.lead, past.chain
    past.enrolled_at = (past.confirmed_at or lead["created_at"]) + timedelta(seconds=rng.uniform(1, 30))
    past.group = assign_group(chain.id, lead["id"], chain.holdout)
    past.variant = "A" if bucket("variant", chain.id, lead["id"]) < 50 else "B"


def plan_fates(pasts: list[Past], rng: random.Random, now: datetime) -> None:
    """Per chain and group, who converts (and when), whose address bounces and who unsubscribes."""
    by_group: dict[tuple[int, str], list[Past]] = defaultdict(list)
    for past in pasts:
        by_group[(past.chain.id, past.group)].append(past)
    for (_, group), members in sorted(by_group.items()):
        for past in pick(rng, members, share(CONVERSION_RATE[EnrollmentGroup(group)], len(members)),
                         lambda p: BUYING[LeadStage(p.lead["stage"])]):
            past.converted_at = _between(rng, past.enrolled_at, now - timedelta(minutes=30), 0.25, 0.95)
            past.conversion = (("booked call", 0.0) if rng.random() < 0.4
                               else ("order", float(rng.choice([490, 900, 1500, 2400, 4000]))))
        if group != EnrollmentGroup.treatment:
            continue
        # Mostly one bounce and one unsubscribe a chain: rare, but the results show what they look like.
        new = [p for p in members if p.lead["stage"] == LeadStage.new and p.converted_at is None]
        for past in pick(rng, new, max(1, share(BOUNCE_RATE, len(members))), lambda p: 1.0):
            past.bounces = True
        rest = [p for p in members if not p.bounces]
        for past in pick(rng, rest, max(1, share(UNSUBSCRIBE_RATE, 5 * len(members))), lambda p: 1.0):
            past.unsubscribes_after = rng.randint(1, len(past.chain.steps))


def plan_letters(past: Past, rng: random.Random, now: datetime) -> None:
    """The letters the sender sent the lead, and how its enrollment ended: each letter is due a
    couple of days after the one before, and the lead leaves the chain where the real sender
    would have made it leave (converted, taken to the exit stage, bounced, unsubscribed)."""
    chain = past.chain
    span = now - past.enrolled_at
    gap = min(LETTER_GAP, span * 0.8 / (1.15 * max(1, len(chain.steps) - 1)))
    when = past.enrolled_at
    past.status, past.exit_reason = EnrollmentStatus.completed, "finished"
    for step in chain.steps:
        when = when + timedelta(seconds=rng.uniform(20, 300)) if step.position == 1 else when + gap * rng.uniform(0.85, 1.15)
        past.next_position = step.position
        stage_now = past.stage_at(when)
        reason = ""
        if past.converted_at is not None and past.converted_at <= when:
            reason = "converted"
        elif chain.exit_stage and STAGE_RANK.get(stage_now, 0) >= STAGE_RANK.get(chain.exit_stage, 99):
            reason = f"stage {stage_now}"
        if reason:
            past.status, past.exit_reason = EnrollmentStatus.exited, reason
            return
        if step.kind == StepKind.offer:
            version = ""  # hot or cold: by the lead's score at `when`, once the earlier letters' opens are in
        elif step.subject_b.strip() or step.body_markdown_b.strip():
            version = past.variant
        else:
            version = ""
        letter = Letter(step, version, when)
        past.letters.append(letter)
        if past.bounces:
            letter.bounced = True
            past.status, past.exit_reason = EnrollmentStatus.exited, SuppressionReason.bounce.value
            return
        past.next_position = step.position + 1
        if past.unsubscribes_after == step.position:
            letter.unsubscribed_at = when + gap * rng.uniform(0.02, 0.3)
            past.status, past.exit_reason = EnrollmentStatus.exited, SuppressionReason.unsubscribe.value
            return
    past.next_position = chain.steps[-1].position


def plan_opens(pasts: list[Past], rng: random.Random, now: datetime) -> None:
    """Who opened and clicked which letter, at the rates above for each position and version."""
    delivered: dict[tuple[int, str], list[tuple[Past, Letter]]] = defaultdict(list)
    for past in pasts:
        for letter in past.letters:
            if not letter.bounced:
                delivered[(letter.step.position, letter.version)].append((past, letter))
    def engagement(item: tuple[Past, Letter]) -> float:
        return ENGAGEMENT[LeadStage(item[0].lead["stage"])]

    for key, letters in sorted(delivered.items()):
        opened = []
        for past, letter in pick(rng, letters, share(OPEN_RATE.get(key, 0.0), len(letters)), engagement):
            # Most opens within hours, some days later; none in the future.
            at = letter.reserved_at + timedelta(minutes=min(rng.expovariate(1 / 300), 3 * 24 * 60))
            if at < now:
                letter.opened_at = at
                opened.append((past, letter))
        for past, letter in pick(rng, opened, share(CLICK_OF_OPENS.get(key, 0.0), len(opened)), engagement):
            at = letter.opened_at + timedelta(seconds=rng.uniform(5, 600))
            letter.clicked_at = at if at < now else None


async def _insert(table: type[Table], rows: Sequence[Table], *returning: Any) -> list[dict[str, Any]]:
    """Insert in chunks; the rows named by `returning`, if any."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), INSERT_CHUNK):
        query = table.insert(*rows[start:start + INSERT_CHUNK])
        if returning:
            out += await query.returning(*returning)
        else:
            await query
    return out


async def _chains() -> dict[int, ChainInfo]:
    """Each topic's chain (the demo has one a topic), by topic id, with its steps and offers."""
    topics = {t["id"]: t for t in await Topic.select(Topic.id, Topic.name, Topic.slug)}
    steps: dict[int, list[Step]] = defaultdict(list)
    for step in await Step.objects().order_by(Step.position):
        steps[step.chain].append(step)
    offers: dict[int, dict[str, Offer]] = defaultdict(dict)
    for offer in await Offer.objects():
        offers[offer.chain][offer.kind] = offer
    out = {}
    for chain in await Chain.objects().order_by(Chain.id):
        topic = topics[chain.topic]
        out[chain.topic] = ChainInfo(chain.id, chain.name, chain.topic, topic["name"], topic["slug"], HOLDOUT_PERCENT,
                                     chain.hot_threshold, chain.exit_stage, steps[chain.id], offers[chain.id])
    return out


async def _render(pasts: list[Past], letters: list[Letter]) -> None:
    """Each letter's subject and links, as the sender renders them for its lead."""
    lead_rows = {r["id"]: r for r in await Lead.select(
        Lead.id, Lead.email, Lead.first_name, Lead.last_name, Lead.company, Lead.role).where(
        Lead.id.is_in([p.lead["id"] for p in pasts] or [-1]))}
    wanted = {id(letter) for letter in letters}
    cache: dict[tuple, tuple[str, list[str]]] = {}
    for past in pasts:
        lead = lead_rows[past.lead["id"]]
        chain = past.chain
        for letter in past.letters:
            if id(letter) not in wanted:
                continue
            step = letter.step
            if step.kind == StepKind.offer and letter.version in chain.offers:
                offer = chain.offers[letter.version]
                subject, body, url = offer.subject, offer.body_markdown, offer.call_to_action_url
            elif letter.version == "B":
                subject, body, url = step.subject_b.strip() or step.subject, step.body_markdown_b.strip() or step.body_markdown, ""
            else:
                subject, body, url = step.subject, step.body_markdown, ""
            key = (subject, body, url, chain.id) + tuple(lead[k] for k in ("email", "first_name", "last_name", "company", "role"))
            if key not in cache:
                context = lead_context(SimpleNamespace(**lead), SimpleNamespace(name=chain.topic_name, slug=chain.topic_slug),
                                       SimpleNamespace(name=chain.name))
                context |= {"unsubscribe_url": "", "preferences_url": "", "offer": {"url": url}}
                rendered = render_letter(subject, body, context, where=f"step {step.position}")
                cache[key] = (rendered.subject, track(rendered.html, 0).links)
            letter.subject, letter.links = cache[key]


def _bounce_reply(email: str) -> str:
    return f"550 5.1.1 <{email}>: Recipient address rejected: User unknown"


def _delivery(past: Past, letter: Letter, enrollment_id: int) -> Delivery:
    lead_id, email = past.lead["id"], past.lead["email"]
    if letter.bounced:
        # Refused at RCPT, before the letter's data: the sender records nothing but the reply.
        return Delivery(enrollment=enrollment_id, step=letter.step.id, lead=lead_id, variant="", links=[],
                        status=DeliveryStatus.bounced, offer_kind="", to_address=email, subject="",
                        smtp_reply=_bounce_reply(email), attempts=1, reserved_at=letter.reserved_at)
    offer_kind = letter.version if letter.step.kind == StepKind.offer else ""
    return Delivery(enrollment=enrollment_id, step=letter.step.id, lead=lead_id, variant="" if offer_kind else letter.version,
                    links=letter.links, status=DeliveryStatus.sent, offer_kind=offer_kind, to_address=email,
                    subject=letter.subject[:300], smtp_reply="250 2.0.0 Ok: queued", attempts=1,
                    reserved_at=letter.reserved_at, sent_at=letter.reserved_at + timedelta(seconds=1),
                    opened_at=letter.opened_at, clicked_at=letter.clicked_at)


def _letter_events(past: Past, letter: Letter) -> tuple[list[Event], list[Suppression]]:
    """An open or a click, an unsubscribe or a bounce, as tracking and the sender record them."""
    events, suppressions = [], []
    lead_id, email = past.lead["id"], past.lead["email"]
    where = {"delivery": letter.delivery_id, "step": letter.step.position}
    if letter.clicked_at is not None:
        # A click counts as the open too, on the ledger; its event is the click.
        events.append(Event(type="email_click", lead=lead_id, topic=past.chain.topic_id, occurred_at=letter.clicked_at,
                            properties=where | {"url": letter.links[0] if letter.links else ""}))
    elif letter.opened_at is not None:
        events.append(Event(type="email_open", lead=lead_id, topic=past.chain.topic_id, occurred_at=letter.opened_at,
                            properties=where))
    for reason, when, detail in ((SuppressionReason.bounce, letter.reserved_at if letter.bounced else None, _bounce_reply(email)),
                                 (SuppressionReason.unsubscribe, letter.unsubscribed_at, "one-click")):
        if when is not None:
            events.append(Event(type=reason.value, lead=lead_id, occurred_at=when, properties={"detail": detail[:200]}))
            suppressions.append(Suppression(email_hash=email_hash(email), reason=reason, detail=detail, created_at=when))
    return events, suppressions


async def _write_letters(pasts: list[Past], letters: list[Letter], enrollment_of: dict[int, int]) -> None:
    """The ledger rows of these letters, then what their leads did with them."""
    await _render(pasts, letters)
    wanted = {id(letter) for letter in letters}
    mine = [(past, letter) for past in pasts for letter in past.letters if id(letter) in wanted]
    rows = await _insert(Delivery, [_delivery(past, letter, enrollment_of[past.lead["id"]]) for past, letter in mine],
                         Delivery.id, Delivery.enrollment, Delivery.step)
    delivery_of = {(r["enrollment"], r["step"]): r["id"] for r in rows}
    events: list[Event] = []
    suppressions: list[Suppression] = []
    for past, letter in mine:
        letter.delivery_id = delivery_of[(enrollment_of[past.lead["id"]], letter.step.id)]
        more_events, more_suppressions = _letter_events(past, letter)
        events += more_events
        suppressions += more_suppressions
    await _insert(Event, events)
    await _insert(Suppression, suppressions)
    # The Message-ID the sender would have given each letter (message_id_for), made from the new ids.
    ids = [letter.delivery_id for _, letter in mine if not letter.bounced]
    for start in range(0, len(ids), INSERT_CHUNK):
        chunk = ids[start:start + INSERT_CHUNK]
        await Delivery.raw(
            "UPDATE delivery SET message_id = '<lk.' || CAST(id AS TEXT) || '.' || CAST(enrollment AS TEXT) || '.' || "
            "CAST((SELECT position FROM step WHERE step.id = delivery.step) AS TEXT) || {} "
            f"WHERE id IN ({', '.join(['{}'] * len(chunk))})", f"@{get_settings().mail_domain}>", *chunk)


Moment = tuple[int, datetime]
"""A lead and a moment to score it at."""


async def _scorer(lead_ids: list[int], now: datetime) -> Callable[[list[Moment]], list[dict[int, float]]]:
    """A function giving the combined score per topic of each (lead, moment), from the leads and
    their events as they are now: what rescoring the lead at that moment would have given."""
    rules = await cached_rules(fresh=True)
    topics = await cached_topics(fresh=True)
    model = await active_model(fresh=True)
    property_types = {r.event_type for r in rules if r.property_match and r.kind == "event"}
    leads, events, _ = await load_batch(f"id IN ({', '.join(['{}'] * len(lead_ids))})", list(lead_ids), now,
                                        property_types)
    row_of = {int(lead_id): i for i, lead_id in enumerate(leads.ids)}
    events_of: dict[int, list[int]] = defaultdict(list)
    for index, row in enumerate(events.lead_row.tolist()):
        events_of[row].append(index)

    def scores_at(moments: list[Moment]) -> list[dict[int, float]]:
        # One scoring call for every moment: a lead appears once per moment, with its events
        # repeated, and the engine ignores the events after each row's moment.
        rows = [row_of[lead_id] for lead_id, _ in moments]
        picked = [index for row in rows for index in events_of[row]]
        owner = [k for k, row in enumerate(rows) for _ in events_of[row]]
        replayed = replace(
            leads, ids=leads.ids[rows], created=leads.created[rows],
            # A second late: event times come back from SQL with float rounding, and a rescoring
            # set off by an event always runs after it.
            as_of=np.array([moment.timestamp() + 1.0 for _, moment in moments], dtype=float),
            attributes=[leads.attributes[r] for r in rows], sources=[leads.sources[r] for r in rows],
            first_touch=[leads.first_touch[r] for r in rows])
        replayed_events = replace(
            events, lead_row=np.array(owner, dtype=np.int64), type_code=events.type_code[picked],
            topic=events.topic[picked], ts=events.ts[picked], pricing=events.pricing[picked],
            properties=None if events.properties is None else [events.properties[i] for i in picked])
        out: list[dict[int, float]] = [{} for _ in moments]
        for k, score in enumerate(compute_scores(replayed, replayed_events, rules, topics, model, explain_model="none")):
            out[k % len(moments)][score.topic] = score.combined
        return out

    return scores_at


async def _score_history(pasts: list[Past], now: datetime) -> list[tuple[int, int, float, datetime]]:
    """Each lead's score history as rescoring on each event and the hourly rescoring keep it (a
    row when a score moved half a point): (lead, topic, combined, computed_at), sampled at each
    of the lead's events and twice a week."""
    lead_ids = [p.lead["id"] for p in pasts]
    if not lead_ids:
        return []
    scores_at = await _scorer(lead_ids, now)
    event_times: dict[int, set[datetime]] = defaultdict(set)
    for row in await Event.select(Event.lead, Event.occurred_at).where(Event.lead.is_in(lead_ids)):
        event_times[row["lead"]].add(instant(row["occurred_at"]))
    moments: list[Moment] = []
    for past in pasts:
        created = past.lead["created_at"]
        sampled = {created + timedelta(days=d) for d in range(0, (now - created).days + 1, 3)}
        moments += [(past.lead["id"], t) for t in sorted(sampled | event_times[past.lead["id"]])
                    if created <= t < now - timedelta(minutes=1)]
    rows = []
    last: dict[tuple[int, int], float] = {}
    for (lead_id, moment), scores in zip(moments, scores_at(moments)):
        for topic_id, combined in scores.items():
            before = last.get((lead_id, topic_id))
            if before is None or abs(before - combined) >= 0.5:
                last[(lead_id, topic_id)] = combined
                rows.append((lead_id, topic_id, combined, moment))
    return rows


async def _insert_score_history(rows: list[tuple[int, int, float, datetime]]) -> None:
    """Raw multi-row inserts, as scoring writes its history: thousands of rows."""
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start:start + INSERT_CHUNK]
        await ScoreHistory.raw("INSERT INTO score_history (lead, topic, combined, computed_at) VALUES "
                               + ", ".join(["({}, {}, {}, {})"] * len(chunk)), *[v for row in chunk for v in row])


def _visitors(pasts: list[Past], rng: random.Random, now: datetime) -> list[Visitor]:
    """The browsers behind the leads (first seen a little before their capture), and the many
    that looked at a landing page and left without giving an address."""
    def cookie() -> str:
        return "%032x" % rng.getrandbits(128)

    agent = "Mozilla/5.0 (demo)"
    rows = []
    for past in pasts:
        seen = past.lead["created_at"] - timedelta(minutes=rng.uniform(1, 20))
        rows.append(Visitor(cookie_id=cookie(), lead=past.lead["id"], user_agent=agent, first_seen_at=seen,
                            last_seen_at=past.lead["created_at"]))
    oldest = min((p.lead["created_at"] for p in pasts), default=now)
    for _ in range(ANONYMOUS_VISITORS * len(pasts)):
        seen = _between(rng, oldest, now - timedelta(minutes=5))
        rows.append(Visitor(cookie_id=cookie(), user_agent=agent, first_seen_at=seen,
                            last_seen_at=seen + timedelta(minutes=rng.uniform(0, 15))))
    return rows


async def seed_history(demo_leads: list[tuple[int, int]], now: datetime, seed: int = 7) -> None:
    """Give the demo leads, (lead id, topic id) each, a deterministic past; then score them as of now.

    Rows are built in memory and inserted in bulk, in one transaction: the demo starts in seconds.
    """
    rng = random.Random(f"demo history {seed}")
    chains = await _chains()
    sales = await BaseUser.select(BaseUser.id).where(BaseUser.username == "sales").first()
    sales_id = sales["id"] if sales else None
    topic_of = dict(demo_leads)
    lead_rows = await Lead.select(Lead.id, Lead.email, Lead.stage, Lead.created_at).where(
        Lead.id.is_in(list(topic_of) or [-1])).order_by(Lead.id)
    double_opt_in = {row["ebook.topic"] for row in await LandingPage.select(LandingPage.ebook.topic).where(
        LandingPage.double_opt_in == True)}  # noqa: E712

    pasts: list[Past] = []
    confirmations: list[Event] = []
    for lead in lead_rows:
        lead["created_at"] = instant(lead["created_at"])
        chain = chains.get(topic_of[lead["id"]])
        if chain is None:
            continue
        past = Past(lead, chain)
        pasts.append(past)
        plan_stages(past, rng, now)
        if chain.topic_id in double_opt_in:
            if rng.random() >= DOUBLE_OPT_IN_CONFIRMED:
                continue  # never confirmed its address: never enrolled
            past.confirmed_at = lead["created_at"] + timedelta(minutes=rng.uniform(2, 180))
            confirmations.append(Event(type="confirmed", lead=lead["id"], topic=chain.topic_id,
                                       occurred_at=past.confirmed_at, properties={}))
        plan_enrollment(past, rng)
    enrolled = [p for p in pasts if p.enrolled_at is not None]
    plan_fates(enrolled, rng, now)
    for past in enrolled:
        if past.group == EnrollmentGroup.treatment:
            plan_letters(past, rng, now)
    plan_opens(enrolled, rng, now)
    topic_ids = list(chains)

    async with Lead._meta.db.transaction():
        # The catalogue predates its leads.
        oldest = min((p.lead["created_at"] for p in pasts), default=now) - timedelta(days=3)
        await Chain.update({Chain.holdout_percent: HOLDOUT_PERCENT, Chain.created_at: oldest}).where(
            Chain.id.is_in([c.id for c in chains.values()] or [-1]))
        await Topic.update({Topic.created_at: oldest}).where(Topic.id.is_in(topic_ids or [-1]))
        await Ebook.update({Ebook.created_at: oldest}).where(Ebook.topic.is_in(topic_ids or [-1]))
        await LandingPage.update({LandingPage.created_at: oldest}).where(LandingPage.ebook.is_in(
            Ebook.select(Ebook.id).where(Ebook.topic.is_in(topic_ids or [-1]))))

        rows = await _insert(Enrollment, [
            Enrollment(lead=p.lead["id"], chain=p.chain.id, group=p.group, variant=p.variant, status=p.status,
                       next_position=p.next_position, due_at=None, exit_reason=p.exit_reason, reason="download",
                       enrolled_at=p.enrolled_at)
            for p in enrolled], Enrollment.id, Enrollment.lead)
        enrollment_of = {r["lead"]: r["id"] for r in rows}
        await _insert(Visitor, _visitors(pasts, rng, now))
        await _insert(Event, confirmations + [
            Event(type="page_view", lead=p.lead["id"], topic=p.chain.topic_id, occurred_at=when,
                  properties={"url": f"/services/{p.chain.topic_slug}/pricing"})
            for p in pasts for when in p.pricing_visits])

        # The letters before the offer first: the offer is hot or cold by the score they leave.
        await _write_letters(enrolled, [x for p in enrolled for x in p.letters if x.step.kind != StepKind.offer],
                             enrollment_of)
        offers = {p.lead["id"]: x for p in enrolled for x in p.letters if x.step.kind == StepKind.offer}
        if offers:
            moments = [(lead_id, letter.reserved_at) for lead_id, letter in offers.items()]
            scores = (await _scorer(list(offers), now))(moments)
            chain_of = {p.lead["id"]: p.chain for p in enrolled}
            for (lead_id, _), score in zip(moments, scores):
                chain = chain_of[lead_id]
                hot = score.get(chain.topic_id, 0.0) >= chain.hot_threshold
                offers[lead_id].version = OfferKind.hot.value if hot else OfferKind.cold.value
            await _write_letters(enrolled, list(offers.values()), enrollment_of)

        await _insert(Conversion, [
            Conversion(lead=p.lead["id"], kind=p.conversion[0], value=p.conversion[1], occurred_at=p.converted_at)
            for p in pasts if p.converted_at is not None])
        # Kept as change_outcome keeps them, but written in bulk and in the past: replaying them
        # through it would take a transaction a change, each stamped with one moment.
        await _insert(LeadChange, [
            LeadChange(lead=p.lead["id"], field=name, old_value=old, new_value=new, changed_by=sales_id,
                       changed_by_name="sales", via="demo", changed_at=when)
            for p in pasts for when, name, old, new in p.changes if name == "stage" or sales_id is not None])
        if sales_id is not None:
            await Lead.update({Lead.owner: sales_id}).where(Lead.id.is_in([p.lead["id"] for p in pasts if p.owned] or [-1]))
        for topic_id in topic_ids:
            await Lead.update({Lead.topic: topic_id}).where(
                Lead.id.is_in([p.lead["id"] for p in pasts if p.chain.topic_id == topic_id] or [-1]))
        confirmed = [p.lead["id"] for p in pasts if p.confirmed_at is not None]
        if confirmed:
            await Lead.update({Lead.confirmed: True}).where(Lead.id.is_in(confirmed))
        for past in pasts:
            if past.outcome_at is not None:
                await Lead.update({Lead.outcome_at: past.outcome_at}).where(Lead.id == past.lead["id"])

        await _insert_score_history(await _score_history(pasts, now))
    await rescore_all(now)
    await _settle_for_live_visitors(chains.values(), [p.lead["id"] for p in pasts], rng, now)


async def _settle_for_live_visitors(chains, lead_ids: list[int], rng: random.Random, now: datetime) -> None:
    """What the past needed but someone trying the demo should not meet: the holdout goes back to 0
    (the past control group stays, so the results still show a lift; a visitor always gets the
    chain's letters), and the demo leads' crossings into hot are history, not news: sales are
    not sent thirty alerts the moment the demo starts (the hand-off announces only the last day)."""
    from scoring.service import BECAME_HOT

    await Chain.update({Chain.holdout_percent: 0}).where(Chain.id.is_in([c.id for c in chains] or [-1]))
    crossings = await Event.select(Event.id, Event.lead.created_at.as_alias("created_at")).where(
        (Event.type == BECAME_HOT) & Event.lead.is_in(lead_ids or [-1]))
    latest = now - timedelta(days=1, hours=6)
    for row in crossings:
        created = instant(row["created_at"])
        # After the lead came, and older than the hand-off's one-day window when the lead allows.
        when = created + (latest - created) * rng.uniform(0.3, 1.0) if created < latest else created
        await Event.update({Event.occurred_at: when}).where(Event.id == row["id"])
