"""Lift and significance, checked on a real email experiment with a no-email control (Hillstrom)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from scipy import stats

from content.experiments import compare

# The shared data sits beside the repository (../shared/data), wherever it is checked out.
HILLSTROM = next(
    (base / "shared" / "data" / "hillstrom_email" / "hillstrom.csv"
     for base in (Path(__file__).resolve().parents[4], Path.cwd().parent, Path("/work"))
     if (base / "shared" / "data" / "hillstrom_email" / "hillstrom.csv").exists()),
    Path(__file__).resolve().parents[4] / "shared" / "data" / "hillstrom_email" / "hillstrom.csv",
)


@pytest.fixture(scope="module")
def visits() -> dict[str, tuple[int, int]]:
    """(visits, customers) per segment of the Hillstrom data."""
    if not HILLSTROM.exists():
        pytest.skip(f"the Hillstrom data is not at {HILLSTROM}")
    counts: dict[str, list[int]] = {}
    with HILLSTROM.open(newline="") as handle:
        for row in csv.DictReader(handle):
            seen = counts.setdefault(row["segment"], [0, 0])
            seen[0] += int(row["visit"])
            seen[1] += 1
    return {segment: (v, n) for segment, (v, n) in counts.items()}


def test_the_visit_rates_are_the_published_ones(visits) -> None:
    rates = {segment: v / n for segment, (v, n) in visits.items()}
    assert round(rates["Mens E-Mail"] * 100, 2) == 18.28
    assert round(rates["Womens E-Mail"] * 100, 2) == 15.14
    assert round(rates["No E-Mail"] * 100, 2) == 10.62


@pytest.mark.parametrize("segment", ["Mens E-Mail", "Womens E-Mail"])
def test_lift_and_significance_match_a_textbook_calculation(visits, segment) -> None:
    (v1, n1), (v0, n0) = visits[segment], visits["No E-Mail"]
    result = compare(v1, n1, v0, n0)
    # The textbook way with scipy: a chi-square test of the 2x2 table without continuity
    # correction is the pooled two-proportion z-test squared.
    chi2, p_value, _, _ = stats.chi2_contingency([[v1, n1 - v1], [v0, n0 - v0]], correction=False)
    assert result.z ** 2 == pytest.approx(chi2, rel=1e-9)
    assert result.p_value == pytest.approx(p_value, rel=1e-6, abs=1e-300)
    # Newcombe's hybrid score interval of the difference, from its definition (Newcombe 1998, method
    # 10) on scipy's Wilson intervals of each rate.
    p1, p0 = v1 / n1, v0 / n0
    low1, high1 = stats.binomtest(v1, n1).proportion_ci(0.95, method="wilson")
    low0, high0 = stats.binomtest(v0, n0).proportion_ci(0.95, method="wilson")
    assert result.low == pytest.approx(p1 - p0 - math.hypot(p1 - low1, high0 - p0), rel=1e-9)
    assert result.high == pytest.approx(p1 - p0 + math.hypot(high1 - p1, p0 - low0), rel=1e-9)
    assert result.relative_lift == pytest.approx((p1 - p0) / p0)
    assert result.significant and result.low > 0


def test_men_beat_women_and_small_differences_are_not_significant(visits) -> None:
    (vm, nm), (vw, nw) = visits["Mens E-Mail"], visits["Womens E-Mail"]
    assert compare(vm, nm, vw, nw).significant
    # 52 of 500 against 50 of 500: no evidence either way.
    small = compare(52, 500, 50, 500)
    assert not small.significant and small.low < 0 < small.high and small.p_value > 0.8


def test_impossible_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        compare(0, 0, 1, 10)
    with pytest.raises(ValueError, match="11 conversions out of 10"):
        compare(11, 10, 1, 10)
    assert compare(0, 10, 0, 10).p_value == 1.0 and compare(3, 10, 0, 10).relative_lift is None


# Newcombe (1998), "Interval estimation for the difference between independent proportions",
# Statistics in Medicine 17:873-890, Table II, method 10, as statsmodels 0.14 computes them:
# confint_proportions_2indep(count1, nobs1, count2, nobs2, method="newcomb", compare="diff").
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.052431, 0.333873)),
    ((9, 10, 3, 10), (0.170523, 0.809018)),
    ((6, 7, 2, 7), (0.058228, 0.806250)),
    ((5, 56, 0, 29), (-0.038137, 0.192560)),
    ((0, 10, 0, 20), (-0.161125, 0.277533)),
    ((10, 10, 0, 20), (0.679086, 1.0)),
]


@pytest.mark.parametrize(("counts", "interval"), NEWCOMBE_TABLE_II)
def test_the_interval_of_the_difference_is_newcombes(counts, interval) -> None:
    result = compare(*counts)
    assert (result.low, result.high) == pytest.approx(interval, abs=1e-6)


@pytest.mark.parametrize("counts", [(5, 5, 1, 5), (3, 3, 0, 3), (0, 4, 4, 4), (1, 1, 0, 1), (12, 12, 2, 10)])
def test_the_interval_never_leaves_minus_to_plus_100_points(counts) -> None:
    # 5 of 5 against 1 of 5: the Wald interval ran to +155 points, past anything a rate can differ by.
    result = compare(*counts)
    assert -1 <= result.low <= result.difference <= result.high <= 1
    # statsmodels (newcomb) gives 0.192591 to 0.963776 for 5/5 against 1/5.
    if counts == (5, 5, 1, 5):
        assert (result.low, result.high) == pytest.approx((0.192591, 0.963776), abs=1e-6)
