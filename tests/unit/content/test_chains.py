"""content/chains.py, the pure parts: stable buckets, holdout groups, job ids and send windows."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from content.chains import EnrollmentDue, assign_group, bucket, next_send_time, send_job_id
from content.tables import EnrollmentGroup


def test_bucket_is_stable_across_calls_and_processes() -> None:
    assert bucket("group", 1, 2) == bucket("group", 1, 2)
    # Pinned: a change to the hashing would move existing leads between groups.
    assert bucket("group", 1, 2) == 85
    assert bucket("variant", 1, 2) == 39


def test_bucket_depends_on_every_part() -> None:
    values = {bucket("group", 1, lead_id) for lead_id in range(50)}
    assert len(values) > 20
    assert bucket("group", 1, 2) != bucket("variant", 1, 2)


def test_bucket_is_in_0_to_99_and_covers_the_range() -> None:
    values = [bucket("group", 7, lead_id) for lead_id in range(5000)]
    assert min(values) == 0
    assert max(values) == 99
    assert all(isinstance(v, int) and 0 <= v <= 99 for v in values)


@pytest.mark.parametrize("holdout", [0, -10])
def test_no_holdout_means_all_treatment(holdout: int) -> None:
    groups = {assign_group(3, lead_id, holdout) for lead_id in range(1000)}
    assert groups == {EnrollmentGroup.treatment}


@pytest.mark.parametrize("holdout", [100, 150])
def test_full_holdout_means_all_control(holdout: int) -> None:
    groups = {assign_group(3, lead_id, holdout) for lead_id in range(1000)}
    assert groups == {EnrollmentGroup.control}


def test_holdout_share_is_roughly_the_percentage() -> None:
    groups = [assign_group(5, lead_id, 30) for lead_id in range(1, 2001)]
    control = groups.count(EnrollmentGroup.control) / len(groups)
    assert 0.25 <= control <= 0.35


def test_same_lead_gets_the_same_group_every_time() -> None:
    for lead_id in range(200):
        first = assign_group(9, lead_id, 50)
        assert all(assign_group(9, lead_id, 50) == first for _ in range(3))


def test_raising_the_holdout_only_moves_leads_into_control() -> None:
    for lead_id in range(500):
        if assign_group(2, lead_id, 20) == EnrollmentGroup.control:
            assert assign_group(2, lead_id, 40) == EnrollmentGroup.control


def test_send_job_id_names_enrollment_and_step() -> None:
    due = EnrollmentDue(enrollment_id=42, position=3, due_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert send_job_id(due) == "send:42:3"
    assert send_job_id(EnrollmentDue(42, 4, due.due_at)) != send_job_id(due)


# --- send windows -----------------------------------------------------------------------

UTC = timezone.utc


def test_inside_the_window_a_letter_leaves_now() -> None:
    now = datetime(2026, 11, 24, 10, 30, tzinfo=UTC)  # a Tuesday
    assert next_send_time(now, "UTC", 9, 17, "01234") == now


def test_after_the_window_it_waits_for_the_next_day_in_the_leads_zone() -> None:
    now = datetime(2026, 11, 23, 22, 30, tzinfo=UTC)  # Monday 17:30 in New York
    assert next_send_time(now, "America/New_York", 9, 17, "01234") == datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


def test_a_weekend_waits_for_monday() -> None:
    saturday = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert next_send_time(saturday, "Europe/Berlin", 9, 17, "01234") == datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def test_the_window_follows_daylight_saving_time() -> None:
    # Berlin moves from UTC+1 to UTC+2 on 29 March 2026: 09:00 local is 08:00 UTC before, 07:00 after.
    before = datetime(2026, 3, 27, 18, 0, tzinfo=UTC)  # Friday evening
    assert next_send_time(before, "Europe/Berlin", 9, 17, "01234") == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)


def test_a_window_until_midnight_includes_the_last_hour() -> None:
    now = datetime(2026, 11, 24, 23, 45, tzinfo=UTC)
    assert next_send_time(now, "UTC", 20, 24, "0123456") == now


@pytest.mark.parametrize("zone_name", ["", "Mars/Olympus", "../etc/passwd"])
def test_an_unknown_zone_counts_as_utc(zone_name: str) -> None:
    now = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
    assert next_send_time(now, zone_name, 9, 17, "0123456") == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(("start", "end", "weekdays"), [(17, 9, "01234"), (9, 9, "01234"), (9, 17, "")])
def test_a_misconfigured_window_sends_rather_than_stalls(start: int, end: int, weekdays: str) -> None:
    now = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    sent = next_send_time(now, "UTC", start, end, weekdays)
    assert sent >= now and (sent - now).days < 7
