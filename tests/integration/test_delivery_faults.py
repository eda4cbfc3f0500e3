"""Faults around a send: nothing is lost, nothing is sent twice, and what is uncertain is reported."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from aiosmtpd.controller import Controller

from content.chains import due_enrollments
from content.delivery import MAX_ATTEMPTS, Outcome, report_stuck_deliveries, send_due_step
from content.mail import Relay
from content.tables import Delivery, DeliveryStatus, Enrollment, Step, Suppression
from server.embedded import free_port
from server.settings import _parse_smtp_url
from tests.integration.conftest import run_worker_burst
from tests.integration.test_delivery_ledger import capture, send_through_refusing_relay


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def _make_due(enrollment_id: int) -> None:
    await Enrollment.update({Enrollment.due_at: _now() - timedelta(seconds=1)}).where(Enrollment.id == enrollment_id)


async def test_a_letter_overdue_by_days_is_still_queued_and_sent(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "olga@example.com")
    # The workers were down for three days: the step's due time is far in the past.
    await Enrollment.update({Enrollment.due_at: _now() - timedelta(days=3)}).where(Enrollment.id == enrollment_id)
    await run_worker_burst(sink.url, sweep_first=True)
    assert len(sink.letters()) == 5, "the overdue letter and the rest of the chain went out"
    assert await Delivery.count().where(Delivery.status == DeliveryStatus.sent) == 5


async def test_a_template_that_crashes_is_not_left_half_sent(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "pia@example.com")
    # Not a Jinja syntax error: this one only fails while rendering (a TypeError).
    await Step.update({Step.subject: "{{ 1 + 'a' }}"}).where(Step.position == 1)
    relay = Relay(_parse_smtp_url(sink.url))
    try:
        result = await send_due_step(enrollment_id, relay)
    finally:
        await relay.close()
    assert result.outcome == Outcome.retry
    delivery = await Delivery.objects().first()
    assert delivery.status == DeliveryStatus.failed, "released for a retry, not stuck in flight"
    assert "TypeError" in delivery.smtp_reply
    assert sink.letters() == []
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    assert enrollment.status == "active" and enrollment.due_at > _now(), "retried later, with backoff"


async def test_a_letter_that_keeps_failing_gives_up_visibly(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "quinn@example.com")
    await Step.update({Step.subject: "{{ 1 + 'a' }}"}).where(Step.position == 1)
    relay = Relay(_parse_smtp_url(sink.url))
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            await _make_due(enrollment_id)
            result = await send_due_step(enrollment_id, relay)
            assert result.outcome == (Outcome.gave_up if attempt == MAX_ATTEMPTS else Outcome.retry), attempt
    finally:
        await relay.close()
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    assert enrollment.status == "exited" and enrollment.exit_reason.startswith(f"gave up after {MAX_ATTEMPTS} attempts")
    assert (await Delivery.objects().first()).attempts == MAX_ATTEMPTS
    assert await due_enrollments() == []


async def test_a_job_cancelled_before_smtp_releases_its_row(client, catalog, sink, monkeypatch) -> None:
    import content.delivery

    enrollment_id = await capture(client, "rui@example.com")

    def cancelled(*args, **kwargs):
        raise asyncio.CancelledError()  # what a deploy's SIGTERM does to a running job

    monkeypatch.setattr(content.delivery, "render_letter", cancelled)
    relay = Relay(_parse_smtp_url(sink.url))
    try:
        with pytest.raises(asyncio.CancelledError):
            await send_due_step(enrollment_id, relay)
    finally:
        await relay.close()
    assert (await Delivery.objects().first()).status == DeliveryStatus.failed
    monkeypatch.undo()
    await _make_due(enrollment_id)
    await run_worker_burst(sink.url, sweep_first=True)
    assert len(sink.letters()) == 5 and await Delivery.count() == 5


class SenderRefusingHandler:
    """A misconfigured relay: it refuses our sender address at MAIL FROM."""

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        return "550 5.7.1 sender not allowed"


async def test_a_relay_refusing_our_sender_does_not_suppress_the_lead(client, catalog) -> None:
    enrollment_id = await capture(client, "sam@example.com")
    port = free_port()
    controller = Controller(SenderRefusingHandler(), hostname="127.0.0.1", port=port)
    controller.start()
    relay = Relay(_parse_smtp_url(f"smtp://127.0.0.1:{port}"))
    try:
        result = await send_due_step(enrollment_id, relay)
    finally:
        await relay.close()
        controller.stop()
    assert result.outcome == Outcome.retry
    delivery = await Delivery.objects().first()
    assert delivery.status == DeliveryStatus.failed and "(at MAIL)" in delivery.smtp_reply
    assert await Suppression.count() == 0
    assert (await Enrollment.objects().get(Enrollment.id == enrollment_id)).status == "active"


async def test_a_temporary_refusal_of_the_address_is_retried_not_suppressed(client, catalog) -> None:
    enrollment_id = await capture(client, "tao@example.com")
    result = await send_through_refusing_relay(enrollment_id, "452 4.2.2 mailbox full")
    assert result.outcome == Outcome.retry
    assert await Suppression.count() == 0


class SilentAfterDataHandler:
    """A relay that takes the whole letter, then drops the connection without a reply."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.received.append(envelope.original_content)
        server.transport.close()
        return None


async def test_no_reply_after_the_data_is_reported_never_resent(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "uma@example.com")
    handler = SilentAfterDataHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    relay = Relay(_parse_smtp_url(f"smtp://127.0.0.1:{port}"), timeout=5)
    try:
        result = await send_due_step(enrollment_id, relay)
    finally:
        await relay.close()
        controller.stop()
    assert result.outcome == Outcome.unknown
    assert len(handler.received) == 1, "the relay got the letter once: it was not resent on the spot"
    delivery = await Delivery.objects().first()
    assert delivery.status == DeliveryStatus.unknown and delivery.message_id

    # The sweeper leaves it alone: the relay may have delivered it.
    assert await due_enrollments() == []
    await run_worker_burst(sink.url, sweep_first=True)
    assert sink.letters() == []

    # A person checks the relay's log, finds it delivered and marks it sent in the admin:
    # the chain goes on from the next step, without the first letter again.
    await Delivery.update({Delivery.status: DeliveryStatus.sent}).where(Delivery.id == delivery.id)
    await run_worker_burst(sink.url, sweep_first=True)
    subjects = [str(m["Subject"]) for m in sink.letters()]
    assert len(subjects) == 4, subjects
    assert await Delivery.count() == 5


async def test_rows_left_by_a_dead_worker_are_settled_by_what_they_may_have_done(client, catalog, sink) -> None:
    claimed_id = await capture(client, "vera@example.com")
    sending_id = await capture(client, "wim@example.com")
    step = await Step.objects().where(Step.position == 1).first()
    long_ago = _now() - timedelta(hours=1)
    # One worker died after claiming (before SMTP), one during SMTP.
    for enrollment_id, status in ((claimed_id, DeliveryStatus.claimed), (sending_id, DeliveryStatus.sending)):
        enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
        await Delivery.insert(Delivery(enrollment=enrollment_id, step=(await Step.objects().where(
            (Step.chain == enrollment.chain) & (Step.position == 1)).first()).id, status=status, attempts=1,
            reserved_at=long_ago))
    assert step is not None
    assert await due_enrollments() == [], "in-flight rows are not queued twice"
    assert await report_stuck_deliveries() == 2
    statuses = {r["enrollment"]: r["status"] for r in await Delivery.select(Delivery.enrollment, Delivery.status)}
    assert statuses == {claimed_id: DeliveryStatus.failed, sending_id: DeliveryStatus.unknown}
    await run_worker_burst(sink.url, sweep_first=True)
    recipients = {str(m["To"]) for m in sink.letters()}
    assert recipients == {"vera@example.com"}, "the never-sent letter is retried; the maybe-sent one is not"


class StallingRelay:
    """A relay that stalls, before or after the letter is handed over, until cancelled."""

    def __init__(self, hand_over: bool) -> None:
        self.hand_over = hand_over
        self.stalled = asyncio.Event()

    async def send(self, message, before_data=None) -> str:
        if self.hand_over and before_data is not None:
            await before_data()
        self.stalled.set()
        await asyncio.Event().wait()
        return "unreachable"


@pytest.mark.parametrize(("hand_over", "status"), [(False, DeliveryStatus.failed), (True, DeliveryStatus.unknown)])
async def test_a_job_cancelled_inside_smtp_is_settled_by_whether_the_relay_had_the_letter(
        client, catalog, hand_over, status) -> None:
    # Waiting for a free connection or a send-rate slot is "not handed over": retried. In the
    # letter's DATA it may have arrived: reported, never resent.
    enrollment_id = await capture(client, f"stall{int(hand_over)}@example.com")
    relay = StallingRelay(hand_over)
    job = asyncio.ensure_future(send_due_step(enrollment_id, relay))
    await relay.stalled.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    delivery = await Delivery.objects().first()
    assert delivery.status == status
    if hand_over:
        assert delivery.message_id.startswith("<lk."), "the uncertain letter is named for the report"


@pytest.mark.parametrize(("hand_over", "status"), [(False, "failed"), (True, "unknown")])
async def test_a_notice_cancelled_inside_smtp_is_settled_the_same_way(client, catalog, hand_over, status) -> None:
    from content.notices import send_notice
    from content.tables import Notice

    await capture(client, f"nstall{int(hand_over)}@example.com")
    notice = await Notice.objects().first()
    relay = StallingRelay(hand_over)
    job = asyncio.ensure_future(send_notice(notice.id, relay))
    await relay.stalled.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert (await Notice.objects().get(Notice.id == notice.id)).status == status


class OvertakenRelay:
    """While this job waits for a connection, its claim is released and another job takes it."""

    def __init__(self) -> None:
        self.data_sent = False

    async def send(self, message, before_data=None) -> str:
        await report_stuck_deliveries(_now() + timedelta(days=1))  # the claim looked dead
        await Delivery.update({Delivery.status: DeliveryStatus.claimed, Delivery.attempts: Delivery.attempts + 1},
                              force=True)  # …and another job claimed the row again
        await before_data()
        self.data_sent = True
        return "250 sent"


async def test_a_job_whose_claim_was_taken_over_while_it_waited_does_not_send(client, catalog) -> None:
    enrollment_id = await capture(client, "overtaken@example.com")
    relay = OvertakenRelay()
    result = await send_due_step(enrollment_id, relay)
    assert result.outcome == Outcome.already and not relay.data_sent, "only the job holding the claim sends"
    delivery = await Delivery.objects().first()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.claimed, 2), "the other job's claim is untouched"


async def test_a_relay_outage_never_uses_up_a_letters_attempts(client, catalog) -> None:
    enrollment_id = await capture(client, "outage@example.com")
    relay = Relay(_parse_smtp_url(f"smtp://127.0.0.1:{free_port()}"))  # nobody listens
    for _ in range(MAX_ATTEMPTS + 2):
        await _make_due(enrollment_id)
        result = await send_due_step(enrollment_id, relay)
        assert result.outcome == Outcome.retry
    delivery = await Delivery.objects().first()
    assert delivery.status == DeliveryStatus.failed and delivery.attempts == 0, "the outage is not the letter's fault"
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    assert enrollment.status == "active" and enrollment.due_at > _now(), "the lead stays in its chain, retried later"


async def test_steps_renumbered_in_a_live_chain_move_the_lead_on(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "renumbered@example.com")
    relay = Relay(_parse_smtp_url(sink.url))
    try:
        assert (await send_due_step(enrollment_id, relay)).outcome == Outcome.sent
        enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
        # The team makes room for a new letter: every later step moves up by ten.
        for step in await Step.objects().where((Step.chain == enrollment.chain) & (Step.position > 1)):
            await Step.update({Step.position: step.position + 10}).where(Step.id == step.id)
        await _make_due(enrollment_id)
        result = await send_due_step(enrollment_id, relay)
    finally:
        await relay.close()
    assert result.outcome == Outcome.sent and result.next_due.position == 13
    assert len(sink.letters()) == 2
    sent = await Delivery.select(Delivery.step.position.as_alias("position")).where(Delivery.status == DeliveryStatus.sent)
    assert sorted(r["position"] for r in sent) == [1, 12], "the old second step, now twelfth, went next"
