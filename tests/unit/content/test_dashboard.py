"""The dashboard's pure parts: periods, weeks and cohorts, warnings from known facts, verdicts that do not overclaim,
and the two warning thresholds read from the environment."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from content.dashboard import (
    CHAIN_FORM,
    PERIODS,
    ChainPlan,
    EbookCoverage,
    LeadCounts,
    MailHealth,
    PeriodError,
    CohortWeek,
    QuietWeeks,
    build_cohorts,
    chain_state,
    cohort_runs,
    cohort_weeks,
    ebook_warnings,
    format_p,
    format_rate,
    parse_period,
    rate_warnings,
    render_subject,
    sample_context,
    sample_size_per_group,
    source_totals,
    template_warnings,
    verdict,
    week_start,
)
from content.experiments import compare

NOW = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)


# --- periods --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "days"), [(None, 30), ("", 30), ("7", 7), ("30", 30), ("90", 90), ("all", None),
                                             (" ALL ", None), ("90d", 90)])
def test_periods_offered_parse(value, days) -> None:
    assert parse_period(value).days == days


@pytest.mark.parametrize("value", ["14", "0", "-7", "7days", "forever", "1e3", "x" * 500])
def test_other_periods_are_refused_naming_the_ones_offered(value) -> None:
    with pytest.raises(PeriodError, match="choose 7, 30 or 90 \\(days\\) or all") as caught:
        parse_period(value)
    assert len(str(caught.value)) < 160, "a long value is cut in the message"


def test_a_period_starts_its_days_before_now_and_all_has_no_start() -> None:
    assert parse_period("7").since(NOW) == NOW - timedelta(days=7)
    assert parse_period("all").since(NOW) is None
    assert [p.key for p in PERIODS] == ["7", "30", "90", "all"]


# --- weeks and cohorts ------------------------------------------------------------------------------


def test_weeks_start_on_monday() -> None:
    assert week_start(date(2026, 11, 22)) == date(2026, 11, 16), "a Sunday ends the week before"
    assert week_start(date(2026, 11, 23)) == date(2026, 11, 23)
    assert week_start(date(2026, 11, 29)) == date(2026, 11, 23)
    weeks = cohort_weeks(date(2026, 11, 25))
    assert len(weeks) == 12 and weeks[0] == date(2026, 11, 23) and weeks[-1] == date(2026, 9, 7)
    assert all(a - b == timedelta(weeks=1) for a, b in zip(weeks, weeks[1:]))


def _row(week: str, source: str, leads: int, confirmed: int = 0, engaged: int = 0, hot: int = 0, won: int = 0) -> dict:
    return {"week": week, "source": source, "leads": leads, "confirmed": confirmed, "engaged": engaged, "hot": hot,
            "won": won}


def test_cohorts_keep_every_week_order_sources_by_size_and_total_each_week() -> None:
    weeks = cohort_weeks(date(2026, 11, 25), 3)
    cohorts = build_cohorts([
        _row("2026-11-23", "google", 2, 1, 1, 0, 0),
        _row("2026-11-23", "ebook", 4, 4, 2, 1, 1),
        _row("2026-11-23", "", 1),
        _row("2026-11-09", "google", 5, 5, 5, 5, 1),
        _row("2026-11-02", "google", 9),  # outside the three weeks
        {"week": datetime(2026, 11, 10, 8), "source": None, "leads": None, "confirmed": None, "engaged": None,
         "hot": None, "won": None},  # NULL sums from an empty group, a datetime from a driver
    ], weeks)
    assert [c.week for c in cohorts] == weeks
    this_week, empty, oldest = cohorts
    assert [(r.source, r.counts.leads) for r in this_week.rows] == [("ebook", 4), ("google", 2), ("(none)", 1)]
    assert this_week.total == LeadCounts(7, 5, 3, 1, 1)
    assert empty.rows == [] and empty.total.leads == 0
    assert [(r.source, r.counts) for r in oldest.rows] == [("google", LeadCounts(5, 5, 5, 5, 1)), ("(none)", LeadCounts())]
    ebook = this_week.rows[0].counts
    assert (ebook.share("confirmed"), ebook.share("engaged"), ebook.share("hot"), ebook.share("won")) == (1.0, 0.5, 0.25, 0.25)
    assert LeadCounts().share("won") is None, "no leads, no share"


def test_a_weeks_rows_of_one_source_merge() -> None:
    cohorts = build_cohorts([_row("2026-11-23", "ebook", 1, 1), _row("2026-11-24", "ebook", 2, 0, 2)],
                            [date(2026, 11, 23)])
    assert [(r.source, r.counts) for r in cohorts[0].rows] == [("ebook", LeadCounts(3, 1, 2, 0, 0))]


def test_source_totals_add_up_the_weeks() -> None:
    cohorts = build_cohorts([_row("2026-11-23", "ebook", 2, 2), _row("2026-11-16", "ebook", 3, 1, 1, 0, 1),
                             _row("2026-11-16", "google", 6)], cohort_weeks(date(2026, 11, 25), 2))
    totals = source_totals(cohorts)
    assert [(r.week, r.source, r.counts) for r in totals] == [
        (None, "google", LeadCounts(6)), (None, "ebook", LeadCounts(5, 3, 1, 0, 1))]


# --- chains ---------------------------------------------------------------------------------------------


def test_an_active_chain_with_a_start_to_come_is_scheduled() -> None:
    assert chain_state("active", None, NOW) == "active"
    assert chain_state("active", NOW - timedelta(hours=1), NOW) == "active"
    assert chain_state("active", NOW + timedelta(hours=1), NOW) == "scheduled"
    assert chain_state("active", "2026-11-26 09:00:00+00:00", NOW) == "scheduled", "SQLite's text"
    assert chain_state("paused", NOW + timedelta(hours=1), NOW) == "paused"
    assert chain_state("draft", None, NOW) == "draft"


# --- warnings ------------------------------------------------------------------------------------------

SEO = EbookCoverage(1, "The SEO audit", 10, "SEO", ("seo", "seo-2"), 3)


def _chain(chain_id: int = 5, status: str = "active", topic: int = 10, starts_at: datetime | None = None,
           fallback: bool = False) -> ChainPlan:
    return ChainPlan(chain_id, f"chain {chain_id}", topic, status, starts_at, fallback)


def test_an_ebook_whose_topic_has_a_live_chain_or_a_live_fallback_is_fine() -> None:
    assert ebook_warnings([SEO], [_chain()], NOW) == []
    assert ebook_warnings([SEO], [_chain(topic=99, fallback=True)], NOW) == []


def test_an_ebook_collecting_leads_without_a_chain_warns_with_where_to_fix_it() -> None:
    [warning] = ebook_warnings([SEO], [_chain(topic=99)], NOW)
    assert (warning.kind, warning.severity, warning.subject) == ("no_chain", "err", "The SEO audit")
    assert "/l/seo, /l/seo-2" in warning.text and "3 leads are waiting" in warning.text
    assert warning.links == (("Create a chain", "/admin/#/chain/add/"), ("Open the ebook", "/admin/#/ebook/1/"))


def test_a_paused_chain_of_the_topic_is_offered_for_activation() -> None:
    [warning] = ebook_warnings([SEO], [_chain(status="paused"), _chain(7, fallback=True, status="draft", topic=99)], NOW)
    assert warning.links[0] == ("Activate a chain", CHAIN_FORM)
    assert warning.links[1] == ("Chain “chain 5” (paused)", "/admin/#/chain/5/")


def test_a_scheduled_chain_is_a_milder_warning_naming_its_start() -> None:
    start = NOW + timedelta(days=2)
    [warning] = ebook_warnings([SEO], [_chain(starts_at=start)], NOW)
    assert (warning.kind, warning.severity) == ("chain_scheduled", "warn")
    assert "2026-11-27 12:00 UTC" in warning.text
    assert ebook_warnings([SEO], [_chain(starts_at=start)], start) == [], "from its start it is live"


def test_an_ebook_collects_leads_through_a_published_page_or_waiting_leads() -> None:
    unpublished = EbookCoverage(2, "Draft", 10, "SEO", (), 0)
    assert ebook_warnings([unpublished], [], NOW) == []
    [waiting] = ebook_warnings([EbookCoverage(2, "Old", 10, "SEO", (), 1)], [], NOW)
    assert "1 lead is waiting" in waiting.text and "has no published page now" in waiting.text
    [fresh] = ebook_warnings([EbookCoverage(3, "New", 10, "SEO", ("new",), 0)], [], NOW)
    assert "no lead is waiting yet" in fresh.text


def test_chains_with_a_check_error_warn() -> None:
    warnings = template_warnings([(1, "Good", ""), (2, "Broken", "step 1: bad\n\nstep 2 body: worse\n"), (3, "Blank", "  ")])
    assert [(w.kind, w.subject) for w in warnings] == [("template_error", "Broken")]
    assert warnings[0].text == "cannot be activated: step 1: bad; step 2 body: worse"
    assert warnings[0].links[0] == ("Fix the chain", "/admin/#/chain/2/")


def test_mail_rates_count_bounces_per_letter_and_complaints_per_delivered_letter() -> None:
    health = MailHealth(1, "c", attempted=20, bounced=2, complaints=1)
    assert (health.delivered, health.bounce_rate, health.complaint_rate) == (18, 0.1, 1 / 18)
    assert MailHealth(None, "all", 0, 0, 0).bounce_rate is None


def test_rates_at_or_over_their_lines_warn_overall_first_then_per_chain() -> None:
    quiet = MailHealth(1, "Quiet", 100, 4, 0)
    bouncy = MailHealth(2, "Bouncy", 20, 1, 0)  # exactly 5%: at the line
    noisy = MailHealth(3, "Noisy", 50, 0, 1)
    overall = MailHealth(None, "All chains", 170, 5, 1)
    warnings = rate_warnings([quiet, bouncy, noisy], overall, bounce_warn=0.05, complaint_warn=0.003)
    # Noisy has the only complaint: one warning about it, not a second one about all chains.
    assert [(w.kind, w.subject) for w in warnings] == [("bounce_rate", "Bouncy"), ("complaint_rate", "Noisy")]
    assert warnings[1].text.endswith("This chain has every complaint over all chains (0.6% of 165 letters delivered).")
    assert warnings[0].links == (("Results", "/desk/chains/2"), ("Pause or fix the chain", "/admin/#/chain/2/"))
    assert "5.0%" in warnings[0].text and "(1 of 20 letters)" in warnings[0].text
    assert rate_warnings([quiet, bouncy, noisy], overall, bounce_warn=0.06, complaint_warn=0.05) == []


def test_the_overall_rate_warns_apart_when_no_single_chain_accounts_for_it() -> None:
    noisy = MailHealth(3, "Noisy", 50, 0, 1)
    other = MailHealth(4, "Other", 50, 0, 1)
    # Two chains, a complaint each: both chains and the overall line.
    warnings = rate_warnings([noisy, other], MailHealth(None, "All chains", 100, 0, 2), 0.05, 0.003)
    assert [(w.kind, w.subject) for w in warnings] == [
        ("complaint_rate", "All chains"), ("complaint_rate", "Noisy"), ("complaint_rate", "Other")]
    # A complaint no chain letter explains (an address suppressed by hand): the overall line says more.
    warnings = rate_warnings([noisy], MailHealth(None, "All chains", 50, 0, 2), 0.05, 0.003)
    assert [w.subject for w in warnings] == ["All chains", "Noisy"]
    assert "every complaint" not in warnings[1].text
    # One chain with every bounce: one warning, naming the chain.
    bouncy = MailHealth(2, "Bouncy", 20, 3, 0)
    warnings = rate_warnings([bouncy, MailHealth(5, "Quiet", 80, 0, 0)], MailHealth(None, "All chains", 100, 3, 0),
                             0.02, 0.003)
    assert [(w.kind, w.subject) for w in warnings] == [("bounce_rate", "Bouncy")]
    assert "(3 of 20 letters)" in warnings[0].text and "every bounce over all chains (3.0% of 100 letters)" in warnings[0].text


def test_a_complaint_without_a_delivered_letter_in_the_window_still_warns() -> None:
    [warning] = rate_warnings([], MailHealth(None, "All chains", 0, 0, 2), 0.05, 0.003)
    assert warning.kind == "complaint_rate" and "2 complaints" in warning.text


# --- verdicts -----------------------------------------------------------------------------------------


def test_the_sample_size_is_the_textbook_one() -> None:
    # (z_.975 + z_.8)^2 (p1 q1 + p2 q2) / (p1 - p2)^2 = 7.849 * 0.2175 / 0.0025
    assert sample_size_per_group(0.10, 0.15) == 683
    assert sample_size_per_group(0.10, 0.20) < sample_size_per_group(0.10, 0.15)
    assert sample_size_per_group(0.1, 0.1) is None


def test_p_values_are_written_to_their_precision() -> None:
    assert [format_p(p) for p in (0.31415, 0.0123, 0.0496, 0.004, 0.0004)] == [
        "p = 0.31", "p = 0.012", "p = 0.050", "p = 0.004", "p < 0.001"]


def test_a_small_test_is_not_significant_yet_and_says_how_many_it_needs() -> None:
    result = compare(14, 100, 10, 100)
    text = verdict(result, (100, 100), what="click rate", successes=24)
    assert text.startswith(f"Not significant yet ({format_p(result.p_value)}): n too small.")
    assert f"about {sample_size_per_group(0.10, 0.14):,} leads in each group" in text


def test_very_few_successes_are_too_few_to_judge() -> None:
    text = verdict(compare(2, 3, 0, 3), (3, 3), successes=2)
    assert "Not significant yet" in text and "only 2 successes in 6 leads" in text


def test_a_significant_result_names_its_direction_and_interval_without_more() -> None:
    result = compare(300, 1000, 200, 1000)
    text = verdict(result, (1000, 1000), first="Treatment", second="the control group", what="conversion rate",
                   successes=500)
    assert text.startswith("Treatment's conversion rate is higher than the control group's (p < 0.001)")
    assert f"{100 * result.low:+.1f} to {100 * result.high:+.1f}" in text and "may be anywhere in that interval" in text
    lower = verdict(compare(200, 1000, 300, 1000), (1000, 1000), successes=500)
    assert "B's click rate is lower than A's" in lower


def test_no_difference_and_no_data_say_so() -> None:
    assert verdict(compare(20, 200, 20, 200), (200, 200), successes=40).startswith("No difference seen (p = 1.00)")
    assert verdict(None, (0, 5)).startswith("No comparison yet")
    tiny = verdict(compare(1010, 10000, 1000, 10000), (10000, 10000), successes=2010)
    assert tiny.startswith("Not significant yet (p = 0.81): n too small") and "1,419,070 leads" in tiny, "a 0.1-point difference needs far more leads"


def test_rates_are_written_as_the_pages_write_them() -> None:
    # Two significant figures: one decimal below 10%, none from 10% up; zero is 0%, never 0.0%.
    assert [format_rate(v) for v in (None, 0.0, 0.0004, 0.003, 0.05, 0.091, 0.0996, 0.1, 0.173, 0.333, 1.0)] == [
        "–", "0%", "<0.1%", "0.3%", "5.0%", "9.1%", "10%", "10%", "17%", "33%", "100%"]


def test_quiet_weeks_in_a_row_are_one_line_of_the_cohort_table() -> None:
    mondays = cohort_weeks(date(2026, 11, 25), weeks=6)
    rows = [{"week": mondays[0].isoformat(), "source": "google", "leads": 1},
            {"week": mondays[4].isoformat(), "source": "landing", "leads": 2}]
    runs = cohort_runs(build_cohorts(rows, mondays))
    assert [type(run) for run in runs] == [CohortWeek, QuietWeeks, CohortWeek, QuietWeeks]
    assert runs[1] == QuietWeeks(newest=mondays[1], oldest=mondays[3]) and runs[1].weeks == 3
    assert runs[3] == QuietWeeks(mondays[5], mondays[5]) and runs[3].weeks == 1
    assert runs[2].week == mondays[4]
    assert cohort_runs([]) == []


# --- subjects -------------------------------------------------------------------------------------


def test_a_subject_is_shown_rendered_for_the_chains_topic_and_the_sample_lead(environment) -> None:
    from landing.tables import Topic

    context = sample_context(Topic(name="Analytics", slug="analytics"), None)
    line = render_subject("Your ebook: {{ topic.name }} starts here", context, "step 1")
    assert (line.text, line.rendered, line.raw) == ("Your ebook: Analytics starts here", True,
                                                    "Your ebook: {{ topic.name }} starts here")
    assert render_subject("{{ lead.first_name | default('there') }}, a tip", context, "step 2").text == "Alex, a tip"


def test_a_subject_that_does_not_render_is_shown_as_written_with_the_error(environment) -> None:
    context = sample_context(None, None)
    broken = render_subject("Hi {{ lead.nickname }}", context, "step 3")
    assert broken.text == "Hi {{ lead.nickname }}" and not broken.rendered
    assert broken.error.startswith("step 3 subject") and "nickname" in broken.error
    unclosed = render_subject("Hi {{ topic.name", context, "step 4")
    assert unclosed.text == "Hi {{ topic.name" and unclosed.error


# --- the thresholds' settings ----------------------------------------------------------------------


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SECRET_KEY", "a-secret-key-long-enough")
    for name in ("BOUNCE_RATE_WARN", "COMPLAINT_RATE_WARN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_warning_lines_default_to_5_percent_bounces_and_0_3_percent_complaints(environment) -> None:
    from server.settings import read_settings

    settings = read_settings()
    assert (settings.bounce_rate_warn, settings.complaint_rate_warn) == (0.05, 0.003)


@pytest.mark.parametrize(("value", "expected"), [("0.1", 0.1), ("10%", 0.1), (" 2.5% ", 0.025), ("1", 1.0)])
def test_the_warning_lines_read_fractions_or_percentages(environment, value, expected) -> None:
    from server.settings import read_settings

    environment.setenv("BOUNCE_RATE_WARN", value)
    environment.setenv("COMPLAINT_RATE_WARN", value)
    settings = read_settings()
    assert settings.bounce_rate_warn == pytest.approx(expected)
    assert settings.complaint_rate_warn == pytest.approx(expected)


@pytest.mark.parametrize("value", ["abc", "0", "-0.1", "1.5", "150%", "nan", "inf", "%"])
@pytest.mark.parametrize("variable", ["BOUNCE_RATE_WARN", "COMPLAINT_RATE_WARN"])
def test_bad_warning_lines_are_refused_naming_the_variable(environment, variable, value) -> None:
    from server.settings import ConfigError, read_settings

    environment.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        read_settings()
    assert caught.value.variable == variable
