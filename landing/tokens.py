"""Signed, expiring tokens for links in letters and pages (unsubscribe, downloads, tracking)."""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from server.settings import get_settings


class TokenError(ValueError):
    """A token that was tampered with, is for another purpose, or has expired."""


def _serializer(purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(get_settings().secret_key, salt=f"leadkiln:{purpose}")


def sign(purpose: str, payload: Any) -> str:
    """A URL-safe token carrying `payload` for `purpose` only."""
    return _serializer(purpose).dumps(payload)


def unsign(purpose: str, token: str, max_age_seconds: int | None = None) -> Any:
    """The payload of a token made by `sign` for the same purpose, or TokenError."""
    try:
        return _serializer(purpose).loads(token, max_age=max_age_seconds)
    except SignatureExpired:
        raise TokenError("this link has expired") from None
    except BadSignature:
        raise TokenError("this link is not valid") from None


def public_link(path: str) -> str:
    """An absolute URL on this server, as visitors and letters reach it."""
    return f"{get_settings().public_url}{path}"


def unsubscribe_url(lead_id: int) -> str:
    """One-click unsubscribe (RFC 8058): no expiry, a letter may be read months later."""
    return public_link(f"/u/{sign('unsubscribe', lead_id)}")


def preferences_url(lead_id: int) -> str:
    """The lead's preference page (topics, unsubscribe, export, erase): in every letter."""
    return public_link(f"/p/{sign('preferences', lead_id)}")
