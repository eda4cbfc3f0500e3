"""scoring/ranking.py: a stored explanation read back as reasons sales can read, whatever the row holds."""

from __future__ import annotations

import json

import numpy as np

from scoring.engine import FeatureSpec
from scoring.ranking import Reason, reasons
from scoring.rules import Contribution, explain
from scoring.service import model_explanation

RULE_FACTORS = [
    {"factor": "Visited pricing", "source": "rule", "points": 15.0, "effect": 6.0, "text": "Visited pricing (1×)"},
    {"factor": "Asked for an ebook", "source": "rule", "points": 10.0, "effect": 4.0, "text": "Asked for an ebook (1×)"},
]
MODEL_FACTORS = [
    {"factor": "ev:pricing_view:topic:7d", "source": "model", "effect": 12.5, "log_odds": 0.8,
     "text": "visited pricing once this week"},
    {"factor": "source", "source": "model", "effect": -3.25, "log_odds": -0.2, "text": "source: google"},
]


def test_reasons_are_ordered_by_the_size_of_their_effect_either_sign() -> None:
    found = reasons(RULE_FACTORS + MODEL_FACTORS)
    assert [r.text for r in found] == ["visited pricing once this week", "Visited pricing (1×)", "Asked for an ebook (1×)",
                                       "source: google"]
    assert [r.source for r in found] == ["model", "rule", "rule", "model"]
    assert [r.signed for r in found] == ["+12.5", "+6.0", "+4.0", "\u22123.2"]
    assert [r.text for r in reasons(RULE_FACTORS + MODEL_FACTORS, limit=3)][-1] == "Asked for an ebook (1×)"


def test_sqlite_json_text_reads_the_same_as_a_list() -> None:
    assert reasons(json.dumps(RULE_FACTORS)) == reasons(RULE_FACTORS)


def test_what_the_scoring_code_writes_reads_back() -> None:
    """The rules' and the model's own factor builders, so a change of format there fails here."""
    rule_part = explain([Contribution(1, "Clicked a link", 1, 8.0, 2)])
    rule_part[0]["effect"] = 8.0  # as compute_scores adds it
    spec = FeatureSpec(use_events=False, sources=["google"])
    model_part = model_explanation(spec, np.array([0.0, 0.0, 0.0]), np.array([0.9, 0.0, 0.0, -1.0]), 0.7, "SEO",
                                   {}, "google", {})
    found = reasons(rule_part + model_part)
    assert {r.source for r in found} == {"rule", "model"}
    assert any(r.text == "Clicked a link (2×)" and r.effect == 8.0 for r in found)
    assert any(r.text == "source: google" and r.effect and r.effect > 0 for r in found)


def test_malformed_rows_give_no_reasons_instead_of_an_error() -> None:
    assert reasons(None) == [] and reasons("not json") == [] and reasons({"text": "x"}) == []
    odd = [None, "text", {"text": ""}, {"text": "kept", "effect": "NaN"}, {"text": "points", "points": "7"},
           {"factor": "named only", "effect": True}]
    assert reasons(odd) == [Reason("points", 7.0, "rule"), Reason("kept", None, "rule"), Reason("named only", None, "rule")]
    assert Reason("x", None, "rule").signed == ""
