"""The ARQ worker: job functions, the sweeper cron, and the resources each worker opens."""

from __future__ import annotations

from typing import Any

import server  # noqa: F401 - sets PICCOLO_CONF before any query

from arq import cron, func
from arq.connections import RedisSettings
from piccolo.engine import engine_finder
from piccolo.engine.postgres import PostgresEngine

from content.mail import Relay
from content.throttle import SendThrottle
from server.settings import get_settings
from workers import jobs


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    engine = engine_finder()
    ctx["own_pool"] = isinstance(engine, PostgresEngine) and engine.pool is None
    if ctx["own_pool"]:
        await engine.start_connection_pool(min_size=1, max_size=settings.db_pool_size)
    if "relay" in ctx:
        return
    if settings.smtp is None:
        raise RuntimeError("SMTP_URL is not set and no mail catcher was started")
    # The rate is shared by every worker process through the worker's own Redis.
    throttle = SendThrottle.for_relay(ctx["redis"], settings.send_rate, settings.smtp) if settings.send_rate else None
    ctx["relay"] = Relay(settings.smtp, connections=settings.smtp_connections, throttle=throttle)


async def shutdown(ctx: dict[str, Any]) -> None:
    relay = ctx.get("relay")
    if relay is not None:
        await relay.close()
    if ctx.get("own_pool"):
        await engine_finder().close_connection_pool()


def redis_settings() -> RedisSettings:
    url = get_settings().redis_url
    if not url:
        raise RuntimeError("REDIS_URL is not set and no embedded Redis was started")
    return RedisSettings.from_dsn(url)


class WorkerSettings:
    """ARQ reads this class: `arq workers.settings.WorkerSettings` or `leadkiln worker`."""

    functions = [
        # keep_result=0: a finished send frees its job id at once, so the sweeper can queue
        # the step again if it is still due (a retry after a refusal).
        func(jobs.send_step, keep_result=0, max_tries=5),
        func(jobs.follow_up, keep_result=0, max_tries=3),
        func(jobs.send_notice, keep_result=0, max_tries=5),
        func(jobs.render_ebook, keep_result=0, max_tries=2, timeout=600),
        func(jobs.rescore_lead, keep_result=0, max_tries=3),
        func(jobs.send_hot_alert, keep_result=0, max_tries=3),
        func(jobs.post_webhook, keep_result=0, max_tries=3),
        # Queued by the admin's "Train a model now" under one job id: a double click trains once.
        func(jobs.train_model, keep_result=0, max_tries=2, timeout=3600),
        # Queued by the desk's "Send now"; the week's ledger row keeps it to one letter.
        func(jobs.send_weekly_report, keep_result=0, max_tries=2, timeout=600),
    ]
    cron_jobs = [
        cron(jobs.sweep, second=set(range(0, 60, 5)), run_at_startup=True, unique=True, keep_result=0),
        cron(jobs.render_stale_ebooks, second=30, run_at_startup=True, unique=True, timeout=900, keep_result=0),
        # Hourly: decay moves scores slowly; a new event rescores its lead at once anyway.
        cron(jobs.rescore_everyone, minute=17, second=0, unique=True, timeout=1800, keep_result=0),
        cron(jobs.train_model, hour=3, minute=41, second=0, unique=True, timeout=3600, keep_result=0),
        # Every 5 s: a lead that turned hot is announced within seconds of its rescoring.
        cron(jobs.hand_off_hot_leads, second=set(range(2, 60, 5)), run_at_startup=True, unique=True, keep_result=0),
        # Every 10 minutes: the weekly report goes out at REPORT_AT, or as soon as a worker is up after it.
        cron(jobs.send_weekly_report, minute=set(range(3, 60, 10)), second=0, run_at_startup=True, unique=True,
             timeout=600, keep_result=0),
    ]
    on_startup = startup
    on_shutdown = shutdown
    max_jobs = 20
    # ARQ looks for new jobs every 0.5 s by default: a chain's next letter (queued by the send
    # before it) and the first letter after a capture waited for that poll. 50 ms costs an
    # idle worker about 20 small Redis reads a second.
    poll_delay = 0.05
    job_timeout = 120
    # On SIGTERM, running sends get this long to finish before they are cancelled.
    job_completion_wait = 30
    health_check_interval = 30
