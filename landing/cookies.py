"""Set-Cookie values written directly (visitor id, CSRF token)."""

from __future__ import annotations


def cookie_header(name: str, value: str, *, max_age: int | None = None, path: str = "/", samesite: str = "lax",
                  httponly: bool = True, secure: bool = False, domain: str | None = None) -> str:
    """A Set-Cookie value for a URL-safe value (ids, hex tokens: nothing to quote).

    Litestar's Cookie.to_header goes through dataclasses.asdict and http.cookies, which cost
    more than the rest of a cached landing page together (profiled: about 60 µs a cookie).
    """
    parts = [f"{name}={value}", f"Path={path}", f"SameSite={samesite.capitalize()}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if domain:
        parts.append(f"Domain={domain}")
    if httponly:
        parts.append("HttpOnly")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
