"""Nurture chains under faults, with real worker processes: killed, doubled, Redis flushed, relay refusing or cut off."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from content.chains import enroll, utcnow
from content.delivery import email_hash, report_stuck_deliveries
from content.tables import Delivery, DeliveryStatus, Enrollment, EnrollmentStatus, Step, Suppression, SuppressionReason
from landing.tables import Lead, Topic
from tests.faultrelay import FaultRelay
from tests.integration.test_delivery_ledger import capture

REPO = Path(__file__).resolve().parents[2]
LEADS = 6
STEPS = 5
DEADLINE = 60.0
NOT_SETTLED = (DeliveryStatus.claimed, DeliveryStatus.sending, DeliveryStatus.failed)


class WorkerProcess:
    """`leadkiln worker` in a process group of its own, sending through the fault relay."""

    def __init__(self, relay: FaultRelay, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        environment = {**os.environ, "SMTP_URL": relay.url, "SEND_STUCK_AFTER": "3", **env}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "worker"], cwd=REPO, env=environment,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL: no job finishes, no shutdown hook runs, nothing is tidied in Redis."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def died(self) -> str:
        """Why the worker is gone, or "" while it runs."""
        if self.process.poll() is None:
            return ""
        return f"worker exited with {self.process.returncode}:\n{self.tail()}"

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        # WeasyPrint narrates every page of the ebooks the worker renders at startup.
        return "\n".join([line for line in text.splitlines() if "weasyprint" not in line][-lines:])


@contextmanager
def worker(relay: FaultRelay, log_path: Path, **env: str) -> Iterator[WorkerProcess]:
    process = WorkerProcess(relay, log_path, **env)
    try:
        yield process
    finally:
        process.stop()


async def ledger() -> list[dict]:
    """Every delivery row, with its step's position."""
    return await Delivery.select(
        Delivery.id, Delivery.enrollment, Delivery.step.position.as_alias("position"), Delivery.status,
        Delivery.message_id, Delivery.attempts, Delivery.smtp_reply,
    ).order_by(Delivery.id)


async def chains_settled() -> bool:
    """Nothing more happens by itself: every enrollment finished, left, or waits on a letter
    reported unknown (for a person to resolve)."""
    rows = await ledger()
    if any(r["status"] in NOT_SETTLED for r in rows):
        return False
    unknown = {(r["enrollment"], r["position"]) for r in rows if r["status"] == DeliveryStatus.unknown}
    for e in await Enrollment.select(Enrollment.id, Enrollment.status, Enrollment.next_position):
        if e["status"] == EnrollmentStatus.active and (e["id"], e["next_position"]) not in unknown:
            return False
    return True


def every_chain_blocked() -> Callable[[], Awaitable[bool]]:
    """A condition: each enrollment finished or has its next letter's row taken (`claimed` or
    `sending`), and the ledger stood still between two looks. With the relay holding its
    answers nothing moves on, so the worker dies in a known state, not mid-transition."""
    last: list[list[tuple]] = []

    async def blocked() -> bool:
        rows = await ledger()
        taken = {(r["enrollment"], r["position"]) for r in rows
                 if r["status"] in (DeliveryStatus.claimed, DeliveryStatus.sending)}
        snapshot = [(r["id"], r["status"]) for r in rows]
        still = bool(last) and last[-1] == snapshot
        last.append(snapshot)
        for e in await Enrollment.select(Enrollment.id, Enrollment.status, Enrollment.next_position):
            if e["status"] == EnrollmentStatus.active and (e["id"], e["next_position"]) not in taken:
                return False
        return still

    return blocked


async def hurry_retries() -> None:
    """Bring a refused letter's retry forward: the backoff is minutes, the test is not."""
    now = utcnow()
    failed = await Delivery.select(Delivery.enrollment, Delivery.step.position.as_alias("position")).where(
        Delivery.status == DeliveryStatus.failed)
    for row in failed:
        await Enrollment.update({Enrollment.due_at: now}).where(
            (Enrollment.id == row["enrollment"]) & (Enrollment.next_position == row["position"])
            & (Enrollment.status == EnrollmentStatus.active) & (Enrollment.due_at > now)
        )


async def wait_until(condition, what: str, *workers: WorkerProcess, hurry: bool = False,
                     timeout: float = DEADLINE) -> None:
    """Poll until `condition()` holds; fail with the ledger and the workers' logs if it does not in time."""
    deadline = time.monotonic() + timeout
    while True:
        if hurry:
            await hurry_retries()
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        for process in workers:
            if process.died():
                pytest.fail(f"waiting for {what}: {process.died()}")
        if time.monotonic() > deadline:
            rows = "\n".join(str(r) for r in await ledger())
            logs = "\n---\n".join(p.tail() for p in workers)
            pytest.fail(f"timed out ({timeout:.0f}s) waiting for {what}\nledger:\n{rows}\nworkers:\n{logs}")
        await asyncio.sleep(0.2)


async def seed_leads(count: int, prefix: str, slug: str = "seo") -> dict[str, int]:
    """Leads enrolled in the topic's chain through the enrollment service (no ebook letter,
    so the relay sees chain letters only); {email: enrollment id}. The worker's sweeper
    finds them due."""
    topic = await Topic.objects().get(Topic.slug == slug)
    enrollments = {}
    for n in range(count):
        lead = Lead(email=f"{prefix}{n}@example.com", first_name=f"Lead{n}", topic=topic.id)
        await lead.save()
        due = await enroll(lead.id, topic.id)
        assert due is not None and due.position == 1
        enrollments[lead.email] = due.enrollment_id
    assert await Step.count().where(Step.chain == (await Enrollment.objects().first()).chain) == STEPS
    return enrollments


async def flush_redis() -> None:
    redis = Redis.from_url(os.environ["REDIS_URL"])
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


async def check_letters(relay: FaultRelay, enrollment_ids: list[int]) -> list[dict]:
    """No letter arrived twice and the ledger agrees with the relay; returns the rows reported unknown.

    Each enrollment got letters 1..k-1, recorded sent, and then either finished (k past
    the last step) or waits on letter k reported unknown; nothing after it arrived.
    """
    arrived = relay.per_step()
    twice = {step: n for step, n in arrived.items() if n > 1}
    assert not twice, f"(enrollment, position) letters that arrived more than once: {twice}"
    rows = await ledger()
    by_step = {(r["enrollment"], r["position"]): r for r in rows}
    received = relay.message_ids()
    for step in arrived:
        assert step in by_step and by_step[step]["status"] in (DeliveryStatus.sent, DeliveryStatus.unknown), (
            f"the relay got {step} but the ledger says {by_step.get(step)}")
    statuses = {e["id"]: e for e in await Enrollment.select(
        Enrollment.id, Enrollment.status, Enrollment.next_position).where(Enrollment.id.is_in(enrollment_ids))}
    for enrollment_id in enrollment_ids:
        enrollment = statuses[enrollment_id]
        done = STEPS + 1 if enrollment["status"] == EnrollmentStatus.completed else enrollment["next_position"]
        for position in range(1, done):
            row = by_step.get((enrollment_id, position))
            assert row is not None and row["status"] == DeliveryStatus.sent, (enrollment_id, position, row)
            assert arrived[(enrollment_id, position)] == 1 and row["message_id"] in received, (enrollment_id, position)
        if enrollment["status"] != EnrollmentStatus.completed:
            assert enrollment["status"] == EnrollmentStatus.active, enrollment
            assert by_step[(enrollment_id, done)]["status"] == DeliveryStatus.unknown, by_step.get((enrollment_id, done))
        later = [p for (e, p) in arrived if e == enrollment_id and p > done]
        assert not later, f"enrollment {enrollment_id} got letters {later} past its position {done}"
    return [r for r in rows if r["status"] == DeliveryStatus.unknown]


async def kill_when_blocked(process: WorkerProcess, relay: FaultRelay, held: int) -> None:
    """SIGKILL the worker once `held` letters wait at the relay for their answer and every chain
    stands still behind them."""
    await wait_until(lambda: relay.held() >= held, f"{held} letters held at the relay", process)
    await wait_until(every_chain_blocked(), "every chain blocked on the relay", process)
    process.kill()


def steps_of(rows: list[dict], status: DeliveryStatus) -> set[tuple[int, int]]:
    return {(r["enrollment"], r["position"]) for r in rows if r["status"] == status}


async def test_a_worker_killed_mid_chain_and_restarted_sends_no_letter_twice(client, catalog, tmp_path) -> None:
    with FaultRelay() as relay:
        # From the 13th letter on, the relay takes each letter but keeps its answer back: the
        # worker is killed with every lead's next letter delivered and unanswered. The default
        # stuck time, so this worker's own sweeper does not report them before the kill.
        relay.hold(after=2 * LEADS)
        before = [await capture(client, f"kill{n}@example.com") for n in range(LEADS)]
        with worker(relay, tmp_path / "first.log", SMTP_CONNECTIONS=str(LEADS), SEND_STUCK_AFTER="600") as first:
            await kill_when_blocked(first, relay, held=1)
        relay.release()
        at_kill = await ledger()
        assert not steps_of(at_kill, DeliveryStatus.claimed), "a connection for every letter: all were on the wire"
        # Leads keep coming while no worker runs: their jobs wait in Redis.
        after = [await capture(client, f"late{n}@example.com") for n in range(2)]
        with worker(relay, tmp_path / "second.log") as second:
            await wait_until(chains_settled, "settled chains after the restart", second)
        unknown = await check_letters(relay, before + after)
        received = relay.message_ids()
    assert {(r["enrollment"], r["position"]) for r in unknown} == steps_of(at_kill, DeliveryStatus.sending), (
        "what was on the wire at the kill is reported, not resent; nothing else is")
    assert all(r["message_id"] in received for r in unknown), "each letter reported unknown did reach the relay, once"
    completed = await Enrollment.select(Enrollment.id).where(Enrollment.status == EnrollmentStatus.completed)
    assert {r["id"] for r in completed} >= set(after), "the leads that came while no worker ran got their chains"


async def test_letters_waiting_for_a_connection_when_the_worker_dies_are_released_not_reported(catalog, tmp_path) -> None:
    await seed_leads(LEADS, "wire")
    with FaultRelay() as relay:
        relay.hold(after=LEADS)
        # Two connections: two letters on the wire, four waiting their turn, when the worker dies.
        with worker(relay, tmp_path / "worker.log", SMTP_CONNECTIONS="2", SEND_STUCK_AFTER="600") as process:
            await kill_when_blocked(process, relay, held=2)
        relay.release()
        # What the next worker's sweeper does once SEND_STUCK_AFTER has passed.
        await report_stuck_deliveries(now=utcnow() + timedelta(hours=1))
        rows = await ledger()
        arrived = relay.per_step()
        received = relay.message_ids()
    unknown = [r for r in rows if r["status"] == DeliveryStatus.unknown]
    assert len(unknown) == 2 and all(r["message_id"] in received for r in unknown), (
        "only the letters the relay took are reported unknown", unknown)
    released = steps_of(rows, DeliveryStatus.failed)
    assert len(released) == LEADS - 2 and not released & set(arrived), "the others never reached the relay: retried"


async def test_a_letter_whose_worker_died_before_smtp_is_sent_after_a_restart(catalog, tmp_path) -> None:
    enrollments = await seed_leads(2, "stall")
    with FaultRelay() as relay:
        relay.hold(after=0)
        # One connection: the first lead's letter is on the wire, the second's row is claimed
        # and waits for the connection when the worker dies.
        with worker(relay, tmp_path / "first.log", SMTP_CONNECTIONS="1", SEND_STUCK_AFTER="600") as first:
            await kill_when_blocked(first, relay, held=1)
        relay.release()
        [(waiting, _)] = steps_of(await ledger(), DeliveryStatus.claimed)
        assert waiting in enrollments.values()
        with worker(relay, tmp_path / "second.log") as second:
            # ARQ would keep the dead job's id in progress for an hour; the sweeper frees it
            # once the ledger shows nobody sending the letter (SEND_STUCK_AFTER).
            await wait_until(lambda: relay.per_step()[(waiting, 1)] == 1, "the claimed letter, retried", second,
                             timeout=15)


async def test_redis_flushed_mid_chain_loses_no_letter_and_doubles_none(client, catalog, tmp_path) -> None:
    with FaultRelay() as relay:
        relay.delay(0.05)  # slow enough that the flushes land with the chains half done
        enrollment_ids = [await capture(client, f"flush{n}@example.com") for n in range(LEADS)]
        with worker(relay, tmp_path / "worker.log") as process:
            await wait_until(lambda: len(relay.letters()) >= LEADS, "the first round of letters", process)
            await flush_redis()
            await wait_until(lambda: len(relay.letters()) >= 3 * LEADS, "the third round of letters", process)
            await flush_redis()
            await wait_until(chains_settled, "settled chains", process)
        unknown = await check_letters(relay, enrollment_ids)
        assert unknown == []
        assert relay.per_step() == {(e, p): 1 for e in enrollment_ids for p in range(1, STEPS + 1)}
    assert await Enrollment.count().where(Enrollment.status == EnrollmentStatus.completed) == LEADS


async def test_two_workers_on_one_queue_send_each_letter_once(client, catalog, tmp_path) -> None:
    with FaultRelay() as relay, worker(relay, tmp_path / "a.log") as a, worker(relay, tmp_path / "b.log") as b:
        enrollment_ids = [await capture(client, f"twice{n}@example.com") for n in range(LEADS)]
        await wait_until(chains_settled, "settled chains", a, b)
        unknown = await check_letters(relay, enrollment_ids)
        assert unknown == []
        assert relay.per_step() == {(e, p): 1 for e in enrollment_ids for p in range(1, STEPS + 1)}
    assert await Enrollment.count().where(Enrollment.status == EnrollmentStatus.completed) == LEADS


async def test_temporary_refusals_are_retried_and_arrive_once(catalog, tmp_path) -> None:
    enrollments = await seed_leads(LEADS, "busy")
    with FaultRelay() as relay:
        refusals = {  # address: (code, stage, times)
            "busy0@example.com": (421, "rcpt", 1),
            "busy1@example.com": (451, "rcpt", 2),
            "busy2@example.com": (454, "rcpt", 1),
            "busy3@example.com": (451, "data", 1),
            "busy4@example.com": (421, "data", 1),
        }
        for address, (code, stage, times) in refusals.items():
            relay.refuse(address, code, stage, times)
        with worker(relay, tmp_path / "worker.log") as process:
            await wait_until(chains_settled, "settled chains", process, hurry=True)
        unknown = await check_letters(relay, list(enrollments.values()))
        assert unknown == []
        assert relay.per_step() == {(e, p): 1 for e in enrollments.values() for p in range(1, STEPS + 1)}
        given = sorted(relay.refused)
    assert given == sorted((a, stage, code) for a, (code, stage, times) in refusals.items() for _ in range(times))
    assert await Enrollment.count().where(Enrollment.status == EnrollmentStatus.completed) == LEADS
    assert await Suppression.count() == 0, "a temporary refusal suppresses nobody"
    first_letters = {r["enrollment"]: r for r in await ledger() if r["position"] == 1}
    for address, (code, stage, times) in refusals.items():
        row = first_letters[enrollments[address]]
        assert row["status"] == DeliveryStatus.sent and row["attempts"] == times + 1, (address, row)


async def test_a_permanent_refusal_of_an_address_bounces_and_suppresses_it(catalog, tmp_path) -> None:
    enrollments = await seed_leads(LEADS, "gone")
    bounced = "gone0@example.com"
    with FaultRelay() as relay:
        relay.refuse(bounced, 550, "rcpt", times=100)
        with worker(relay, tmp_path / "worker.log") as process:
            await wait_until(chains_settled, "settled chains", process)
        assert relay.refused == [(bounced, "rcpt", 550)], "refused once, never tried again"
        assert not [m for m in relay.messages() if str(m["To"]) == bounced]
        others = [e for address, e in enrollments.items() if address != bounced]
        assert relay.per_step() == {(e, p): 1 for e in others for p in range(1, STEPS + 1)}
    suppression = await Suppression.objects().get(Suppression.email_hash == email_hash(bounced))
    assert suppression.reason == SuppressionReason.bounce and suppression.detail.startswith("550")
    rows = [r for r in await ledger() if r["enrollment"] == enrollments[bounced]]
    assert [(r["position"], r["status"], r["attempts"]) for r in rows] == [(1, DeliveryStatus.bounced, 1)]
    enrollment = await Enrollment.objects().get(Enrollment.id == enrollments[bounced])
    assert enrollment.status == EnrollmentStatus.exited and enrollment.exit_reason == SuppressionReason.bounce
    assert await Enrollment.count().where(Enrollment.status == EnrollmentStatus.completed) == LEADS - 1


async def test_a_relay_dropping_the_connection_loses_no_letter_and_doubles_none(catalog, tmp_path) -> None:
    enrollment_ids = list((await seed_leads(LEADS, "cut")).values())
    with FaultRelay() as relay:
        # Once 6 letters are in, the next MAIL is met by a closed connection (nothing handed
        # over: resent on a fresh one); once 18 are in, the next letter's data is taken and
        # the connection closed before the answer (maybe delivered: reported unknown).
        relay.drop(after=LEADS, stage="mail")
        relay.drop(after=3 * LEADS, stage="data")
        with worker(relay, tmp_path / "worker.log") as process:
            await wait_until(chains_settled, "settled chains", process, hurry=True)
        unknown = await check_letters(relay, enrollment_ids)
        assert relay.dropped == ["mail", "data"]
        assert len(unknown) == 1 and unknown[0]["message_id"] in relay.message_ids(), (
            "the letter whose answer was lost is reported unknown, and the relay did get it")
        stalled = unknown[0]["enrollment"]
        assert relay.per_step() == {
            (e, p): 1 for e in enrollment_ids for p in range(1, STEPS + 1)
            if e != stalled or p <= unknown[0]["position"]
        }
    assert await Enrollment.count().where(Enrollment.status == EnrollmentStatus.completed) == LEADS - 1
