"""landing/tokens.py: signed, purpose-bound, expiring link tokens."""

from __future__ import annotations

import pytest

from landing.tokens import TokenError, sign, unsign


def test_round_trip() -> None:
    token = sign("unsubscribe", 42)
    assert unsign("unsubscribe", token) == 42


def test_round_trip_of_structured_payload() -> None:
    payload = {"lead": 7, "ebook": 3, "name": "Maria"}
    assert unsign("download", sign("download", payload), max_age_seconds=3600) == payload


def test_token_is_url_safe() -> None:
    token = sign("unsubscribe", {"lead": 1, "text": "a/b+c=d?"})
    assert all(ch.isalnum() or ch in "-_." for ch in token)


def test_token_for_one_purpose_fails_for_another() -> None:
    token = sign("unsubscribe", 42)
    with pytest.raises(TokenError, match="not valid"):
        unsign("download", token)


def _flip(char: str) -> str:
    return "B" if char == "A" else "A"


@pytest.mark.parametrize("where", ["payload", "signature"])
def test_tampered_token_is_not_valid(where: str) -> None:
    token = sign("unsubscribe", 42)
    index = 0 if where == "payload" else len(token) - 6
    tampered = token[:index] + _flip(token[index]) + token[index + 1 :]
    assert tampered != token
    with pytest.raises(TokenError, match="this link is not valid"):
        unsign("unsubscribe", tampered)


def test_garbage_is_not_valid() -> None:
    with pytest.raises(TokenError, match="not valid"):
        unsign("unsubscribe", "not-a-token")


def test_expired_token() -> None:
    token = sign("download", 42)
    with pytest.raises(TokenError, match="this link has expired"):
        unsign("download", token, max_age_seconds=-1)


def test_token_ages_with_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    token = sign("download", 42)
    assert unsign("download", token, max_age_seconds=60) == 42
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 120)
    with pytest.raises(TokenError, match="expired"):
        unsign("download", token, max_age_seconds=60)


def test_token_error_is_a_value_error() -> None:
    assert issubclass(TokenError, ValueError)
