"""Admin forms: add a staff user with a role, or change a user's role, password or access."""

from __future__ import annotations

from piccolo.apps.user.tables import BaseUser
from piccolo_admin.endpoints import FormConfig
from pydantic import BaseModel, Field
from starlette.requests import Request

from admin.tables import Role, StaffRole

MIN_PASSWORD = 10


class NewStaff(BaseModel):
    username: str = Field(min_length=2, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$",
                          description="Letters, digits and . _ @ - only.")
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=MIN_PASSWORD, max_length=200, description=f"At least {MIN_PASSWORD} characters.")
    role: Role = Field(Role.sales, description="admin: everything; sales: leads and stages; content: ebooks and chains.")


class StaffChange(BaseModel):
    username: str = Field(min_length=2, max_length=100)
    role: Role | None = Field(None, description="The new role (empty: unchanged).")
    new_password: str = Field("", max_length=200, description=f"Empty: unchanged; else at least {MIN_PASSWORD} characters.")
    active: bool = Field(True, description="Untick to lock the user out (their sessions end).")


async def set_role(user_id: int, role: Role) -> None:
    """The role row, and piccolo's own flags: admins are superusers, so they manage users in the tables too."""
    async with StaffRole._meta.db.transaction():
        if await StaffRole.exists().where(StaffRole.user == user_id):
            await StaffRole.update({StaffRole.role: role}).where(StaffRole.user == user_id)
        else:
            await StaffRole.insert(StaffRole(user=user_id, role=role))
        await BaseUser.update({BaseUser.superuser: role is Role.admin, BaseUser.admin: True}).where(BaseUser.id == user_id)


async def add_staff(request: Request, data: NewStaff) -> str:
    if await BaseUser.exists().where(BaseUser.username == data.username):
        raise ValueError(f"A user called {data.username} exists already: change it with 'Change a staff user'.")
    user = await BaseUser.create_user(username=data.username, password=data.password, email=data.email,
                                      active=True, admin=True, superuser=data.role is Role.admin)
    await set_role(user.id, data.role)
    return f"{data.username} can log in now as {data.role.value}."


async def change_staff(request: Request, data: StaffChange) -> str:
    from piccolo_api.session_auth.tables import SessionsBase

    user = await BaseUser.select(BaseUser.id).where(BaseUser.username == data.username).first()
    if user is None:
        raise ValueError(f"No user is called {data.username}.")
    if user["id"] == getattr(request.user, "user_id", None) and (not data.active or data.role not in (None, Role.admin)):
        raise ValueError("You cannot lock yourself out or take away your own admin role.")
    done = []
    if data.new_password:
        if len(data.new_password) < MIN_PASSWORD:
            raise ValueError(f"The password needs at least {MIN_PASSWORD} characters.")
        await BaseUser.update_password(user=user["id"], password=data.new_password)
        done.append("password changed")
    if data.role is not None:
        await set_role(user["id"], data.role)
        done.append(f"role {data.role.value}")
    await BaseUser.update({BaseUser.active: data.active}).where(BaseUser.id == user["id"])
    if not data.active:
        await SessionsBase.delete().where(SessionsBase.user_id == user["id"])
        done.append("locked out, sessions ended")
    else:
        done.append("active")
    return f"{data.username}: " + ", ".join(done) + "."


ADD_FORM = FormConfig(name="Add a staff user", pydantic_model=NewStaff, endpoint=add_staff,
                      description="A login for the admin and the desk pages, with its role.", form_group="System")
CHANGE_FORM = FormConfig(name="Change a staff user", pydantic_model=StaffChange, endpoint=change_staff,
                         description="Role, password, or lock a user out.", form_group="System")
