"""The content team's numbers: the overall funnel, weekly cohorts by source, the chains at a glance and the warnings."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from statistics import NormalDist

from content.chains import instant
from content.delivery import lead_context
from content.experiments import Comparison, compare, format_p, format_rate
from content.letters import LetterTemplateError, render_letter
from content.results import SAMPLE_LEAD
from content.tables import (
    Chain,
    ChainStatus,
    ChainWait,
    Ebook,
    LandingPage,
    Offer,
    Step,
    Suppression,
    SuppressionReason,
)
from landing.tables import Lead, Topic, Visitor

# ----------------------------------------------------------------------------- periods


@dataclass(frozen=True)
class Period:
    """A dashboard period: the last `days` days, or everything (`days` None)."""

    key: str
    days: int | None
    label: str

    def since(self, now: datetime) -> datetime | None:
        return now - timedelta(days=self.days) if self.days is not None else None


PERIODS = (Period("7", 7, "Last 7 days"), Period("30", 30, "Last 30 days"), Period("90", 90, "Last 90 days"),
           Period("all", None, "All time"))
DEFAULT_PERIOD = PERIODS[1]


class PeriodError(ValueError):
    """A period the dashboard does not offer; the message says which ones it does."""


def parse_period(value: str | None) -> Period:
    """`7`, `30`, `90` or `all` (also `30d`); nothing given is the last 30 days."""
    if value is None or not value.strip():
        return DEFAULT_PERIOD
    key = value.strip().lower().removesuffix("d")
    for period in PERIODS:
        if period.key == key:
            return period
    shown = value if len(value) <= 40 else value[:40] + "…"
    raise PeriodError(f"{shown!r} is not a period the dashboard offers: choose 7, 30 or 90 (days) or all.")


# ----------------------------------------------------------------------------- the funnel

ENGAGED_EVENTS = ("email_open", "email_click", "reply", "chat", "page_view", "pricing_view", "click", "video_play",
                  "form_submit")
"""Events that make a lead engaged when they come after its capture: a letter opened or clicked, a
reply, a visit back to the site, another form. A download is not among them (the ebook itself
follows every capture) nor is a double opt-in confirmation (that is the `confirmed` stage)."""

STAGE_HELP = {
    "visitors": "Browsers (first-party cookie) first seen in the period, on a landing page or on the site "
                "through the tracking snippet.",
    "leads": "Leads captured in the period: a new email from a landing page, the API or a CSV import "
             "(leads imported without an email, for model training only, are left out).",
    "confirmed": "Of those, the ones who opted in: confirmed their address by double opt-in, or signed up on a "
                 "page without double opt-in (they got the ebook's download link).",
    "engaged": "Of those, the ones who opened or clicked a letter, replied, or came back to the site "
               "(a page view, a pricing visit, another form) after their capture.",
    "hot": "Of those, the ones hot on any topic now (the combined score is at or over the topic's threshold).",
    "won": "Of those, the ones sales marked won.",
}
"""What each funnel stage counts, shown on the dashboard. Each stage is counted on its own among
the period's leads, so a lead sales won without opening a letter is still won."""


@dataclass(frozen=True)
class LeadCounts:
    """How many of a group of leads reached each stage."""

    leads: int = 0
    confirmed: int = 0
    engaged: int = 0
    hot: int = 0
    won: int = 0

    def __add__(self, other: LeadCounts) -> LeadCounts:
        return LeadCounts(self.leads + other.leads, self.confirmed + other.confirmed, self.engaged + other.engaged,
                          self.hot + other.hot, self.won + other.won)

    def share(self, stage: str) -> float | None:
        """The stage's count over the leads (None without leads)."""
        return getattr(self, stage) / self.leads if self.leads else None

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> LeadCounts:
        return cls(*(int(row.get(name) or 0) for name in ("leads", "confirmed", "engaged", "hot", "won")))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Funnel:
    period: Period
    visitors: int
    counts: LeadCounts

    def stages(self) -> list[tuple[str, int]]:
        """(label, count) from visitors to won, as the funnel chart draws them."""
        c = self.counts
        return [("Visitors", self.visitors), ("Leads", c.leads), ("Confirmed", c.confirmed), ("Engaged", c.engaged),
                ("Hot", c.hot), ("Won", c.won)]


def _stage_sums() -> str:
    """SUM columns for the stages of the leads `l`, one pass over the leads, the rest by index."""
    engaged = ", ".join(f"'{name}'" for name in ENGAGED_EVENTS)
    return f"""
  count(*) AS leads,
  SUM(CASE WHEN l.confirmed OR EXISTS (SELECT 1 FROM download_link dl WHERE dl.lead = l.id) THEN 1 ELSE 0 END) AS confirmed,
  SUM(CASE WHEN EXISTS (SELECT 1 FROM event e WHERE e.lead = l.id AND e.type IN ({engaged})
                        AND e.occurred_at > l.created_at)
             OR EXISTS (SELECT 1 FROM enrollment en JOIN delivery d ON d.enrollment = en.id WHERE en.lead = l.id
                        AND (d.opened_at IS NOT NULL OR d.clicked_at IS NOT NULL))
           THEN 1 ELSE 0 END) AS engaged,
  SUM(CASE WHEN EXISTS (SELECT 1 FROM score s WHERE s.lead = l.id AND s.hot) THEN 1 ELSE 0 END) AS hot,
  SUM(CASE WHEN l.stage = 'won' THEN 1 ELSE 0 END) AS won"""


def _engine() -> str:
    return Lead._meta.db.engine_type


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


async def lead_funnel(period: Period, now: datetime | None = None) -> Funnel:
    """Visitors → leads → confirmed → engaged → hot → won for the period, in two queries."""
    now = now or datetime.now(timezone.utc)
    since = period.since(now) or EPOCH
    rows = await Lead.raw(f"SELECT {_stage_sums()} FROM lead l WHERE NOT l.historical AND l.created_at >= {{}}",
                          since)
    visitors = await Visitor.count().where(Visitor.first_seen_at >= since)
    return Funnel(period, visitors, LeadCounts.from_row(rows[0] if rows else {}))


# ----------------------------------------------------------------------------- cohorts

COHORT_WEEKS = 12


def week_start(day: date) -> date:
    """The Monday that starts `day`'s week."""
    return day - timedelta(days=day.weekday())


def cohort_weeks(today: date, weeks: int = COHORT_WEEKS) -> list[date]:
    """The Mondays of the last `weeks` weeks, this one first."""
    this_week = week_start(today)
    return [this_week - timedelta(weeks=n) for n in range(weeks)]


NO_SOURCE = "(none)"


@dataclass(frozen=True)
class CohortRow:
    """The leads of one source captured in one week (`week` None: all the weeks shown)."""

    week: date | None
    source: str
    counts: LeadCounts


@dataclass(frozen=True)
class CohortWeek:
    week: date
    rows: list[CohortRow]
    """One per source, the biggest first; empty for a week without new leads."""
    total: LeadCounts


def _as_date(value: object) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def build_cohorts(rows: Iterable[Mapping[str, object]], weeks: Sequence[date]) -> list[CohortWeek]:
    """Rows of (week, source, stage counts) into one entry per week of `weeks`, in that order,
    with every week present (a week without leads shows as such); rows of other weeks are left out."""
    by_week: dict[date, dict[str, LeadCounts]] = {week: {} for week in weeks}
    for row in rows:
        week = week_start(_as_date(row["week"]))
        if week not in by_week:
            continue
        source = str(row.get("source") or "").strip() or NO_SOURCE
        sources = by_week[week]
        sources[source] = sources.get(source, LeadCounts()) + LeadCounts.from_row(row)
    result = []
    for week in weeks:
        sources = by_week[week]
        ordered = sorted(sources.items(), key=lambda item: (-item[1].leads, item[0]))
        total = sum((counts for _, counts in ordered), LeadCounts())
        result.append(CohortWeek(week, [CohortRow(week, source, counts) for source, counts in ordered], total))
    return result


def source_totals(weeks: Iterable[CohortWeek]) -> list[CohortRow]:
    """Each source's leads over all the weeks, the biggest first: do sources behave differently?"""
    totals: dict[str, LeadCounts] = {}
    for week in weeks:
        for row in week.rows:
            totals[row.source] = totals.get(row.source, LeadCounts()) + row.counts
    return [CohortRow(None, source, counts)
            for source, counts in sorted(totals.items(), key=lambda item: (-item[1].leads, item[0]))]


@dataclass(frozen=True)
class QuietWeeks:
    """A run of consecutive weeks without new leads, shown as one line: `newest` back to `oldest`."""

    newest: date
    oldest: date

    @property
    def weeks(self) -> int:
        return (self.newest - self.oldest).days // 7 + 1


def cohort_runs(weeks: Sequence[CohortWeek]) -> list[CohortWeek | QuietWeeks]:
    """The weeks as the cohort table lists them, in their order (newest first): each week with new
    leads, and each run of weeks without any collapsed into one QuietWeeks."""
    runs: list[CohortWeek | QuietWeeks] = []
    for week in weeks:
        last = runs[-1] if runs else None
        if week.rows:
            runs.append(week)
        elif isinstance(last, QuietWeeks):
            runs[-1] = QuietWeeks(max(last.newest, week.week), min(last.oldest, week.week))
        else:
            runs.append(QuietWeeks(week.week, week.week))
    return runs


def _week_sql(engine: str) -> str:
    """The Monday (UTC) of the lead's capture, as YYYY-MM-DD text, in the engine's own dialect."""
    if engine == "postgres":
        return "to_char(date_trunc('week', l.created_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD')"
    # SQLite keeps timestamps as UTC text; 'weekday 0' moves to the Sunday ending the week.
    return "date(substr(l.created_at, 1, 10), 'weekday 0', '-6 days')"


async def lead_cohorts(now: datetime | None = None, weeks: int = COHORT_WEEKS) -> list[CohortWeek]:
    """New leads per week of capture and source, with each stage's count, for the last `weeks` weeks."""
    now = now or datetime.now(timezone.utc)
    mondays = cohort_weeks(now.astimezone(timezone.utc).date(), weeks)
    since = datetime.combine(mondays[-1], time(), tzinfo=timezone.utc)
    week = _week_sql(_engine())
    rows = await Lead.raw(
        f"SELECT {week} AS week, l.source AS source, {_stage_sums()} FROM lead l "
        f"WHERE NOT l.historical AND l.created_at >= {{}} GROUP BY {week}, l.source", since)
    return build_cohorts(rows, mondays)


# ----------------------------------------------------------------------------- chains at a glance


def chain_state(status: str, starts_at: datetime | None, now: datetime) -> str:
    """draft, active, paused or scheduled (active, with a start still to come)."""
    if status == ChainStatus.active and starts_at is not None and instant(starts_at) > now:
        return "scheduled"
    return str(status.value if isinstance(status, ChainStatus) else status)


@dataclass
class ChainSummary:
    """One chain's line on the chains page."""

    id: int
    name: str
    topic: str
    status: str
    state: str
    """draft, active, paused or scheduled."""
    starts_at: datetime | None
    is_fallback: bool
    check_error: str
    steps: int = 0
    enrolled: dict[str, int] = field(default_factory=lambda: {"treatment": 0, "control": 0})
    converted: dict[str, int] = field(default_factory=lambda: {"treatment": 0, "control": 0})
    """Leads per group with a conversion after they joined (as on the results page)."""
    letters_sent: int = 0
    """Handed to the relay (sent, or maybe: `unknown`), as the results page counts them."""
    bounced: int = 0

    @property
    def total_enrolled(self) -> int:
        return sum(self.enrolled.values())

    def conversion_rate(self, group: str) -> float | None:
        return self.converted[group] / self.enrolled[group] if self.enrolled.get(group) else None

    @property
    def experiment(self) -> Comparison | None:
        """Treatment against control, when both groups have leads."""
        if not (self.enrolled["treatment"] and self.enrolled["control"]):
            return None
        return compare(self.converted["treatment"], self.enrolled["treatment"],
                       self.converted["control"], self.enrolled["control"])


_ENROLLMENT_GROUPS = """
SELECT e.chain AS chain, e."group" AS grp, count(*) AS enrolled,
       SUM(CASE WHEN EXISTS (SELECT 1 FROM conversion cv WHERE cv.lead = e.lead AND cv.occurred_at >= e.enrolled_at)
           THEN 1 ELSE 0 END) AS converted
FROM enrollment e GROUP BY e.chain, e."group"
"""
_CHAIN_LETTERS = """
SELECT s.chain AS chain,
       SUM(CASE WHEN d.status IN ('sent', 'unknown') THEN 1 ELSE 0 END) AS sent,
       SUM(CASE WHEN d.status = 'bounced' THEN 1 ELSE 0 END) AS bounced
FROM delivery d JOIN step s ON s.id = d.step GROUP BY s.chain
"""
_CHAIN_STEPS = "SELECT chain, count(*) AS steps FROM step GROUP BY chain"


async def chain_summaries(now: datetime | None = None) -> list[ChainSummary]:
    """Every chain with its enrollments, conversions per group and letters: four grouped queries."""
    now = now or datetime.now(timezone.utc)
    chains = await Chain.select(
        Chain.id, Chain.name, Chain.status, Chain.starts_at, Chain.is_fallback, Chain.check_error,
        Chain.topic.name.as_alias("topic_name"),
    ).order_by(Chain.topic.name).order_by(Chain.name)
    summaries = {
        c["id"]: ChainSummary(c["id"], c["name"], c["topic_name"] or "", c["status"],
                              chain_state(c["status"], c["starts_at"], now), c["starts_at"], bool(c["is_fallback"]),
                              c["check_error"] or "")
        for c in chains
    }
    for row in await Chain.raw(_ENROLLMENT_GROUPS):
        summary = summaries.get(row["chain"])
        if summary is not None and row["grp"] in summary.enrolled:
            summary.enrolled[row["grp"]] = int(row["enrolled"] or 0)
            summary.converted[row["grp"]] = int(row["converted"] or 0)
    for row in await Chain.raw(_CHAIN_LETTERS):
        summary = summaries.get(row["chain"])
        if summary is not None:
            summary.letters_sent, summary.bounced = int(row["sent"] or 0), int(row["bounced"] or 0)
    for row in await Chain.raw(_CHAIN_STEPS):
        if row["chain"] in summaries:
            summaries[row["chain"]].steps = int(row["steps"])
    return list(summaries.values())


@dataclass(frozen=True)
class SubjectLine:
    """A step version's subject as the page shows it: rendered for the chain's topic and the sample
    lead, or, when the template does not render, the raw text with the renderer's error."""

    text: str
    raw: str
    error: str = ""

    @property
    def rendered(self) -> bool:
        return not self.error

    def __str__(self) -> str:
        return self.text


def render_subject(raw: str, context: Mapping[str, object], where: str) -> SubjectLine:
    """`raw` through the letters' own sandboxed renderer (the subject alone: the body is not needed)."""
    try:
        return SubjectLine(render_letter(raw, "", dict(context), where).subject, raw)
    except LetterTemplateError as exc:
        return SubjectLine(raw, raw, str(exc))


def sample_context(topic: Topic | None, chain: Chain | None) -> dict[str, object]:
    """What a letter's template sees for the sample lead the step preview uses, on this chain's topic."""
    return lead_context(SAMPLE_LEAD, topic, chain) | {
        "unsubscribe_url": "https://example.com/u/sample", "preferences_url": "https://example.com/p/sample",
        "offer": {"url": "https://example.com/offer"}}


async def version_subjects(chain_id: int) -> dict[tuple[int, str], SubjectLine]:
    """The subject each step version sends, keyed as the results are: (position, "" / "A" / "B" /
    "hot" / "cold"), rendered for the chain's topic and the sample lead. Variant B without a subject
    of its own sends A's."""
    chain = await Chain.objects().where(Chain.id == chain_id).first()
    topic = await Topic.objects().where(Topic.id == chain.topic).first() if chain is not None else None
    context = sample_context(topic, chain)
    raw: dict[tuple[int, str], str] = {}
    for step in await Step.select(Step.position, Step.subject, Step.subject_b).where(Step.chain == chain_id):
        for version in ("", "A"):
            raw[(step["position"], version)] = step["subject"]
        raw[(step["position"], "B")] = step["subject_b"].strip() or step["subject"]
    offers = {o["kind"]: o["subject"] for o in await Offer.select(Offer.kind, Offer.subject).where(Offer.chain == chain_id)}
    for (position, version) in list(raw):
        if version == "":
            for kind, subject in offers.items():
                raw.setdefault((position, kind), subject)
    return {(position, version): render_subject(
                subject, context, f"step {position}" + (f" {version}" if version else ""))
            for (position, version), subject in raw.items()}


# ----------------------------------------------------------------------------- A/B and lift in plain words


def sample_size_per_group(rate_a: float, rate_b: float, confidence: float = 0.95, power: float = 0.8) -> int | None:
    """Leads each group needs for a two-sided test at `confidence` to detect the difference between
    these rates with `power` (the normal approximation); None when the rates are equal."""
    if rate_a == rate_b:
        return None
    z = NormalDist().inv_cdf(0.5 + confidence / 2) + NormalDist().inv_cdf(power)
    variance = rate_a * (1 - rate_a) + rate_b * (1 - rate_b)
    return max(math.ceil(z * z * variance / (rate_a - rate_b) ** 2), 1)


def verdict(result: Comparison | None, sizes: tuple[int, int], *, first: str = "B", second: str = "A",
            what: str = "click rate", successes: int | None = None, unit: str = "leads") -> str:
    """What a two-group comparison says, in words that do not claim more than the data: `first`
    against `second` (treatment against control, B against A), with the sizes of both groups
    (counted in `unit`: leads, or letters for a click rate) and the successes in both together."""
    if result is None or min(sizes) == 0:
        return f"No comparison yet: {first} and {second} both need {unit} first."
    p = format_p(result.p_value)
    if result.significant:
        direction = "higher" if result.difference > 0 else "lower"
        return (f"{first}'s {what} is {direction} than {second}'s ({p}): "
                f"{100 * result.difference:+.1f} percentage points, {result.confidence:.0%} interval "
                f"{100 * result.low:+.1f} to {100 * result.high:+.1f}. Unlikely to be chance; the true size may be "
                f"anywhere in that interval.")
    if successes is not None and successes < 10:
        return (f"Not significant yet ({p}): only {successes} {'success' if successes == 1 else 'successes'} in "
                f"{sum(sizes):,} {unit}, far too few to judge.")
    needed = sample_size_per_group(result.control_rate, result.treatment_rate, result.confidence)
    if needed is None:
        return f"No difference seen ({p}) with {sizes[0]:,} and {sizes[1]:,} {unit}."
    if min(sizes) < needed:
        return (f"Not significant yet ({p}): n too small. A difference this size needs about {needed:,} {unit} "
                f"in each group to show reliably; there are {sizes[0]:,} and {sizes[1]:,}.")
    return f"No significant difference ({p}) with {sizes[0]:,} and {sizes[1]:,} {unit}: any effect is likely small."


# ----------------------------------------------------------------------------- warnings

CHAIN_FORM = "/admin/#/forms/activate,-schedule-or-pause-a-chain/"


def admin_row(table: str, row_id: int) -> str:
    """The admin's page for one row (piccolo-admin's hash route)."""
    return f"/admin/#/{table}/{int(row_id)}/"


@dataclass(frozen=True)
class ContentWarning:
    """Something the content team should fix; `subject` is data (a title, a name) and is escaped
    where shown, `text` says what is wrong, `links` lead to where it is fixed."""

    kind: str
    """no_chain, chain_scheduled, template_error, bounce_rate or complaint_rate."""
    severity: str
    """err (act now) or warn."""
    subject: str
    text: str
    links: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EbookCoverage:
    """An ebook, the published pages that collect leads for it and the leads waiting on its topic."""

    id: int
    title: str
    topic_id: int
    topic: str
    pages: tuple[str, ...]
    """Slugs of its published landing pages."""
    waiting: int


@dataclass(frozen=True)
class ChainPlan:
    id: int
    name: str
    topic_id: int
    status: str
    starts_at: datetime | None
    is_fallback: bool

    def live(self, now: datetime) -> bool:
        return self.status == ChainStatus.active and (self.starts_at is None or instant(self.starts_at) <= now)

    def scheduled(self, now: datetime) -> bool:
        return self.status == ChainStatus.active and self.starts_at is not None and instant(self.starts_at) > now


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"


def ebook_warnings(ebooks: Sequence[EbookCoverage], chains: Sequence[ChainPlan], now: datetime) -> list[ContentWarning]:
    """Ebooks collecting leads (a published page, or leads waiting) whose topic no live chain takes,
    neither its own nor a fallback: their leads get the ebook and then nothing."""
    fallback_live = any(c.is_fallback and c.live(now) for c in chains)
    warnings = []
    for ebook in ebooks:
        own = [c for c in chains if c.topic_id == ebook.topic_id]
        if fallback_live or any(c.live(now) for c in own) or not (ebook.pages or ebook.waiting):
            continue
        pages = ", ".join(f"/l/{slug}" for slug in ebook.pages[:5]) + (" …" if len(ebook.pages) > 5 else "")
        collecting = (f"collects leads on {pages}" if ebook.pages else "has no published page now")
        waiting = (f"{_plural(ebook.waiting, 'lead')} {'is' if ebook.waiting == 1 else 'are'} waiting"
                   if ebook.waiting else "no lead is waiting yet")
        links = [("Open the ebook", admin_row("ebook", ebook.id))]
        scheduled = sorted((c for c in chains if (c.topic_id == ebook.topic_id or c.is_fallback) and c.scheduled(now)),
                           key=lambda c: instant(c.starts_at))  # type: ignore[arg-type]
        if scheduled:
            chain = scheduled[0]
            start = instant(chain.starts_at).strftime("%Y-%m-%d %H:%M UTC")  # type: ignore[arg-type]
            links.insert(0, (f"Chain “{chain.name}”", admin_row("chain", chain.id)))
            warnings.append(ContentWarning(
                "chain_scheduled", "warn", ebook.title,
                f"{collecting}; topic {ebook.topic}'s chain starts {start}, until then no letters: {waiting}.",
                tuple(links)))
            continue
        if own:
            links.insert(0, ("Activate a chain", CHAIN_FORM))
            links.insert(1, (f"Chain “{own[0].name}” ({own[0].status})", admin_row("chain", own[0].id)))
        else:
            links.insert(0, ("Create a chain", "/admin/#/chain/add/"))
        warnings.append(ContentWarning(
            "no_chain", "err", ebook.title,
            f"{collecting}, but topic {ebook.topic} has no active chain (nor an active fallback chain): "
            f"its leads get the ebook and then no letters; {waiting}.", tuple(links)))
    return warnings


def template_warnings(chains: Iterable[tuple[int, str, str]]) -> list[ContentWarning]:
    """Chains whose last check found errors, from (id, name, check_error)."""
    return [ContentWarning("template_error", "err", name, "cannot be activated: " + "; ".join(
                line.strip() for line in error.splitlines() if line.strip()),
                (("Fix the chain", admin_row("chain", chain_id)), ("Check it again", CHAIN_FORM)))
            for chain_id, name, error in chains if error.strip()]


@dataclass(frozen=True)
class MailHealth:
    """Letters of one chain (or of all, `chain_id` None) over a window, and what went wrong."""

    chain_id: int | None
    name: str
    attempted: int
    """Handed to the relay: delivered, maybe delivered (`unknown`) or bounced."""
    bounced: int
    complaints: int

    @property
    def delivered(self) -> int:
        return self.attempted - self.bounced

    @property
    def bounce_rate(self) -> float | None:
        return self.bounced / self.attempted if self.attempted else None

    @property
    def complaint_rate(self) -> float | None:
        return self.complaints / self.delivered if self.delivered else None


def _over(count: int, total: int, threshold: float) -> bool:
    return count > 0 and (total <= 0 or count / total >= threshold)


def _sole_source(per_chain: Sequence[MailHealth], count: Callable[[MailHealth], int],
                 overall: MailHealth) -> MailHealth | None:
    """The one chain that accounts for every bounce (or complaint) counted overall, if there is one."""
    total = count(overall)
    having = [health for health in per_chain if count(health) > 0]
    return having[0] if total > 0 and len(having) == 1 and count(having[0]) == total else None


def rate_warnings(per_chain: Sequence[MailHealth], overall: MailHealth, bounce_warn: float, complaint_warn: float,
                  days: int = 30) -> list[ContentWarning]:
    """Bounce and complaint rates at or over their thresholds, overall first, then per chain.

    When one chain accounts for all of the bounces (or complaints) counted overall, the overall
    warning would repeat the chain's about the same letters: only the chain's is given, saying so."""
    per_chain = list(per_chain)
    warnings = []
    # A chain with every bounce has a rate at least the overall one (its letters are a part of all):
    # when the overall rate warns, so does the chain's.
    sole_bouncer = (_sole_source(per_chain, lambda h: h.bounced, overall)
                    if _over(overall.bounced, overall.attempted, bounce_warn) else None)
    sole_complainer = (_sole_source(per_chain, lambda h: h.complaints, overall)
                       if _over(overall.complaints, overall.delivered, complaint_warn) else None)
    for health in (overall, *per_chain):
        is_chain = health.chain_id is not None
        links = ((("Results", f"/desk/chains/{health.chain_id}"), ("Pause or fix the chain", admin_row("chain", health.chain_id)))
                 if is_chain else (("Suppressed addresses", "/admin/#/suppression/"), ("Send ledger", "/admin/#/delivery/")))
        subject = health.name
        if _over(health.bounced, health.attempted, bounce_warn) and not (not is_chain and sole_bouncer is not None):
            rate = format_rate(health.bounced / health.attempted) if health.attempted else "–"
            whole = (f" This chain has every bounce over all chains ({format_rate(overall.bounce_rate)} of "
                     f"{_plural(overall.attempted, 'letter')})." if health is sole_bouncer else "")
            warnings.append(ContentWarning(
                "bounce_rate", "err", subject,
                f"bounce rate {rate} over the last {days} days ({health.bounced:,} of {_plural(health.attempted, 'letter')}), "
                f"at or over the {format_rate(bounce_warn)} warning line: check where these addresses come from (typos "
                f"on a form, an old import) before mailbox providers start refusing the rest.{whole}", links))
        if _over(health.complaints, health.delivered, complaint_warn) and not (not is_chain and sole_complainer is not None):
            rate = format_rate(health.complaints / health.delivered) if health.delivered else "–"
            whole = (f" This chain has every complaint over all chains ({format_rate(overall.complaint_rate)} of "
                     f"{_plural(overall.delivered, 'letter')} delivered)." if health is sole_complainer else "")
            warnings.append(ContentWarning(
                "complaint_rate", "err", subject,
                f"spam complaint rate {rate} over the last {days} days ({_plural(health.complaints, 'complaint')}, "
                f"{_plural(health.delivered, 'letter')} delivered), at or over the {format_rate(complaint_warn)} "
                f"warning line: fewer, more relevant letters, and a plain unsubscribe link.{whole}", links))
    return warnings


_MAIL_PER_CHAIN = """
SELECT s.chain AS chain, count(*) AS attempted, SUM(CASE WHEN d.status = 'bounced' THEN 1 ELSE 0 END) AS bounced
FROM delivery d JOIN step s ON s.id = d.step
WHERE d.status IN ('sent', 'unknown', 'bounced') AND COALESCE(d.sent_at, d.reserved_at) >= {}
GROUP BY s.chain
"""
# A complaint counts against the chain of the last letter its lead was sent before it.
_COMPLAINTS_PER_CHAIN = """
SELECT x.chain AS chain, count(*) AS complaints FROM (
  SELECT (SELECT s.chain FROM enrollment en JOIN delivery d ON d.enrollment = en.id JOIN step s ON s.id = d.step
          WHERE en.lead = ev.lead AND d.status IN ('sent', 'unknown')
            AND COALESCE(d.sent_at, d.reserved_at) <= ev.occurred_at
          ORDER BY COALESCE(d.sent_at, d.reserved_at) DESC LIMIT 1) AS chain
  FROM event ev WHERE ev.type = 'complaint' AND ev.lead IS NOT NULL AND ev.occurred_at >= {}
) x WHERE x.chain IS NOT NULL GROUP BY x.chain
"""

RATE_WINDOW_DAYS = 30


async def mail_health(now: datetime | None = None, days: int = RATE_WINDOW_DAYS) -> tuple[list[MailHealth], MailHealth]:
    """Per chain and over all chains: letters, bounces and complaints of the last `days` days.

    Overall complaints are every address suppressed for a complaint in the window, including
    those that no chain letter explains."""
    now = now or datetime.now(timezone.utc)
    since = now - timedelta(days=days)
    names = {c["id"]: c["name"] for c in await Chain.select(Chain.id, Chain.name)}
    letters = {r["chain"]: r for r in await Chain.raw(_MAIL_PER_CHAIN, since)}
    complaints = {r["chain"]: int(r["complaints"]) for r in await Chain.raw(_COMPLAINTS_PER_CHAIN, since)}
    per_chain = [
        MailHealth(chain_id, names.get(chain_id, f"chain {chain_id}"), int(letters.get(chain_id, {}).get("attempted") or 0),
                   int(letters.get(chain_id, {}).get("bounced") or 0), complaints.get(chain_id, 0))
        for chain_id in sorted(set(letters) | set(complaints))
    ]
    all_complaints = await Suppression.count().where(
        (Suppression.reason == SuppressionReason.complaint) & (Suppression.created_at >= since))
    overall = MailHealth(None, "All chains", sum(h.attempted for h in per_chain), sum(h.bounced for h in per_chain),
                         max(all_complaints, sum(h.complaints for h in per_chain)))
    return per_chain, overall


async def ebook_coverage() -> list[EbookCoverage]:
    """Every ebook with its published pages and the leads waiting on its topic (three queries)."""
    ebooks = await Ebook.select(Ebook.id, Ebook.title, Ebook.topic, Ebook.topic.name.as_alias("topic_name")).order_by(Ebook.title)
    pages: dict[int, list[str]] = {}
    for page in await LandingPage.select(LandingPage.slug, LandingPage.ebook).where(
            LandingPage.published == True).order_by(LandingPage.slug):  # noqa: E712
        pages.setdefault(page["ebook"], []).append(page["slug"])
    waiting = {r["topic"]: int(r["waiting"]) for r in await ChainWait.raw(
        "SELECT topic, count(*) AS waiting FROM chain_wait GROUP BY topic")}
    return [EbookCoverage(e["id"], e["title"], e["topic"], e["topic_name"] or "", tuple(pages.get(e["id"], ())),
                          waiting.get(e["topic"], 0)) for e in ebooks]


async def chain_plans() -> list[ChainPlan]:
    return [ChainPlan(c["id"], c["name"], c["topic"], c["status"], c["starts_at"], bool(c["is_fallback"]))
            for c in await Chain.select(Chain.id, Chain.name, Chain.topic, Chain.status, Chain.starts_at,
                                        Chain.is_fallback).order_by(Chain.id)]


@dataclass(frozen=True)
class Warnings:
    items: list[ContentWarning]
    per_chain: list[MailHealth]
    overall: MailHealth
    bounce_warn: float
    complaint_warn: float
    days: int = RATE_WINDOW_DAYS


async def content_warnings(now: datetime | None = None, bounce_warn: float | None = None,
                           complaint_warn: float | None = None) -> Warnings:
    """Everything on the dashboard's warning list, the thresholds from settings unless given."""
    from server.settings import get_settings

    now = now or datetime.now(timezone.utc)
    settings = get_settings()
    bounce_warn = settings.bounce_rate_warn if bounce_warn is None else bounce_warn
    complaint_warn = settings.complaint_rate_warn if complaint_warn is None else complaint_warn
    plans = await chain_plans()
    items = ebook_warnings(await ebook_coverage(), plans, now)
    errors = await Chain.select(Chain.id, Chain.name, Chain.check_error).where(Chain.check_error != "").order_by(Chain.name)
    items += template_warnings((c["id"], c["name"], c["check_error"]) for c in errors)
    per_chain, overall = await mail_health(now)
    items += rate_warnings(per_chain, overall, bounce_warn, complaint_warn)
    return Warnings(items, per_chain, overall, bounce_warn, complaint_warn)

