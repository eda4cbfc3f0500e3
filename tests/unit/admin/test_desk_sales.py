"""admin/desk/sales.py's pure parts: safe links, the hot-leads filters, timeline lines."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from admin.desk.sales import (
    HotQuery,
    TimelineItem,
    ago,
    describe_event,
    newest_first,
    parse_hot_query,
    split_quiet_topics,
    web_link,
)
from scoring.ranking import Reason, TopicScore

T0 = datetime(2026, 3, 2, 9, tzinfo=timezone.utc)


@pytest.mark.parametrize("value", ["javascript:alert(1)", "JavaScript:alert(1)", " javascript:alert(1)",
                                   "data:text/html,<script>", "/pricing", "//evil.example/x", "http:/x", "https://",
                                   "vbscript:x", "https://ok.example/\nx", None, 42])
def test_only_absolute_http_urls_become_links(value) -> None:
    assert web_link(value) is None


def test_http_and_https_urls_are_links_as_they_are() -> None:
    assert web_link("https://www.example.com/pricing?x=1") == "https://www.example.com/pricing?x=1"
    assert web_link("HTTP://example.com/a") == "HTTP://example.com/a"


def test_filters_are_read_and_each_wrong_one_is_named() -> None:
    query, problems = parse_hot_query("2", "won", "me", "all", "3", {1, 2})
    assert (query, problems) == (HotQuery(topic=2, stage="won", owner="me", show="all", page=3), [])
    query, problems = parse_hot_query("7", "winning", "<b>", "cold", "-1", {1, 2})
    assert query == HotQuery() and len(problems) == 5
    assert any("no topic '7'" in p for p in problems) and any("Unknown stage 'winning'" in p for p in problems)
    assert parse_hot_query(None, None, "12", None, None, set()) == (HotQuery(owner="12"), [])


def test_filter_links_keep_the_filters_and_drop_empty_ones() -> None:
    assert HotQuery(topic=3, stage="new").params(page=2) == "topic=3&stage=new&owner=anyone&show=hot&page=2"
    assert HotQuery().params() == "owner=anyone&show=hot&page=1"


def test_events_become_lines_with_their_page_or_letter() -> None:
    view = describe_event("page_view", "SEO", {"url": "https://x.example/pricing", "referrer": "https://g.example/"}, T0)
    assert (view.label, view.url, view.kind) == ("Viewed a page", "https://x.example/pricing", "visit")
    assert view.text == "SEO · from https://g.example/"
    hostile = describe_event("page_view", "", {"url": "javascript:alert(1)"}, T0)
    assert hostile.url is None and hostile.url_text == "javascript:alert(1)"
    opened = describe_event("email_open", "SEO", {"delivery": 5, "step": 1}, T0, {5: "Your ebook"})
    assert opened.label == "Opened a letter" and "“Your ebook”" in opened.text
    hot = describe_event("became_hot", "SEO", {"combined": 42.25}, T0, alert="sales alert to a@x.org: sent")
    assert hot.text == "SEO · score 42.2 · sales alert to a@x.org: sent" and hot.kind == "hot"
    form = describe_event("form_submit", "SEO", {"page": "seo", "ebook": "seo-ebook", "referrer": "x"}, T0)
    assert form.text == "SEO · page /l/seo · ebook seo-ebook"
    odd = describe_event("video_play", "", {"combined": "x", "url": 3}, None)
    assert odd.label == "Played a video" and odd.url is None and odd.url_text == "3"
    assert describe_event("custom_thing", "", {}, T0).label == "Custom thing"


def test_the_timeline_is_newest_first_and_capped() -> None:
    items = [TimelineItem(T0 + timedelta(minutes=i), "visit", str(i)) for i in (3, 1, 2)] + [TimelineItem(None, "x", "?")]
    assert [i.label for i in newest_first(items, 10)] == ["3", "2", "1", "?"]
    assert [i.label for i in newest_first(items, 2)] == ["3", "2"]


def test_ago_reads_like_a_person() -> None:
    assert ago(None) == "never"
    assert ago(T0, T0 + timedelta(seconds=5)) == "just now"
    assert ago(T0, T0 + timedelta(minutes=5)) == "5 min ago"
    assert ago(T0, T0 + timedelta(hours=3)) == "3 h ago"
    assert ago(T0, T0 + timedelta(days=1, hours=2)) == "1 day ago"
    assert ago(T0, T0 + timedelta(days=12)) == "12 days ago"


def score(topic: str, combined: float, reasons: int = 0, hot: bool = False) -> TopicScore:
    return TopicScore(1, topic, 30, combined, combined, None, "rules", hot,
                      [Reason("Visited pricing (1×)", 1.0, "rules")] * reasons, T0)


def test_topics_with_no_interest_collapse_into_one_line() -> None:
    scores = [score("SEO", 41.0, 2, hot=True), score("Analytics", 0.0), score("Paid ads", 0.04),
              score("Email", 0.0, 1), score("Video", 0.3)]
    shown, quiet = split_quiet_topics(scores)
    assert [s.topic_name for s in shown] == ["SEO", "Email", "Video"], "a factor or a visible score keeps its row"
    assert quiet == ["Analytics", "Paid ads"], "shown as 0.0 with no factor: one line"
    assert split_quiet_topics([]) == ([], [])
