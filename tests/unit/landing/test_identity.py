"""Pure helpers of tracking and the form: URL patterns, masked addresses, the optional email."""

from __future__ import annotations

from landing.api import match_url
from landing.controllers import mask_email, valid_cookie_id
from landing.forms import validate_capture

PATTERNS = [
    {"pattern": "/services/seo*", "topic": 1, "event_type": "page_view"},
    {"pattern": "*/pricing*", "topic": 2, "event_type": "pricing_view"},
    {"pattern": "https://shop.example.com/*", "topic": 3, "event_type": "page_view"},
]


def test_url_patterns_match_paths_case_insensitively_first_wins() -> None:
    assert match_url("https://www.example.com/Services/SEO/audit?x=1", PATTERNS)["topic"] == 1
    assert match_url("https://www.example.com/en/pricing", PATTERNS)["topic"] == 2
    assert match_url("https://shop.example.com/cart", PATTERNS)["topic"] == 3
    assert match_url("https://www.example.com/about", PATTERNS) is None
    assert match_url("", PATTERNS) is None
    assert match_url("http://[::1", PATTERNS) is None, "an unparsable URL matches nothing"


def test_masked_email_keeps_the_first_letter_and_the_domain() -> None:
    assert mask_email("jane@example.com") == "j•••@example.com"
    assert mask_email("broken") == "•••"


def test_cookie_ids_are_url_safe_and_of_sane_length() -> None:
    assert valid_cookie_id("a" * 16) and valid_cookie_id("Ab-_" * 8)
    assert not valid_cookie_id("a" * 15) and not valid_cookie_id("a" * 65) and not valid_cookie_id("a" * 20 + ";x")


def test_a_returning_lead_may_leave_the_email_out_but_not_give_a_bad_one() -> None:
    assert validate_capture({"consent": "on"}, ["company"], require_email=False).ok
    form = validate_capture({"consent": "on", "email": "nope"}, [], require_email=False)
    assert "email" in form.errors
    assert "email" in validate_capture({"consent": "on"}, []).errors
