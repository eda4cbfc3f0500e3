"""Page views written in batches: a landing page answers without waiting for the database."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable

log = logging.getLogger("leadkiln.pageviews")

MAX_PENDING = 50_000
"""Views kept while the database is away; past this, the oldest batch is dropped (and logged)."""


@dataclass(frozen=True)
class PageView:
    """One view of a landing page by a (possibly anonymous) visitor."""

    cookie_id: str
    page_slug: str
    topic_id: int
    properties: dict[str, Any]
    user_agent: str
    occurred_at: datetime


Writer = Callable[[list[PageView]], Awaitable[set[int]]]
"""Writes a batch in one transaction; returns the ids of known leads among the visitors."""
Notify = Callable[[set[int]], Awaitable[None]]


class PageViewBuffer:
    """Collects views and writes them every `interval_ms` (at once when 0).

    A crash of the web process loses at most one interval of views; a clean shutdown
    writes them all (`close`). Leads and their consents never pass through here.
    """

    def __init__(self, write: Writer, notify: Notify, interval_ms: int) -> None:
        self._write = write
        self._notify = notify
        self.interval = interval_ms / 1000
        self._pending: list[PageView] = []
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    async def add(self, view: PageView) -> None:
        if self.interval <= 0:
            self._pending.append(view)
            await self.flush()
            return
        self._pending.append(view)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> int:
        """Write what is pending now; returns how many views were written."""
        async with self._flushing:
            batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                leads = await self._write(batch)
            except BaseException as exc:
                # Kept for the next try (a cancelled flush too: shutdown writes them).
                if len(batch) + len(self._pending) <= MAX_PENDING:
                    self._pending = batch + self._pending
                else:
                    log.error("dropped %d page views: the database has been away too long", len(batch))
                if not isinstance(exc, Exception):
                    raise
                log.exception("could not write %d page views; keeping them for the next try", len(batch))
                return 0
        if leads:
            try:
                await self._notify(leads)
            except Exception:  # noqa: BLE001 - rescoring is also done hourly
                log.exception("could not queue rescoring for %d leads", len(leads))
        return len(batch)

    async def close(self) -> None:
        """Write everything still pending (on shutdown)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            if not await self.flush():
                break
