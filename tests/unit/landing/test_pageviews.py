"""The page-view buffer: batches, keeps what failed, and writes everything on close."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from landing.pageviews import PageView, PageViewBuffer


def view(n: int) -> PageView:
    return PageView(f"cookie-{n:016d}", "seo", 1, {}, "ua", datetime.now(timezone.utc))


class Store:
    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[PageView]] = []
        self.fail_times = fail_times
        self.notified: list[set[int]] = []

    async def write(self, batch: list[PageView]) -> set[int]:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("database away")
        self.batches.append(batch)
        return {7} if len(batch) > 1 else set()

    async def notify(self, leads: set[int]) -> None:
        self.notified.append(leads)


async def test_views_within_an_interval_are_written_as_one_batch() -> None:
    store = Store()
    buffer = PageViewBuffer(store.write, store.notify, interval_ms=30)
    for n in range(5):
        await buffer.add(view(n))
    assert store.batches == [], "nothing is written while the request waits"
    await asyncio.sleep(0.1)
    assert [len(b) for b in store.batches] == [5] and store.notified == [{7}]
    await buffer.close()


async def test_zero_interval_writes_each_view_at_once() -> None:
    store = Store()
    buffer = PageViewBuffer(store.write, store.notify, interval_ms=0)
    await buffer.add(view(1))
    assert [len(b) for b in store.batches] == [1]


async def test_a_failed_write_is_kept_and_written_on_the_next_try() -> None:
    store = Store(fail_times=1)
    buffer = PageViewBuffer(store.write, store.notify, interval_ms=20)
    await buffer.add(view(1))
    await buffer.add(view(2))
    await asyncio.sleep(0.1)
    assert [[v.cookie_id for v in b] for b in store.batches] == [[view(1).cookie_id, view(2).cookie_id]]
    await buffer.close()


async def test_close_writes_what_is_pending() -> None:
    store = Store()
    buffer = PageViewBuffer(store.write, store.notify, interval_ms=10_000)
    for n in range(3):
        await buffer.add(view(n))
    await buffer.close()
    assert sum(len(b) for b in store.batches) == 3
