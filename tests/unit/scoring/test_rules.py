"""scoring/rules.py: matching, half-life decay, daily caps, ordering, explanations and clamping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from scoring.rules import Contribution, Rule, ScoredEvent, combine, decay, explain, matches, rule_points

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)


def _event(kind: str = "page_view", topic_id: int | None = None, ago: timedelta = timedelta(0), **props: object) -> ScoredEvent:
    return ScoredEvent(type=kind, occurred_at=NOW - ago, topic_id=topic_id, properties=props)


def _rule(rule_id: int = 1, points: float = 10.0, **kwargs: object) -> Rule:
    kwargs.setdefault("event_type", "page_view")
    kwargs.setdefault("half_life_days", 0)
    return Rule(id=rule_id, name=kwargs.pop("name", f"rule {rule_id}"), points=points, **kwargs)


# decay


@pytest.mark.parametrize(
    "age, half_life, weight",
    [(0, 30, 1.0), (30, 30, 0.5), (60, 30, 0.25), (7, 7, 0.5), (-5, 30, 1.0), (10, 0, 1.0), (10, -1, 1.0)],
)
def test_decay(age: float, half_life: float, weight: float) -> None:
    assert decay(age, half_life) == pytest.approx(weight)


# matches


def test_rule_matches_only_its_event_type() -> None:
    assert matches(_rule(event_type="page_view"), _event("page_view"), topic_id=1)
    assert not matches(_rule(event_type="download"), _event("page_view"), topic_id=1)


def test_topic_specific_rule_does_not_match_another_topic() -> None:
    rule = _rule(topic_id=1)
    other = _event(topic_id=2)
    assert not matches(rule, other, topic_id=2)
    assert not matches(rule, other, topic_id=1)
    assert matches(rule, _event(topic_id=1), topic_id=1)


def test_event_without_topic_counts_for_any_topic() -> None:
    rule = _rule()
    assert matches(rule, _event(topic_id=None), topic_id=1)
    assert matches(rule, _event(topic_id=None), topic_id=2)


def test_event_of_one_topic_does_not_count_for_another() -> None:
    assert not matches(_rule(), _event(topic_id=3), topic_id=4)


def test_property_match_is_a_glob() -> None:
    rule = _rule(property_match={"path": "*pricing*"})
    assert matches(rule, _event(path="/pricing?x=1"), topic_id=1)
    assert matches(rule, _event(path="/en/pricing"), topic_id=1)
    assert not matches(rule, _event(path="/about"), topic_id=1)
    assert not matches(rule, _event(), topic_id=1)


def test_property_match_is_case_sensitive_and_needs_every_key() -> None:
    rule = _rule(property_match={"path": "/pricing*", "source": "email"})
    assert matches(rule, _event(path="/pricing/team", source="email"), topic_id=1)
    assert not matches(rule, _event(path="/pricing/team"), topic_id=1)
    assert not matches(rule, _event(path="/PRICING", source="email"), topic_id=1)


# rule_points


def test_points_add_up_with_decay() -> None:
    rule = _rule(points=10, half_life_days=10)
    events = [_event(), _event(ago=timedelta(days=10))]
    [contribution] = rule_points([rule], events, [1], NOW)[1]
    assert contribution.points == pytest.approx(15.0)
    assert contribution.events == 2
    assert contribution.rule_id == 1
    assert contribution.topic_id == 1


def test_daily_cap_limits_events_per_day() -> None:
    rule = _rule(points=5, daily_cap=2)
    same_day = [_event(ago=timedelta(minutes=m)) for m in range(5)]
    [contribution] = rule_points([rule], same_day, [1], NOW)[1]
    assert contribution.events == 2
    assert contribution.points == pytest.approx(10.0)


def test_daily_cap_restarts_each_day() -> None:
    rule = _rule(points=5, daily_cap=2)
    events = [_event(ago=timedelta(days=d, minutes=m)) for d in (0, 1) for m in range(4)]
    [contribution] = rule_points([rule], events, [1], NOW)[1]
    assert contribution.events == 4
    assert contribution.points == pytest.approx(20.0)


def test_daily_cap_keeps_the_earliest_events_of_the_day() -> None:
    rule = _rule(points=8, daily_cap=1, half_life_days=1)
    # Same calendar day: the earlier (older, lighter) event is the one counted.
    events = [_event(ago=timedelta(hours=1)), _event(ago=timedelta(hours=11))]
    [contribution] = rule_points([rule], events, [1], NOW)[1]
    assert contribution.events == 1
    assert contribution.points == pytest.approx(8 * 0.5 ** (11 / 24))


def test_contributions_are_sorted_by_absolute_points() -> None:
    rules = [
        _rule(1, points=5, event_type="open"),
        _rule(2, points=-20, event_type="unsubscribe"),
        _rule(3, points=10, event_type="click"),
    ]
    events = [_event("open"), _event("unsubscribe"), _event("click")]
    contributions = rule_points(rules, events, [1], NOW)[1]
    assert [c.rule_id for c in contributions] == [2, 3, 1]
    assert [c.points for c in contributions] == [-20, 10, 5]


def test_negative_points_are_allowed() -> None:
    [contribution] = rule_points([_rule(points=-15)], [_event(), _event()], [1], NOW)[1]
    assert contribution.points == pytest.approx(-30.0)


def test_rules_without_matching_events_contribute_nothing() -> None:
    result = rule_points([_rule(event_type="download")], [_event("page_view")], [1, 2], NOW)
    assert result == {1: [], 2: []}


def test_each_topic_gets_its_own_contributions() -> None:
    rule = _rule(points=10)
    events = [_event(topic_id=1), _event(topic_id=1), _event(topic_id=2), _event(topic_id=None)]
    result = rule_points([rule], events, [1, 2, 3], NOW)
    assert result[1][0].events == 3
    assert result[2][0].events == 2
    assert result[3][0].events == 1


# explain and combine


def test_explain_is_readable_and_counts_events() -> None:
    contributions = [
        Contribution(rule_id=1, rule_name="Visited pricing", topic_id=1, points=12.345, events=3),
        Contribution(rule_id=2, rule_name="Opened a letter", topic_id=1, points=-2.0, events=1),
    ]
    factors = explain(contributions)
    assert factors[0] == {"factor": "Visited pricing", "source": "rule", "points": 12.3, "text": "Visited pricing (3×)"}
    assert factors[1]["text"] == "Opened a letter (1×)"
    assert factors[1]["points"] == -2.0


def test_explain_respects_the_limit() -> None:
    contributions = [Contribution(i, f"rule {i}", 1, float(10 - i), 1) for i in range(8)]
    assert [f["factor"] for f in explain(contributions, limit=3)] == ["rule 0", "rule 1", "rule 2"]
    assert len(explain(contributions)) == 5


@pytest.mark.parametrize("points, score", [(-5.0, 0.0), (0.0, 0.0), (42.5, 42.5), (100.0, 100.0), (250.0, 100.0)])
def test_combine_clamps_to_0_100(points: float, score: float) -> None:
    assert combine(points) == score
