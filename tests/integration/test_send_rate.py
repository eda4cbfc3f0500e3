"""The global send rate: never more than COUNT grants in any SECONDS, across tasks and processes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from redis.asyncio import Redis

from content.letters import RenderedLetter
from content.mail import Envelope, Relay, build_message
from content.throttle import SendThrottle, ThrottleBusy, ThrottleUnavailable
from server.embedded import free_port
from server.settings import RateLimit, SmtpConfig

ROOT = Path(__file__).resolve().parents[2]
KEY = "lk:send-rate:relay.test:25"

# Another worker process: it waits for "go" on stdin so that it contends with the test's
# own tasks, then prints each grant's Redis time.
OTHER_PROCESS = """
import asyncio, os, sys
from redis.asyncio import Redis
from content.throttle import SendThrottle
from server.settings import RateLimit

async def main(count, seconds, key, grants):
    redis = Redis.from_url(os.environ["REDIS_URL"])
    throttle = SendThrottle(redis, RateLimit(count, seconds), key, max_wait=60)
    await redis.ping()
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(grants):
        print(await throttle.acquire(), flush=True)
    await redis.aclose()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
"""


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(os.environ["REDIS_URL"])
    yield client
    await client.aclose()


def most_in_any_window(grants: list[int], seconds: int) -> int:
    """The most grants in any half-open window [t, t + seconds) (times in µs)."""
    grants = sorted(grants)
    window = seconds * 1_000_000
    most, start = 0, 0
    for end, at in enumerate(grants):
        while grants[start] <= at - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_the_window_check_itself_counts_right() -> None:
    assert most_in_any_window([0, 999_999, 1_000_000, 1_999_999], 1) == 2
    assert most_in_any_window([0, 1, 2, 999_999], 1) == 4


async def test_tasks_and_another_process_never_overshoot(redis: Redis) -> None:
    count, seconds = 5, 1
    per_task, tasks, per_process, processes = 5, 3, 8, 2
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", OTHER_PROCESS, str(count), str(seconds), KEY, str(per_process),
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        throttle = SendThrottle(redis, RateLimit(count, seconds), KEY, max_wait=60)

        async def sender() -> list[int]:
            return [await throttle.acquire() for _ in range(per_task)]

        for child in children:
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        local = await asyncio.gather(*(sender() for _ in range(tasks)))
        outputs = [await asyncio.wait_for(child.communicate(), 60) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert all(child.returncode == 0 for child in children)
    remote = [[int(line) for line in stdout.split()] for stdout, _ in outputs]
    assert all(len(grants) == per_process for grants in remote), "every grant the other processes asked for came"
    grants = [at for batch in local + remote for at in batch]
    assert len(grants) == per_task * tasks + per_process * processes == 31
    assert most_in_any_window(grants, seconds) == count, "full windows, never one grant over"
    assert await redis.zcard(KEY) <= count, "the log keeps only the last window"


async def test_a_full_window_says_how_long_to_wait(redis: Redis) -> None:
    throttle = SendThrottle(redis, RateLimit(2, 60), KEY, max_wait=0.2)
    first = await throttle.acquire()
    second = await throttle.acquire()
    granted, wait = await throttle.try_acquire()
    assert not granted
    assert 0 <= 60_000_000 - wait - (second - first) < 1_000_000, "until the first grant leaves the window"
    with pytest.raises(ThrottleBusy):
        await throttle.acquire()
    assert await redis.zcard(KEY) == 2


async def test_one_key_per_relay(redis: Redis) -> None:
    limit = RateLimit(1, 60)
    one = SendThrottle.for_relay(redis, limit, SmtpConfig("relay.test", 25), max_wait=0)
    other = SendThrottle.for_relay(redis, limit, SmtpConfig("relay.test", 587), max_wait=0)
    await one.acquire()
    await other.acquire()
    with pytest.raises(ThrottleBusy):
        await SendThrottle.for_relay(redis, limit, SmtpConfig("relay.test", 25), max_wait=0).acquire()


async def test_with_redis_down_nothing_is_granted() -> None:
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    throttle = SendThrottle(down, RateLimit(5, 1), KEY, timeout=2)
    try:
        with pytest.raises(ThrottleUnavailable) as raised:
            await throttle.acquire()
    finally:
        await down.aclose()
    assert isinstance(raised.value, OSError), "callers retry it like an unreachable relay"


class Counting:
    def __init__(self) -> None:
        self.letters: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.letters.append(envelope.original_content)
        return "250 OK"


@pytest.fixture
def smtp() -> AsyncIterator[tuple[Counting, SmtpConfig]]:
    handler, port = Counting(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, SmtpConfig("127.0.0.1", port, start_tls=False)
    controller.stop()


def _letter(n: int):
    envelope = Envelope("Acme", "hello@acme.example", f"lead{n}@example.org", f"<lk.t{n}@acme.example>",
                        f"https://acme.example/u/{n}")
    return build_message(RenderedLetter(f"Letter {n}", "Hello.\n", "<p>Hello.</p>"), envelope)


async def test_the_relay_takes_a_slot_per_letter(redis: Redis, smtp) -> None:
    handler, config = smtp
    throttle = SendThrottle.for_relay(redis, RateLimit(3, 60), config, max_wait=0.2)
    relay = Relay(config, connections=2, throttle=throttle)
    try:
        await asyncio.gather(*(relay.send(_letter(n)) for n in range(3)))
        with pytest.raises(ThrottleBusy):
            await relay.send(_letter(3))
        assert len(handler.letters) == 3, "the fourth letter waits for the window, it is not sent"
        # The connection that waited is still good for the next letter once a slot frees.
        await redis.delete(throttle.key)
        await relay.send(_letter(4))
    finally:
        await relay.close()
    assert len(handler.letters) == 4


async def test_a_relay_whose_limiter_is_down_sends_nothing(smtp) -> None:
    handler, config = smtp
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    relay = Relay(config, throttle=SendThrottle.for_relay(down, RateLimit(5, 1), config, timeout=2))
    try:
        with pytest.raises(OSError):
            await relay.send(_letter(1))
    finally:
        await relay.close()
        await down.aclose()
    assert handler.letters == [], "not sent unthrottled"


async def test_the_worker_builds_its_relay_with_the_limiter(redis: Redis, monkeypatch) -> None:
    import workers.settings
    from server.settings import get_settings

    settings = dataclasses.replace(get_settings(), smtp=SmtpConfig("relay.test", 25), send_rate=RateLimit(7, 3),
                                   smtp_connections=3)
    monkeypatch.setattr(workers.settings, "get_settings", lambda: settings)
    ctx: dict = {"redis": redis}
    await workers.settings.startup(ctx)
    relay = ctx["relay"]
    assert relay.connections == 3
    assert relay.throttle.redis is redis and relay.throttle.limit == RateLimit(7, 3)
    assert relay.throttle.key == "lk:send-rate:relay.test:25"
    await workers.settings.shutdown(ctx)

    unlimited = {"redis": redis}
    monkeypatch.setattr(workers.settings, "get_settings", lambda: dataclasses.replace(settings, send_rate=None))
    await workers.settings.startup(unlimited)
    assert unlimited["relay"].throttle is None
    await workers.settings.shutdown(unlimited)
