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
    """Confidence interval of the difference (Wald, unpooled standard error)."""
    z: float
    p_value: float
    """Two-sided, from the pooled z-test of equal proportions."""
    confidence: float

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - self.confidence


def compare(treated_conversions: int, treated: int, control_conversions: int, control: int,
            confidence: float = 0.95) -> Comparison:
    """The textbook two-proportion comparison (e.g. Agresti, *Categorical Data Analysis*, 3.1).

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
    se = math.sqrt(p1 * (1 - p1) / treated + p0 * (1 - p0) / control)
    margin = NormalDist().inv_cdf(0.5 + confidence / 2) * se
    return Comparison(
        treatment_rate=p1, control_rate=p0, difference=difference,
        relative_lift=difference / p0 if p0 > 0 else None,
        low=difference - margin, high=difference + margin, z=z, p_value=p_value, confidence=confidence,
    )
