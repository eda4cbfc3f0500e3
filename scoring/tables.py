"""Scoring tables: rules, per-lead-and-topic scores, their history, and trained models."""

from __future__ import annotations

from enum import Enum

from piccolo.columns import (
    JSON,
    Boolean,
    ForeignKey,
    Integer,
    OnDelete,
    Real,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table

from landing.tables import Lead, Topic


class RuleKind(str, Enum):
    event = "event"
    """Points per matching event, decaying with age."""
    profile = "profile"
    """Points once for a lead whose attributes match (role, company size, source)."""


class ScoringRule(Table):
    """Points for an event type (optionally per topic and property match), decaying by half-life;
    or, for a profile rule, points for lead attributes that match."""

    name = Varchar(length=200)
    kind = Varchar(length=10, choices=RuleKind, default=RuleKind.event)
    event_type = Varchar(length=40, index=True, default="", help_text="Event rules: page_view, download, email_open …")
    topic = ForeignKey(references=Topic, null=True, default=None, on_delete=OnDelete.cascade)
    property_match = JSON(default={}, help_text='Glob per property, e.g. {"url": "*/pricing*"}; profile rules: '
                          '{"role": "*director*", "company_size": ">=50"}')
    points = Real(default=1.0)
    daily_cap = Integer(null=True, default=None)
    half_life_days = Real(default=30.0)
    active = Boolean(default=True)


class ScoringModel(Table):
    """A trained model version with its validation metrics; one is active at a time."""

    version = Varchar(length=40, unique=True)
    algorithm = Varchar(length=40, default="lightgbm")
    metrics = JSON(default={})
    path = Varchar(length=500, default="")
    active = Boolean(default=False, index=True)
    trained_at = Timestamptz(default=TimestamptzNow())
    spec = JSON(default={}, help_text="The features it reads, with their vocabularies.")
    artifact = Text(default="", help_text="The model itself (LightGBM text or logistic weights).")
    labels = Integer(default=0)
    notes = Text(default="", help_text="Warnings from training (leakage, too few labels, promotion).")


class AttributeKind(str, Enum):
    numeric = "numeric"
    categorical = "categorical"


class LeadAttribute(Table):
    """A lead attribute column from an import: its type, and whether the model may read it."""

    name = Varchar(length=200, unique=True)
    kind = Varchar(length=12, choices=AttributeKind, default=AttributeKind.categorical)
    excluded = Boolean(default=False, help_text="Filled in after the outcome (leaks it): never a feature.")
    note = Varchar(length=300, default="")
    updated_at = Timestamptz(default=TimestamptzNow())


class Score(Table):
    """A lead's interest in a topic: rule points, model probability, combined 0-100, why."""

    lead = ForeignKey(references=Lead, on_delete=OnDelete.cascade)
    topic = ForeignKey(references=Topic, on_delete=OnDelete.cascade, index=True)
    rule_points = Real(default=0.0)
    model_probability = Real(null=True, default=None)
    combined = Real(default=0.0, index=True)
    hot = Boolean(default=False, index=True)
    explanation = JSON(default=[])
    model_version = Varchar(length=40, default="rules")
    computed_at = Timestamptz(default=TimestamptzNow())


class ScoreHistory(Table):
    """Each computed combined score, so a lead's interest can be drawn over time."""

    lead = ForeignKey(references=Lead, on_delete=OnDelete.cascade)
    topic = ForeignKey(references=Topic, on_delete=OnDelete.cascade)
    combined = Real()
    computed_at = Timestamptz(default=TimestamptzNow())
