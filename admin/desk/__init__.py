"""The desk: the pages sales and the content team work in, behind the admin's login."""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from admin.desk import auth, content, ebooks, report, sales, scoring


def desk_router() -> Router:
    """Every desk page under /desk, with the staff user as a dependency and friendly refusals."""
    return Router(
        path="/",
        route_handlers=[auth.LoginController, *sales.HANDLERS, *content.HANDLERS, *ebooks.HANDLERS, *scoring.HANDLERS, *report.HANDLERS],
        dependencies={"staff": Provide(auth.provide_staff, sync_to_thread=False)},
        exception_handlers={NotAuthorizedException: auth.refused, PermissionDeniedException: auth.refused},
    )
