"""Fixtures for integration tests: a clean database and Redis per test, the app, a mail sink, a worker."""

from __future__ import annotations

import email
import email.policy
import os
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import httpx

# Children first, so deletes never trip a foreign key.
TABLES_IN_DELETE_ORDER = [
    "hot_alert", "lead_change", "staff_role", "weekly_report", "webhook_delivery", "webhook_endpoint",
    "delivery", "enrollment", "chain_wait", "notice", "download_link", "offer", "step", "chain", "landing_page", "ebook",
    "score_history", "score", "scoring_model", "scoring_rule", "lead_attribute",
    "consent", "conversion", "event", "visitor", "topic_preference", "lead", "url_topic", "api_key", "topic",
    "caught_mail", "suppression", "sessions", "piccolo_user",
]


@pytest.fixture(scope="session", autouse=True)
async def database_pool() -> AsyncIterator[None]:
    """One PostgreSQL pool for the session (SQLite needs none)."""
    from piccolo.engine import engine_finder
    from piccolo.engine.postgres import PostgresEngine

    engine = engine_finder()
    if isinstance(engine, PostgresEngine):
        await engine.start_connection_pool(max_size=10)
    yield
    if isinstance(engine, PostgresEngine):
        await engine.close_connection_pool()


@pytest.fixture(autouse=True)
async def clean_state(database_pool: None) -> AsyncIterator[None]:
    """Every test starts with empty tables and an empty Redis database."""
    from piccolo.engine import engine_finder
    from redis.asyncio import Redis

    engine = engine_finder()
    for table in TABLES_IN_DELETE_ORDER:
        await engine.run_ddl(f'DELETE FROM "{table}"')
    redis = Redis.from_url(os.environ["REDIS_URL"])
    await redis.flushdb()
    await redis.aclose()
    from scoring.service import forget_cached

    forget_cached()  # rules, topics and the model of the previous test are gone
    from landing.api import forget_url_topics
    from landing.service import forget_pages

    forget_pages()
    forget_url_topics()
    import shutil

    from content.ebooks import rendered_dir

    # Rendered PDFs are cached by content hash in DATA_DIR: one test's rendering must not be the next one's cache.
    shutil.rmtree(rendered_dir(), ignore_errors=True)
    yield


@pytest.fixture
async def catalog() -> dict:
    """The demo catalogue (three topics with pages and 5-letter chains), delays at zero."""
    from landing.tables import Topic
    from server.demo_data import seed_demo

    await seed_demo(delay_minutes=0, historical_leads=0)
    return {"slugs": [t["slug"] for t in await Topic.select(Topic.slug).order_by(Topic.id)]}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The app on the test's own event loop (Litestar's test client runs it in another
    thread, where the session's PostgreSQL pool cannot be used)."""
    from server.app import create_app, lifespan

    app = create_app()
    # Our own lifespan (pools), entered directly: Litestar's wraps it in a task group
    # that pytest-asyncio's fixture teardown, running in another task, cannot exit.
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as test_client:
            yield test_client


class Sink:
    """The built-in mail catcher on a free port: letters as parsed messages."""

    def __init__(self, data_dir: Path) -> None:
        from server.embedded import MailCatcher

        self.catcher = MailCatcher(data_dir, store_in_database=True)
        self.mail_dir = data_dir / "mail"

    @property
    def url(self) -> str:
        return self.catcher.url

    def messages(self) -> list[EmailMessage]:
        """Every letter caught, in arrival order."""
        return [
            email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for path in sorted(self.mail_dir.glob("*.eml"))
        ]

    def letters(self) -> list[EmailMessage]:
        """Chain letters only (their Message-IDs name the delivery: <lk.D.E.P@…>)."""
        return [m for m in self.messages() if not str(m["Message-ID"]).startswith(("<lk.n", "<lk.h", "<lk.report", "<lk.test"))]

    def notices(self) -> list[EmailMessage]:
        """Letters a visitor asked for: confirmation, download link, data request (<lk.nN@…>)."""
        return [m for m in self.messages() if str(m["Message-ID"]).startswith("<lk.n")]


@pytest.fixture
def sink(tmp_path: Path) -> AsyncIterator[Sink]:
    sink = Sink(tmp_path / "sink")
    sink.catcher.start()
    yield sink
    sink.catcher.stop()


async def run_worker_burst(smtp_url: str, sweep_first: bool = False) -> None:
    """A real ARQ worker in burst mode against the test Redis: runs every ready job, then returns.

    `sweep_first` runs the sweeper once before, as its cron would: a burst worker may
    stop before its own cron fires.
    """
    from arq import create_pool
    from arq.worker import Worker

    from workers import jobs

    from content.mail import Relay
    from server.settings import _parse_smtp_url
    from workers.settings import WorkerSettings, redis_settings

    if sweep_first:
        pool = await create_pool(redis_settings())
        try:
            await jobs.sweep({"redis": pool})
        finally:
            await pool.aclose()
    relay = Relay(_parse_smtp_url(smtp_url))
    worker = Worker(
        functions=WorkerSettings.functions,
        cron_jobs=WorkerSettings.cron_jobs,
        on_startup=WorkerSettings.on_startup,
        on_shutdown=WorkerSettings.on_shutdown,
        redis_settings=redis_settings(),
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
        ctx={"relay": relay},
    )
    try:
        await worker.main()
    finally:
        await worker.close()


CSRF_INPUT = re.compile(r'name="_csrf_token" value="([^"]+)"')


async def landing_form(client: httpx.AsyncClient, slug: str) -> str:
    """GET a landing page and return its CSRF token."""
    response = await client.get(f"/l/{slug}")
    assert response.status_code == 200
    match = CSRF_INPUT.search(response.text)
    assert match, "the form carries a CSRF token"
    return match.group(1)
