"""Staff users for tests: made through the admin's own form code, logged in the way people do."""

from __future__ import annotations

import re

import httpx

PASSWORD = "correct-horse-battery-9"
CSRF_INPUT = re.compile(r'name="_csrf_token" value="([^"]+)"')


async def make_staff(username: str, role: str, password: str = PASSWORD) -> int:
    """A staff user with a role, made as the 'Add a staff user' form makes one."""
    from admin.forms.staff import NewStaff, add_staff
    from piccolo.apps.user.tables import BaseUser

    await add_staff(None, NewStaff(username=username, email=f"{username}@example.com", password=password, role=role))
    return (await BaseUser.select(BaseUser.id).where(BaseUser.username == username).first())["id"]


async def csrf_token(client: httpx.AsyncClient, page: str = "/desk/login") -> str:
    """A CSRF token from a desk page's form (the cookie comes with it)."""
    response = await client.get(page, headers={"accept": "text/html"})
    match = CSRF_INPUT.search(response.text)
    assert match, f"no CSRF input on {page}: {response.status_code}"
    return match.group(1)


async def desk_login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> None:
    """Log in through /desk/login; the session cookie then serves /desk/ and /admin/."""
    token = await csrf_token(client)
    response = await client.post("/desk/login", data={"_csrf_token": token, "username": username, "password": password,
                                                      "next": "/desk/"})
    assert response.status_code == 303, response.text


async def admin_headers(client: httpx.AsyncClient) -> dict[str, str]:
    """piccolo-admin's CSRF header for API writes, after a login (any login)."""
    await client.get("/admin/")
    return {"X-CSRFToken": client.cookies.get("csrftoken") or ""}
