"""The demo's past: chain results with a lift, nothing left due, the ledger, stage and score history."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from content.chains import all_due, due_enrollments
from content.delivery import email_hash
from content.results import chain_results
from content.tables import Chain, Delivery, DeliveryStatus, Enrollment, EnrollmentStatus, Suppression
from landing.outcomes import OUTCOME_STAGES
from landing.tables import Conversion, Event, Lead, LeadChange, LeadStage
from scoring.ranking import score_history
from scoring.tables import Score, ScoreHistory
from server.demo_data import seed_demo
from tests.staff import desk_login, make_staff

HTML = {"accept": "text/html"}


@pytest.fixture
async def demo(client) -> datetime:
    """The demo seeded with 60 leads of history; the moment it was seeded after."""
    before = datetime.now(timezone.utc)
    assert await seed_demo(delay_minutes=0, historical_leads=60)
    return before


async def test_each_chain_shows_a_funnel_per_step_both_groups_and_a_lift(demo) -> None:
    treated = control = treated_converted = control_converted = 0
    versions: dict[str, Counter] = defaultdict(Counter)
    for chain in await Chain.select(Chain.id, Chain.holdout_percent):
        # The past had a holdout; live visitors always get the letters (the holdout is back to 0).
        assert chain["holdout_percent"] == 0, "someone trying the demo form gets the chain's letters"
        results = await chain_results(chain["id"])
        # The group is the real enrollment's, a hash of chain and lead ids: with 60 leads a
        # chain may draw no control lead, so both groups are checked over all chains.
        assert results.enrolled["treatment"] > 0
        assert (results.experiment is not None) == (results.enrolled["control"] > 0)
        treated += results.enrolled["treatment"]
        control += results.enrolled["control"]
        treated_converted += results.converted["treatment"]
        control_converted += results.converted["control"]
        sent = Counter()
        for step in results.steps:
            sent[step.position] += step.sent
            assert step.opened <= step.delivered <= step.sent and step.clicked <= step.opened
            versions[step.version].update(sent=step.delivered, opened=step.opened, clicked=step.clicked)
        assert all(sent[p] > 0 for p in range(1, 6)), f"every step sent something: {sent}"
        assert sum(s.opened for s in results.steps) > 0
    assert control > 0 and treated_converted / treated > control_converted / control, "the chains lift conversion"
    assert versions["hot"]["sent"] > 0 and versions["cold"]["sent"] > 0, "the offer went out by score, hot and cold"
    letters = sum((versions[v] for v in ("", "A", "B")), Counter())
    assert 0.30 <= letters["opened"] / letters["sent"] <= 0.55, letters
    assert 0.03 <= letters["clicked"] / letters["sent"] <= 0.12, letters
    a, b = versions["A"], versions["B"]
    assert b["opened"] / b["sent"] > a["opened"] / a["sent"], "letter 2's B subject opens better"


async def test_no_demo_enrollment_is_ever_due(demo) -> None:
    far = datetime.now(timezone.utc) + timedelta(days=3650)
    assert await due_enrollments(far) == []
    assert [rows async for rows in all_due(far)] == []
    enrollments = await Enrollment.select(Enrollment.group, Enrollment.status, Enrollment.due_at)
    assert len(enrollments) >= 40, "most demo leads joined their topic's chain"
    for e in enrollments:
        assert e["due_at"] is None
        if e["group"] == "treatment":
            assert e["status"] in (EnrollmentStatus.completed, EnrollmentStatus.exited)


async def test_the_ledger_and_the_events_agree(demo) -> None:
    deliveries = await Delivery.select()
    keys = Counter((d["enrollment"], d["step"]) for d in deliveries)
    assert keys and max(keys.values()) == 1, "one ledger row per enrollment and step"
    by_id = {d["id"]: d for d in deliveries}
    now = datetime.now(timezone.utc)
    for d in deliveries:
        assert d["reserved_at"] < now
        if d["status"] == DeliveryStatus.sent:
            assert d["sent_at"] is not None and d["message_id"].startswith(f"<lk.{d['id']}.{d['enrollment']}.")
            if d["clicked_at"] is not None:
                assert d["opened_at"] is not None and d["sent_at"] <= d["opened_at"] <= d["clicked_at"]
        else:
            assert d["status"] == DeliveryStatus.bounced and d["opened_at"] is None
    tracked = await Event.select(Event.type, Event.lead, Event.properties).where(
        Event.type.is_in(["email_open", "email_click"])).output(load_json=True)
    assert tracked
    opened_by_events = set()
    for event in tracked:
        delivery = by_id[event["properties"]["delivery"]]
        assert delivery["lead"] == event["lead"]
        assert delivery["clicked_at" if event["type"] == "email_click" else "opened_at"] is not None
        opened_by_events.add(delivery["id"])
    assert opened_by_events == {d["id"] for d in deliveries if d["opened_at"] is not None}

    # Bounces and unsubscribes: suppressed, an event each, and the enrollment left the chain.
    exits = await Enrollment.select(Enrollment.lead.email.as_alias("email"), Enrollment.exit_reason).where(
        Enrollment.exit_reason.is_in(["bounce", "unsubscribe"]))
    suppressed = {s["email_hash"]: s["reason"] for s in await Suppression.select()}
    assert exits and len(suppressed) == len(exits)
    for e in exits:
        assert suppressed[email_hash(e["email"])] == e["exit_reason"]
    assert await Event.count().where(Event.type.is_in(["bounce", "unsubscribe"])) == len(exits)
    assert await Conversion.count() > 0


async def test_stage_changes_lead_to_the_stage_of_today(demo) -> None:
    leads = await Lead.select(Lead.id, Lead.stage, Lead.outcome_at, Lead.created_at, Lead.owner)
    changes = defaultdict(list)
    for row in await LeadChange.select().where(LeadChange.field == "stage").order_by(LeadChange.changed_at):
        changes[row["lead"]].append(row)
    assert {lead["stage"] for lead in leads} >= {"new", "contacted", "won"}
    now = datetime.now(timezone.utc)
    for lead in leads:
        mine = changes[lead["id"]]
        if lead["stage"] == LeadStage.new:
            assert not mine and lead["outcome_at"] is None
            continue
        assert mine, f"lead {lead['id']} ({lead['stage']}) has its stage history"
        assert mine[0]["old_value"] == "new" and mine[-1]["new_value"] == lead["stage"]
        assert all(a["new_value"] == b["old_value"] for a, b in zip(mine, mine[1:]))
        assert all(lead["created_at"] <= c["changed_at"] < now and c["via"] == "demo"
                   and c["changed_by_name"] == "sales" for c in mine)
        if lead["stage"] in OUTCOME_STAGES:
            last_outcome = [c for c in mine if c["new_value"] in OUTCOME_STAGES][-1]
            assert lead["outcome_at"] == last_outcome["changed_at"]
        else:
            assert lead["outcome_at"] is None
    # No sales user in this database: stages are kept by name, and nobody owns the leads.
    assert all(lead["owner"] is None for lead in leads)


async def test_the_sales_user_owns_the_leads_it_worked(client) -> None:
    sales_id = await make_staff("sales", "sales")
    assert await seed_demo(delay_minutes=0, historical_leads=60)
    worked = await Lead.select(Lead.id, Lead.owner).where(Lead.stage != LeadStage.new)
    assert worked and all(lead["owner"] == sales_id for lead in worked)
    changes = await LeadChange.select(LeadChange.field, LeadChange.changed_by, LeadChange.new_value)
    assert {c["changed_by"] for c in changes} == {sales_id}
    assert any(c["field"] == "owner" and c["new_value"] == "sales" for c in changes)

    # What sales see: the hot list, and a won lead's page with its history and score chart.
    await desk_login(client, "sales")
    assert (await client.get("/desk/hot", headers=HTML)).status_code == 200
    won = await Lead.select(Lead.id).where(Lead.stage == LeadStage.won).first()
    page = await client.get(f"/desk/leads/{won['id']}", headers=HTML)
    assert page.status_code == 200 and "<svg" in page.text and "qualified" in page.text


async def test_score_history_draws_a_line_for_each_demo_lead(demo) -> None:
    now = datetime.now(timezone.utc)
    leads = [row["id"] for row in await Lead.select(Lead.id)]
    for lead_id in leads:
        histories = [h for h in await score_history(lead_id) if any(v > 0 for _, v in h.points)]
        assert histories, f"lead {lead_id} has a score line"
        points = histories[0].points
        assert len(points) >= 3 and points[0][0] < now - timedelta(hours=12)
    # The last point is the score as it stands.
    score = await Score.select(Score.lead, Score.topic, Score.combined).where(Score.combined > 0).first()
    last = await ScoreHistory.select(ScoreHistory.combined).where(
        (ScoreHistory.lead == score["lead"]) & (ScoreHistory.topic == score["topic"])).order_by(
        ScoreHistory.computed_at, ascending=False).first()
    assert last["combined"] == pytest.approx(score["combined"], abs=0.5)


async def test_seeding_twice_changes_nothing(demo) -> None:
    tables = (Lead, Enrollment, Delivery, Event, Conversion, LeadChange, ScoreHistory, Suppression)
    before = [await table.count() for table in tables]
    assert not await seed_demo(delay_minutes=0, historical_leads=60)
    assert [await table.count() for table in tables] == before


async def test_without_demo_leads_there_is_no_history(client) -> None:
    assert await seed_demo(delay_minutes=0, historical_leads=0)
    assert await Enrollment.count() == 0 and await Delivery.count() == 0 and await LeadChange.count() == 0
    assert {c["holdout_percent"] for c in await Chain.select(Chain.holdout_percent)} == {0}


async def test_the_content_team_sees_results_and_the_dashboard(client) -> None:
    await make_staff("carla", "content")
    assert await seed_demo(delay_minutes=0, historical_leads=60)
    await desk_login(client, "carla")
    for chain in await Chain.select(Chain.id):
        page = await client.get(f"/desk/chains/{chain['id']}", headers=HTML)
        assert page.status_code == 200 and "<svg" in page.text
    dashboard = await client.get("/desk/dashboard?period=90", headers=HTML)
    assert dashboard.status_code == 200


async def test_the_demo_starts_without_a_flood_of_hot_alerts(demo) -> None:
    """Demo leads turned hot in the past: the hand-off, which announces the last day's crossings, has nothing to say."""
    from admin.alerts import record_crossings
    from landing.tables import Event
    from scoring.service import BECAME_HOT

    assert await Event.count().where(Event.type == BECAME_HOT) > 0
    assert await record_crossings() == 0
