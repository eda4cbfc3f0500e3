"""Desk pages for the content team: every chain, one chain's results, the dashboard; and the
data → chart steps that the weekly PDF report draws with too."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timezone

from litestar import Controller, Request, get
from litestar.params import FromPath, FromQuery
from litestar.response import Template
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_404_NOT_FOUND
from markupsafe import Markup

from admin.charts import CHART_CSS, bar_chart, comparison, funnel, lift_chart, stacked_bars
from admin.desk.auth import page_context, requires
from admin.roles import CONTENT
from content.dashboard import (
    CHAIN_FORM,
    NO_SOURCE,
    PERIODS,
    STAGE_HELP,
    CohortRow,
    CohortWeek,
    Funnel,
    PeriodError,
    admin_row,
    chain_state,
    chain_summaries,
    cohort_runs,
    content_warnings,
    format_p,
    format_rate,
    lead_cohorts,
    lead_funnel,
    parse_period,
    source_totals,
    verdict,
    version_subjects,
)
from content.results import ChainResults, StepResult, chain_results
from content.tables import Chain

# ----------------------------------------------------------------------------- numbers in words


def pct(part: float | None, whole: float | None) -> str:
    """`part` of `whole` as a percentage: 12.5%, 0.4%, or – when there is no whole."""
    if part is None or not whole:
        return "–"
    return rate(part / whole)


rate = format_rate


def points(value: float | None) -> str:
    """A difference of two rates in percentage points: +1.3 pp."""
    return "–" if value is None else f"{100 * value:+.1f} pp".replace("-", "−")


def relative(value: float | None) -> str:
    """A relative lift: +25%; – when the control never converted."""
    return "–" if value is None else f"{100 * value:+.0f}%".replace("-", "−")


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def short_date(day: date) -> str:
    """A day as a table cell on a phone has room for: 9 Nov (in English, whatever the server's locale)."""
    return f"{day.day} {_MONTHS[day.month - 1]}"


HELPERS = {"pct": pct, "rate": rate, "points": points, "relative": relative, "format_p": format_p,
           "admin_row": admin_row, "short_date": short_date}
"""Formatting functions every content template (and the PDF report's) may call."""


# ----------------------------------------------------------------------------- data → charts


def version_label(step: StepResult) -> str:
    """How a step version is named on the page: Step 2, Step 2 · B, Step 5 · hot offer."""
    if step.version in ("hot", "cold"):
        return f"Step {step.position} · {step.version} offer"
    return f"Step {step.position}" + (f" · {step.version}" if step.version else "")


def step_key(step: StepResult) -> str:
    return f"step:{step.position}:{step.version}"


CHART_WIDTH = 360
"""Width of a chart in a page column. A phone shows it at about 330 px, so its 11 px text stays about
10 px there; a desktop shows it at its own size, in a column of two or three."""


def step_funnel(step: StepResult, width: int = CHART_WIDTH) -> Markup:
    """Sent → delivered → opened → clicked → converted for one step version, the shares of delivered
    letters as in the step table (converted is not a subset of clicked: a lead may convert without
    clicking, so no stage is given as a share of the one before)."""
    return funnel([("Sent", step.sent), ("Delivered", step.delivered), ("Opened", step.opened),
                   ("Clicked", step.clicked), ("Converted", step.converted)],
                  title=f"{version_label(step)}: funnel", width=width, base=1, nested=False)


def offer_steps(results: ChainResults) -> dict[str, StepResult]:
    """The offer step's hot and cold versions, by kind."""
    return {s.version: s for s in results.steps if s.version in ("hot", "cold")}


def ab_pairs(results: ChainResults) -> list[tuple[StepResult, StepResult]]:
    """(A, B) per step that tests a variant, in step order."""
    versions = {(s.position, s.version): s for s in results.steps}
    return [(versions[(position, "A")], versions[(position, "B")])
            for position in sorted({p for p, v in versions if v == "B"}) if (position, "A") in versions]


OFFERS_TITLE = "Conversion per delivered letter"


def chain_charts(results: ChainResults, width: int = CHART_WIDTH) -> dict[str, Markup]:
    """Every chart of a chain's results, as inline SVG for a page or the PDF report.

    Keys: `step:<position>:<version>` (each step version's funnel), `experiment` (treatment vs
    control, when the chain has a control group), `variants` (B vs A conversion), `clicks:<position>`
    (B vs A click rate per A/B step), `offers` (hot vs cold offer conversion), `sent` (letters per step).
    """
    charts: dict[str, Markup] = {step_key(s): step_funnel(s, width=width) for s in results.steps}
    if results.experiment is not None:
        charts["experiment"] = lift_chart(results.experiment, title="Conversion: treatment vs control", width=width,
                                          difference_label="Lift")
    if results.variants is not None:
        charts["variants"] = lift_chart(results.variants, treatment="B", control="A",
                                        title="Conversion: variant B vs A (treatment group)", width=width)
    for position, result in results.variant_clicks.items():
        charts[f"clicks:{position}"] = lift_chart(result, treatment="B", control="A",
                                                  title=f"Step {position}: click rate, B vs A", width=width)
    offers = offer_steps(results)
    if any(s.delivered for s in offers.values()):
        charts["offers"] = comparison(
            [(f"{kind.capitalize()} offer", offers[kind].converted / offers[kind].delivered, None, None)
             for kind in ("hot", "cold") if kind in offers and offers[kind].delivered],
            title=OFFERS_TITLE, width=width)
    charts["sent"] = bar_chart([version_label(s) for s in results.steps], [s.sent for s in results.steps],
                               title="Letters sent per step", width=width)
    return charts


def chain_verdicts(results: ChainResults) -> dict[str, str]:
    """What each of the chain's comparisons says in words that do not overclaim, keyed as the charts
    are: `experiment` (treatment vs control), `variants` (B vs A conversion, for a chain with an A/B
    step), `clicks:<position>` (B vs A click rate)."""
    verdicts = {"experiment": verdict(
        results.experiment, (results.enrolled.get("treatment", 0), results.enrolled.get("control", 0)),
        first="Treatment", second="the control group", what="conversion rate",
        successes=sum(results.converted.values()))}
    if ab_pairs(results):
        (a_leads, a_converted), (b_leads, b_converted) = (results.variant_groups.get(v, (0, 0)) for v in ("A", "B"))
        verdicts["variants"] = verdict(results.variants, (b_leads, a_leads), first="B", second="A",
                                       what="conversion rate", successes=a_converted + b_converted)
    for a, b in ab_pairs(results):
        if a.position in results.variant_clicks:
            verdicts[f"clicks:{a.position}"] = verdict(results.variant_clicks[a.position], (b.delivered, a.delivered),
                                                       first="B", second="A", what="click rate",
                                                       successes=a.clicked + b.clicked, unit="letters")
    return verdicts


TOP_SOURCES = 6


def weekly_counts(weeks: Sequence[CohortWeek], top: int = TOP_SOURCES) -> tuple[list[date], dict[str, list[int]]]:
    """The weeks, oldest first, and new leads per week for the biggest sources (the rest as "other
    sources"), one count per week: the stacked bars of new leads per week."""
    totals: dict[str, int] = {}
    for week in weeks:
        for row in week.rows:
            totals[row.source] = totals.get(row.source, 0) + row.counts.leads
    biggest = [source for source, _ in sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:top]]
    ordered = sorted(weeks, key=lambda w: w.week)
    series: dict[str, list[int]] = {source: [] for source in biggest}
    if len(totals) > len(biggest):
        series["other sources"] = []
    for week in ordered:
        by_source = {row.source: row.counts.leads for row in week.rows}
        for source in biggest:
            series[source].append(by_source.get(source, 0))
        if "other sources" in series:
            series["other sources"].append(sum(n for s, n in by_source.items() if s not in biggest))
    return [week.week for week in ordered], series


def funnel_notes(lead_funnel: Funnel) -> dict[str, str]:
    """The note under Visitors: they are counted apart, since a lead needs no tracked visit (an
    import, a lead from the API), so leads may outnumber them."""
    return {"Visitors": "counted apart: leads need no tracked visit"}


def dashboard_charts(lead_funnel: Funnel, weeks: Sequence[CohortWeek], sources: Sequence[CohortRow],
                     width: int = CHART_WIDTH) -> dict[str, Markup]:
    """The dashboard's charts for a page or the PDF report.

    Keys: `funnel` (visitors, then leads → won as shares of leads), `weekly` (new leads per week,
    stacked by source), `sources` (leads per source over the weeks shown), `source_engaged` and
    `source_won` (their shares per source).
    """
    labels = [row.source for row in sources]
    categories, weekly = weekly_counts(weeks)
    return {
        # Each stage is counted among the period's leads on its own (a lead can be won without
        # engaging), so every share is of the leads, none of the stage before.
        "funnel": funnel(lead_funnel.stages(), title=f"Funnel, {lead_funnel.period.label.lower()}", width=width,
                         base=1, nested=False, notes=funnel_notes(lead_funnel)),
        "weekly": stacked_bars(categories, weekly, title="New leads per week by source", width=width),
        "sources": bar_chart(labels, [row.counts.leads for row in sources], title="New leads per source", width=width),
        "source_engaged": bar_chart(labels, [row.counts.share("engaged") for row in sources],
                                    title="Engaged share per source", value_format=rate, width=width,
                                    zero_message="No lead engaged yet"),
        "source_won": bar_chart(labels, [row.counts.share("won") for row in sources],
                                title="Won share per source", value_format=rate, width=width,
                                zero_message="No lead won yet"),
    }


# ----------------------------------------------------------------------------- pages

MAX_ID = 2**31 - 1


def _problem(request: Request, status: int, title: str, detail: str, links: list[tuple[str, str]]) -> Template:
    """A desk page that says what went wrong and where to go instead."""
    return Template("desk/content/problem.html", status_code=status,
                    context=page_context(request, title=title, detail=detail, links=links))


class ContentController(Controller):
    """The content team's pages: chains, a chain's results, the dashboard (admins too)."""

    path = "/desk"
    guards = [requires(CONTENT)]

    @get("/chains")
    async def chains(self, request: Request) -> Template:
        """Every chain at a glance: state, enrollments, letters, conversion by group, errors."""
        summaries = await chain_summaries()
        return Template("desk/content/chains.html", context=page_context(
            request, chains=summaries, chain_form=CHAIN_FORM, **HELPERS))

    @get("/chains/{chain_id:int}")
    async def chain(self, request: Request, chain_id: FromPath[int]) -> Template:
        """One chain's results: per-step funnels, A/B tests, treatment vs control, offers."""
        chain = await Chain.objects(Chain.topic).where(Chain.id == chain_id).first() if 0 < chain_id <= MAX_ID else None
        if chain is None:
            return _problem(request, HTTP_404_NOT_FOUND, "No such chain",
                            f"There is no chain {chain_id}: it may have been deleted.", [("All chains", "/desk/chains")])
        results = await chain_results(chain.id)
        subjects = await version_subjects(chain.id)
        state = chain_state(chain.status, chain.starts_at, datetime.now(timezone.utc))
        return Template("desk/content/chain.html", context=page_context(
            request, chain=chain, topic=chain.topic.name if chain.topic else "", state=state, results=results,
            subjects=subjects, charts=chain_charts(results), verdicts=chain_verdicts(results), chart_css=CHART_CSS,
            label=version_label, key=step_key, offers=offer_steps(results), ab=ab_pairs(results), offers_title=OFFERS_TITLE,
            sent_total=sum(s.sent for s in results.steps), chain_form=CHAIN_FORM, **HELPERS))

    @get("/dashboard")
    async def dashboard(self, request: Request, period: FromQuery[str | None] = None) -> Template:
        """The overall funnel for a period, weekly cohorts by source, and the warnings."""
        try:
            chosen = parse_period(period)
        except PeriodError as exc:
            return _problem(request, HTTP_400_BAD_REQUEST, "Unknown period", str(exc),
                            [(p.label, f"/desk/dashboard?period={p.key}") for p in PERIODS])
        now = datetime.now(timezone.utc)
        overall = await lead_funnel(chosen, now)
        weeks = await lead_cohorts(now)
        sources = source_totals(weeks)
        warnings = await content_warnings(now)
        return Template("desk/content/dashboard.html", context=page_context(
            request, period=chosen, periods=PERIODS, funnel=overall, weeks=weeks, sources=sources, warnings=warnings,
            stage_help=STAGE_HELP, charts=dashboard_charts(overall, weeks, sources), runs=cohort_runs(weeks),
            chart_css=CHART_CSS, no_source=NO_SOURCE, **HELPERS))


HANDLERS = [ContentController]
