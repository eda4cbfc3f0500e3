"""Fixtures for browser tests: the real app served over HTTP on the demo catalogue, and headless Chromium."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import TABLES_IN_DELETE_ORDER

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"
VIEWPORTS = {
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
              "has_touch": True},
    "desktop": {"viewport": {"width": 1280, "height": 800}},
}


async def _clean_and_seed() -> None:
    """Empty tables and Redis, then the demo catalogue, as the integration fixtures
    `clean_state` and `catalog` leave them (those are per-test; the server here lives per module)."""
    from piccolo.engine import engine_finder
    from redis.asyncio import Redis

    from server.demo_data import seed_demo

    engine = engine_finder()
    for table in TABLES_IN_DELETE_ORDER:
        await engine.run_ddl(f'DELETE FROM "{table}"')
    redis = Redis.from_url(os.environ["REDIS_URL"])
    await redis.flushdb()  # no rate-limit counters left from earlier tests
    await redis.aclose()
    await seed_demo(delay_minutes=0, historical_leads=0)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """tests/e2e/artifacts/, emptied of the previous run's screenshots once per run (per module,
    each browser module would delete the screenshots of the modules before it)."""
    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="module")
async def live_server(artifacts: Path) -> AsyncIterator[str]:
    """`leadkiln serve` on a free port, in its own process, over the seeded test database."""
    from server.embedded import _die_with_parent, free_port

    await _clean_and_seed()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PUBLIC_URL=base_url, PAGE_VIEW_FLUSH_MS="0")
    env.pop("SMTP_URL", None)
    leadkiln = Path(sys.executable).with_name("leadkiln")
    log_path = artifacts / "server.log"
    with open(log_path, "wb") as log:
        # Dies with pytest even if pytest is killed, so no server is left behind.
        server = subprocess.Popen([str(leadkiln), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
            while True:
                if server.poll() is not None:
                    pytest.fail(f"leadkiln serve exited with {server.returncode}:\n{log_path.read_text()}")
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"leadkiln serve did not become healthy in 30 s:\n{log_path.read_text()}")
                await asyncio.sleep(0.1)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator:
    """Debian's Chromium, headless, driven by Playwright's async API on the session's event loop."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request: pytest.FixtureRequest) -> str:
    """The device a test runs on: a phone (touch, 390 px wide) or a desktop."""
    return request.param


@pytest.fixture
async def page(browser, live_server: str, viewport: str) -> AsyncIterator:
    """A fresh browser context (no cookies) on the given viewport, pointed at the live server."""
    context = await browser.new_context(base_url=live_server, accept_downloads=True, **VIEWPORTS[viewport])
    context.set_default_timeout(10_000)
    page = await context.new_page()
    try:
        yield page
    finally:
        await context.close()


@pytest.fixture
def shot(page, viewport: str, artifacts: Path, request: pytest.FixtureRequest):
    """`await shot("step")`: a full-page screenshot named <viewport>-<test>-<step>.png
    (`full_page=False`: only what the visitor sees in the window)."""
    test = request.node.originalname.removeprefix("test_")

    async def take(step: str, full_page: bool = True) -> Path:
        path = artifacts / f"{viewport}-{test}-{step}.png"
        await page.screenshot(path=str(path), full_page=full_page)
        return path

    return take
