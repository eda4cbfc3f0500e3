"""The send ledger: a step is sent once, whatever runs twice, and the database decides what is due."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from aiosmtpd.controller import Controller

from content.chains import due_enrollments
from content.delivery import Outcome, send_due_step
from content.mail import Relay
from content.tables import Delivery, DeliveryStatus, Enrollment, Suppression
from landing.tables import Lead
from server.settings import _parse_smtp_url
from tests.integration.conftest import landing_form, run_worker_burst


async def capture(client, email: str, slug: str = "seo") -> int:
    token = await landing_form(client, slug)
    response = await client.post(f"/l/{slug}", data={"_csrf_token": token, "email": email, "consent": "on"})
    assert response.status_code == 303
    lead = await Lead.objects().get(Lead.email == email)
    return (await Enrollment.objects().get(Enrollment.lead == lead.id)).id


async def test_the_same_step_sent_twice_at_once_goes_out_once(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "hana@example.com")
    relay_a, relay_b = Relay(_parse_smtp_url(sink.url)), Relay(_parse_smtp_url(sink.url))
    results = await asyncio.gather(send_due_step(enrollment_id, relay_a), send_due_step(enrollment_id, relay_b))
    await relay_a.close()
    await relay_b.close()
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count(Outcome.sent) == 1, outcomes
    assert len(sink.letters()) == 1
    assert await Delivery.count() == 1


async def test_a_repeated_job_after_sending_does_not_resend(client, catalog, sink) -> None:
    enrollment_id = await capture(client, "ivan@example.com")
    relay = Relay(_parse_smtp_url(sink.url))
    first = await send_due_step(enrollment_id, relay)
    assert first.outcome == Outcome.sent
    # The next step is due at once (zero delay), so move it out of reach to test the repeat alone.
    await Enrollment.update({Enrollment.due_at: datetime.now(timezone.utc) + timedelta(hours=1)}).where(
        Enrollment.id == enrollment_id)
    again = await send_due_step(enrollment_id, relay)
    await relay.close()
    assert again.outcome == Outcome.not_due
    assert len(sink.letters()) == 1


async def test_sweeper_requeues_what_redis_lost(client, catalog, sink) -> None:
    from redis.asyncio import Redis
    import os

    await capture(client, "jade@example.com")
    await capture(client, "kim@example.com", slug="paid-ads")
    # Redis loses every queued job (flush or restart): the database still knows what is due.
    redis = Redis.from_url(os.environ["REDIS_URL"])
    await redis.flushdb()
    await redis.aclose()
    assert len(await due_enrollments()) == 2
    await run_worker_burst(sink.url, sweep_first=True)
    recipients = sorted(str(m["To"]) for m in sink.letters())
    assert recipients == ["jade@example.com"] * 5 + ["kim@example.com"] * 5


class RefusingHandler:
    """An SMTP relay that refuses every recipient with a fixed reply."""

    def __init__(self, reply: str) -> None:
        self.reply = reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        return self.reply


async def send_through_refusing_relay(enrollment_id: int, reply: str):
    """Send the due step through a relay that answers every recipient with `reply`."""
    from server.embedded import free_port

    port = free_port()
    controller = Controller(RefusingHandler(reply), hostname="127.0.0.1", port=port)
    controller.start()
    relay = Relay(_parse_smtp_url(f"smtp://127.0.0.1:{port}"))
    try:
        return await send_due_step(enrollment_id, relay)
    finally:
        await relay.close()
        controller.stop()


async def test_temporary_refusal_retries_later_and_permanent_refusal_suppresses(client, catalog) -> None:
    enrollment_id = await capture(client, "lee@example.com")
    result = await send_through_refusing_relay(enrollment_id, "451 4.7.1 try again later")
    assert result.outcome == Outcome.retry
    delivery = await Delivery.objects().first()
    assert delivery.status == DeliveryStatus.failed and delivery.smtp_reply.startswith("451")
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    assert enrollment.due_at > datetime.now(timezone.utc), "retried later, with backoff"

    await Enrollment.update({Enrollment.due_at: datetime.now(timezone.utc)}).where(Enrollment.id == enrollment_id)
    result = await send_through_refusing_relay(enrollment_id, "550 5.1.1 no such user")
    assert result.outcome == Outcome.bounced
    delivery = await Delivery.objects().first()
    assert delivery.status == DeliveryStatus.bounced and delivery.attempts == 2
    assert await Suppression.count() == 1
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollment_id)
    assert enrollment.status == "exited"


async def test_suppressed_address_gets_nothing(client, catalog, sink) -> None:
    from content.delivery import suppress
    from content.tables import SuppressionReason

    enrollment_id = await capture(client, "mo@example.com")
    await suppress("MO@example.com", SuppressionReason.unsubscribe)
    await run_worker_burst(sink.url)
    assert sink.letters() == []
    assert (await Enrollment.objects().get(Enrollment.id == enrollment_id)).status == "exited"
