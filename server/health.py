"""GET /health: is the database reachable, is Redis reachable."""

from __future__ import annotations

import asyncio
import logging

from arq.connections import ArqRedis
from litestar import get
from litestar.di import NamedDependency
from litestar.response import Response

from piccolo.engine import engine_finder

log = logging.getLogger("leadkiln.health")


async def _check(name: str, coro) -> str:
    try:
        await asyncio.wait_for(coro, timeout=3)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the health check
        # The detail (hosts, paths) goes to the log, not to whoever asks.
        log.error("health: %s unreachable: %s: %s", name, type(exc).__name__, exc)
        return f"error: {type(exc).__name__}"


@get("/health")
async def health(arq: NamedDependency[ArqRedis | None]) -> Response[dict[str, str]]:
    """Report the database and Redis; 503 if either is down."""
    database = await _check("database", engine_finder().run_ddl("SELECT 1"))
    redis = await _check("redis", arq.ping()) if arq is not None else "error: no Redis configured"
    status = "ok" if database == "ok" and redis == "ok" else "degraded"
    return Response({"status": status, "database": database, "redis": redis}, status_code=200 if status == "ok" else 503)
