"""The send path reads a due step in one statement and claims in one: the rules it folds in still hold."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from content.delivery import Outcome, SendResult, email_hash, send_due_step
from content.mail import Relay
from content.tables import (
    Chain,
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentStatus,
    OfferKind,
    Step,
    StepKind,
    Suppression,
    SuppressionReason,
)
from landing.tables import Conversion, Lead, Topic, TopicPreference
from scoring.tables import Score
from server.settings import _parse_smtp_url
from tests.integration.test_delivery_ledger import capture


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def _send(enrollment_id: int, sink, relay: Relay | None = None) -> SendResult:
    relay = relay or Relay(_parse_smtp_url(sink.url))
    try:
        return await send_due_step(enrollment_id, relay)
    finally:
        await relay.close()


async def _at_offer_step(enrollment_id: int) -> Step:
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    step = await Step.objects().get((Step.chain == enrollment.chain) & (Step.kind == StepKind.offer))
    await Enrollment.update({Enrollment.next_position: step.position, Enrollment.due_at: _now() - timedelta(seconds=1)}
                            ).where(Enrollment.id == enrollment_id)
    return step


async def _suppressed_behind_its_back(email: str) -> None:
    """A suppression that landed while the enrollment was still active (the race `suppress`
    closes for the enrollments it finds)."""
    await Suppression.insert(Suppression(email_hash=email_hash(email), reason=SuppressionReason.unsubscribe))


async def test_the_offer_is_hot_over_the_chains_threshold_and_cold_below_it(client, catalog, sink) -> None:
    for email, combined, kind in (("warm@example.com", 45.0, OfferKind.hot), ("cool@example.com", 10.0, OfferKind.cold),
                                  ("new@example.com", None, OfferKind.cold)):
        enrollment_id = await capture(client, email)
        await _at_offer_step(enrollment_id)
        enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
        chain = await Chain.objects().get(Chain.id == enrollment.chain)
        assert chain.hot_threshold == 30
        if combined is not None:
            await Score.insert(Score(lead=enrollment.lead, topic=chain.topic, rule_points=combined, combined=combined,
                                     explanation={}))
        assert (await _send(enrollment_id, sink)).outcome == Outcome.sent
        row = await Delivery.objects().where(Delivery.enrollment == enrollment_id).first()
        assert (row.offer_kind, row.variant) == (kind, "")
        letter = [m for m in sink.letters() if str(m["To"]) == email]
        expected = "Let us look at your" if kind == OfferKind.hot else "When you are ready: our"
        assert len(letter) == 1 and str(letter[0]["Subject"]).startswith(expected), str(letter[0]["Subject"])
        assert (await Enrollment.objects().get(Enrollment.id == enrollment_id)).status == EnrollmentStatus.completed


async def test_leaving_the_topic_ends_the_chain_before_the_next_letter(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "leaver@example.com")
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    chain = await Chain.objects().get(Chain.id == enrollment.chain)
    await TopicPreference.insert(TopicPreference(lead=enrollment.lead, topic=chain.topic, subscribed=False))
    result = await _send(enrollment_id, sink)
    assert (result.outcome, result.detail) == (Outcome.exited, "left the topic")
    assert sink.letters() == []
    # Left another topic only: the chain goes on.
    other = await capture(client, "stayer@example.com")
    lead = await Lead.objects().get(Lead.email == "stayer@example.com")
    elsewhere = await Topic.objects().where(Topic.id != chain.topic).first()
    await TopicPreference.insert(TopicPreference(lead=lead.id, topic=elsewhere.id, subscribed=False))
    assert (await _send(other, sink)).outcome == Outcome.sent


async def test_a_suppressed_address_leaves_before_any_other_rule(client, catalog, sink) -> None:
    converted = await capture(client, "both@example.com")
    lead = await Lead.objects().get(Lead.email == "both@example.com")
    await Conversion(lead=lead.id, kind="order", value=10).save()
    await _suppressed_behind_its_back("both@example.com")
    assert (await _send(converted, sink)).detail == "suppressed"

    waiting = await capture(client, "night@example.com")
    enrollment = await Enrollment.objects().get(Enrollment.id == waiting)
    hour = _now().hour
    await Chain.update({Chain.send_window_start: (hour + 2) % 24, Chain.send_window_end: (hour + 3) % 24 or 24}
                       ).where(Chain.id == enrollment.chain)
    await _suppressed_behind_its_back("night@example.com")
    result = await _send(waiting, sink)
    assert (result.outcome, result.detail) == (Outcome.exited, "suppressed")
    for enrollment_id in (converted, waiting):
        row = await Enrollment.objects().get(Enrollment.id == enrollment_id)
        assert (row.status, row.exit_reason) == (EnrollmentStatus.exited, "suppressed")
    assert sink.letters() == []
    assert await Delivery.count() == 0


async def test_the_claim_refuses_a_suppressed_address_new_or_retried(client, catalog, sink) -> None:
    fresh = await capture(client, "fresh@example.com")
    await _suppressed_behind_its_back("fresh@example.com")
    assert (await _send(fresh, sink)).detail == "suppressed"
    assert await Delivery.count() == 0, "no ledger row for a suppressed address"

    retried = await capture(client, "retried@example.com")
    enrollment = await Enrollment.objects().get(Enrollment.id == retried)
    step = await Step.objects().get((Step.chain == enrollment.chain) & (Step.position == 1))
    await Delivery(enrollment=retried, step=step.id, lead=enrollment.lead, status=DeliveryStatus.failed, attempts=1,
                   to_address="retried@example.com").save()
    await _suppressed_behind_its_back("retried@example.com")
    assert (await _send(retried, sink)).detail == "suppressed"
    row = await Delivery.objects().where(Delivery.enrollment == retried).first()
    assert (row.status, row.attempts) == (DeliveryStatus.failed, 1), "a failed row is not claimed again"
    assert sink.letters() == []


async def test_a_failed_row_is_claimed_again_with_its_attempts_counted(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "again@example.com")
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    step = await Step.objects().get((Step.chain == enrollment.chain) & (Step.position == 1))
    await Delivery(enrollment=enrollment_id, step=step.id, lead=None, status=DeliveryStatus.failed, attempts=2,
                   to_address="again@example.com").save()
    assert (await _send(enrollment_id, sink)).outcome == Outcome.sent
    row = await Delivery.objects().where(Delivery.enrollment == enrollment_id).first()
    assert (row.status, row.attempts, row.lead) == (DeliveryStatus.sent, 3, enrollment.lead)
    assert row.message_id == f"<lk.{row.id}.{enrollment_id}.1@{row.message_id.split('@')[1]}"
    assert [str(m["Message-ID"]) for m in sink.letters()] == [row.message_id]


async def test_a_step_edited_while_the_letter_waited_for_the_relay_counts(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "patient@example.com")
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)

    class SlowRelay(Relay):
        async def send(self, message, before_data=None):
            # Staff change the next step's delay while this letter waits for a connection.
            await Step.update({Step.delay_minutes: 90}).where((Step.chain == enrollment.chain) & (Step.position == 2))
            return await super().send(message, before_data)

    result = await _send(enrollment_id, sink, SlowRelay(_parse_smtp_url(sink.url)))
    assert result.outcome == Outcome.sent
    sent = await Delivery.objects().where(Delivery.enrollment == enrollment_id).first()
    moved = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    assert moved.next_position == 2
    assert moved.due_at - sent.sent_at == timedelta(minutes=90)
    assert result.next_due is not None and result.next_due.due_at == moved.due_at


async def test_the_last_letter_completes_the_enrollment(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "last@example.com")
    await _at_offer_step(enrollment_id)
    result = await _send(enrollment_id, sink)
    assert (result.outcome, result.next_due) == (Outcome.sent, None)
    row = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    assert (row.status, row.exit_reason, row.due_at) == (EnrollmentStatus.completed, "finished", None)
