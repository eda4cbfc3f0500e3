"""The global send rate: at most COUNT letters per SECONDS to one relay, shared by every worker."""

from __future__ import annotations

import asyncio
import random
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.settings import RateLimit, SmtpConfig

# A sliding-window log: one sorted-set member per grant, scored by the grant's time on
# Redis's own clock (so every process, whatever its clock says, counts on one). Check and
# grant happen inside one script, which Redis runs alone: two processes can never both
# see "4 of 5" and both take the fifth slot.
#
# A grant at `now` is allowed when fewer than `count` grants lie in (now - window, now],
# so any half-open window [t, t + window) holds at most `count` grants.
GRANT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local count = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < count then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1000)
    return {1, now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""


class ThrottleUnavailable(OSError):
    """The limiter could not be asked (Redis down or too slow): the letter is not sent.

    An OSError, so callers treat it like an unreachable relay and retry later: sending
    unthrottled could get the relay to refuse or block us.
    """


class ThrottleBusy(OSError):
    """No slot came free within `max_wait`: the letter is not sent, and is retried later."""


class SendThrottle:
    """A slot per letter from a sliding window in Redis, one key per relay."""

    def __init__(self, redis: Redis, limit: RateLimit, key: str, *, max_wait: float = 60.0,
                 timeout: float = 5.0) -> None:
        if limit.count < 1:
            raise ValueError("a send rate of zero letters would never send")
        self.redis = redis
        self.limit = limit
        self.key = key
        # A wait longer than this fails the letter as not sent (retried later): a send job
        # must end well before ARQ's job timeout cancels it mid-flight.
        self.max_wait = max_wait
        self.timeout = timeout
        self._grant = redis.register_script(GRANT)

    @classmethod
    def for_relay(cls, redis: Redis, limit: RateLimit, relay: SmtpConfig, **options: float) -> "SendThrottle":
        """The limiter every process sending through `relay` shares."""
        return cls(redis, limit, f"lk:send-rate:{relay.host}:{relay.port}", **options)

    async def try_acquire(self) -> tuple[bool, int]:
        """(True, the grant's Redis time in µs) or (False, µs until a slot may come free)."""
        try:
            async with asyncio.timeout(self.timeout):
                granted, value = await self._grant(
                    keys=[self.key], args=[self.limit.count, self.limit.seconds * 1_000_000, uuid.uuid4().hex])
        except (RedisError, OSError, TimeoutError) as exc:
            raise ThrottleUnavailable(f"send-rate limiter unavailable: {type(exc).__name__}: {exc}") from exc
        return bool(granted), int(value)

    async def acquire(self) -> int:
        """Wait for a slot and return when it was granted (Redis TIME, in microseconds)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.max_wait
        while True:
            granted, value = await self.try_acquire()
            if granted:
                return value
            # The wait is a duration on Redis's clock, slept on ours: clocks never compared.
            # A little jitter keeps waiters that woke together from retrying in lockstep.
            wait = value / 1_000_000 + random.uniform(0.0, 0.005)
            if loop.time() + wait > give_up_at:
                raise ThrottleBusy(f"send rate {self.limit.count}/{self.limit.seconds}s: "
                                   f"no slot within {self.max_wait:g}s")
            await asyncio.sleep(wait)
