"""Treatment against control: conversion rates, lift, its confidence interval and a p-value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class Comparison:
    """A treatment group's rate against the control's, with the usual two-proportion statistics."""

    treatment_rate: float
    control_rate: float
    difference: float
    """Absolute lift: treatment rate minus control rate."""
    relative_lift: float | None
    """Difference over the control rate (None when the control never converted)."""
    low: float
    high: float
    """Confidence interval of the difference: Newcombe's hybrid score interval, always within [-1, 1]."""
    z: float
    p_value: float
    """Two-sided, from the pooled z-test of equal proportions."""
    confidence: float

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - self.confidence


def wilson(successes: int, total: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion (Wilson 1927), within [0, 1] however small `total`."""
    rate = successes / total
    shrink = 1 + z * z / total
    centre = (rate + z * z / (2 * total)) / shrink
    half = z / shrink * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total))
    return max(centre - half, 0.0), min(centre + half, 1.0)


def newcombe(treated_conversions: int, treated: int, control_conversions: int, control: int,
             z: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval of a difference of two proportions (Newcombe 1998, method 10):
    each rate's Wilson interval, combined. Unlike the Wald interval it stays within [-1, 1] and keeps
    its coverage for small groups and rates near 0 or 1."""
    p1, p0 = treated_conversions / treated, control_conversions / control
    low1, high1 = wilson(treated_conversions, treated, z)
    low0, high0 = wilson(control_conversions, control, z)
    difference = p1 - p0
    low = difference - math.sqrt((p1 - low1) ** 2 + (high0 - p0) ** 2)
    high = difference + math.sqrt((high1 - p1) ** 2 + (p0 - low0) ** 2)
    return max(low, -1.0), min(high, 1.0)


def compare(treated_conversions: int, treated: int, control_conversions: int, control: int,
            confidence: float = 0.95) -> Comparison:
    """The textbook two-proportion comparison (e.g. Agresti, *Categorical Data Analysis*, 3.1): the
    pooled z-test for the p-value, Newcombe's interval for the difference.

    Raises ValueError for empty groups or counts that cannot be (more conversions than leads).
    """
    for converted, total, name in ((treated_conversions, treated, "treatment"), (control_conversions, control, "control")):
        if total <= 0:
            raise ValueError(f"the {name} group is empty")
        if not 0 <= converted <= total:
            raise ValueError(f"the {name} group has {converted} conversions out of {total}")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    p1, p0 = treated_conversions / treated, control_conversions / control
    difference = p1 - p0
    pooled = (treated_conversions + control_conversions) / (treated + control)
    pooled_se = math.sqrt(pooled * (1 - pooled) * (1 / treated + 1 / control))
    z = difference / pooled_se if pooled_se > 0 else 0.0
    p_value = math.erfc(abs(z) / math.sqrt(2))
    low, high = newcombe(treated_conversions, treated, control_conversions, control,
                         NormalDist().inv_cdf(0.5 + confidence / 2))
    return Comparison(
        treatment_rate=p1, control_rate=p0, difference=difference,
        relative_lift=difference / p0 if p0 > 0 else None,
        low=low, high=high, z=z, p_value=p_value, confidence=confidence,
    )


def format_rate(value: float | None) -> str:
    """A fraction as a percentage, as every desk page, chart and the PDF write one: two significant
    figures (one decimal below 10%, none from 10% up), so 0.042 -> 4.2%, 0.25 -> 25%; exactly zero
    is 0%, a trace <0.1%; None -> –."""
    if value is None:
        return "–"
    share = 100 * value
    if share == 0:
        return "0%"
    if 0 < share < 0.1:
        return "<0.1%"
    text = f"{share:.1f}%" if abs(round(share, 1)) < 10 else f"{share:.0f}%"
    return text.replace("-", "−")


def format_p(p_value: float) -> str:
    """p < 0.001, p = 0.012, p = 0.31: three decimals near the usual lines, two above them. Every
    page, verdict and chart writes a p-value with this, so one test never shows two precisions."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}" if p_value < 0.1 else f"p = {p_value:.2f}"
