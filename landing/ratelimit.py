"""Rate limits shared by every web process: fixed windows counted in Redis."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.settings import RateLimit

log = logging.getLogger("leadkiln.ratelimit")


@dataclass(frozen=True)
class Verdict:
    """Allowed, or refused with the seconds until the window opens again."""

    allowed: bool
    retry_after: int = 0


ALLOWED = Verdict(True)


def limit_key(scope: str, value: str) -> str:
    """A Redis key for one limited thing; addresses are hashed, never stored in Redis."""
    return f"lk:rate:{scope}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


async def hit(redis: Redis | None, checks: list[tuple[str, RateLimit]], now: float | None = None) -> Verdict:
    """Count one hit against each (key, limit) in one round trip; refused if any is over.

    Without Redis (or when it fails) the hit is allowed: a lost lead costs more than a
    burst of spam, and the honeypot and CSRF still stand.
    """
    if redis is None or not checks:
        return ALLOWED
    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=False)
    windows = []
    for key, limit in checks:
        window = int(now // limit.seconds)
        windowed = f"{key}:{window}"
        windows.append((limit, window))
        pipe.incr(windowed)
        pipe.expire(windowed, limit.seconds + 1)
    try:
        replies = await pipe.execute()
    except (RedisError, OSError):
        log.exception("rate limit not checked: Redis failed")
        return ALLOWED
    retry_after = 0
    for index, (limit, window) in enumerate(windows):
        if replies[index * 2] > limit.count:
            retry_after = max(retry_after, int((window + 1) * limit.seconds - now) + 1)
    return Verdict(False, retry_after) if retry_after else ALLOWED
