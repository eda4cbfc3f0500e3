"""Litestar's CSRF middleware with a cheaper cookie: the same tokens and checks."""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.middleware.csrf import CSRFMiddleware
from litestar.types import HTTPSendMessage

from landing.cookies import cookie_header


class LeanCSRFMiddleware(CSRFMiddleware):
    """Only the cookie's writing differs; tokens, exclusions and checks are Litestar's
    (this overrides a private method of the pinned Litestar 2.x)."""

    def _set_cookie_if_needed(self, message: HTTPSendMessage, token: str) -> None:
        config = self.config
        MutableScopeHeaders.from_message(message).add("set-cookie", cookie_header(
            config.cookie_name, token, path=config.cookie_path, samesite=config.cookie_samesite,
            httponly=config.cookie_httponly, secure=config.cookie_secure, domain=config.cookie_domain,
        ))
