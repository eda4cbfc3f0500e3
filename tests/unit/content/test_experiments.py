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
    # The Wald interval of the difference, from its definition.
    p1, p0 = v1 / n1, v0 / n0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    assert result.low == pytest.approx(p1 - p0 - stats.norm.ppf(0.975) * se)
    assert result.high == pytest.approx(p1 - p0 + stats.norm.ppf(0.975) * se)
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
