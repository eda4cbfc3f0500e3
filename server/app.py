"""The Litestar application: routes, templates, CSRF, admin mount, and the resources' lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from litestar import Litestar, Request, Response, asgi
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import CacheControlHeader, State
from litestar.static_files import create_static_files_router
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template.config import TemplateConfig
from litestar.types import Receive, Scope, Send
from piccolo.engine import engine_finder
from piccolo.engine.postgres import PostgresEngine

from landing.pageviews import PageViewBuffer
from server.csrf import LeanCSRFMiddleware
from server.health import health
from server.settings import get_settings

log = logging.getLogger("leadkiln.server")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIRS = [ROOT / "landing" / "templates", ROOT / "admin" / "templates"]


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Open the database pool and the ARQ pool; close them on shutdown."""
    settings = get_settings()
    engine = engine_finder()
    # A pool opened by our host (a test session, the worker in the same process) is left to it.
    own_pool = isinstance(engine, PostgresEngine) and engine.pool is None
    if own_pool:
        await engine.start_connection_pool(min_size=1, max_size=settings.db_pool_size)
    arq = None
    if settings.redis_url:
        arq = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    app.state.arq = arq
    app.state.page_views = page_view_buffer(arq, settings.page_view_flush_ms)
    try:
        yield
    finally:
        await app.state.page_views.close()
        if arq is not None:
            await arq.aclose()
        if own_pool:
            await engine.close_connection_pool()


def page_view_buffer(arq: ArqRedis | None, interval_ms: int) -> PageViewBuffer:
    """Page views batched per process; known leads among the visitors are rescored after."""
    from landing.service import write_page_views

    async def rescore(lead_ids: set[int]) -> None:
        if arq is not None:
            for lead_id in lead_ids:
                await arq.enqueue_job("rescore_lead", lead_id)

    return PageViewBuffer(write_page_views, rescore, interval_ms)


def provide_arq(state: State) -> ArqRedis | None:
    return state.arq


def not_found(request: Request, exc: NotFoundException) -> Response:
    """A friendly page for people; JSON for the API and for clients that ask for JSON."""
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        return Response({"status_code": 404, "detail": exc.detail}, status_code=404)
    return Template(template_name="landing/not_found.html", status_code=404)


def create_app() -> Litestar:
    """Compose the web app from the domains."""
    from admin.desk import desk_router
    from admin.site import GUARDED_ADMIN
    from landing.api import SECURITY_COMPONENTS, ApiController, snippet
    from landing.controllers import (
        ConfirmController,
        DownloadController,
        LandingController,
        PreferencesController,
        RightsController,
        UnsubscribeController,
        favicon,
        index,
    )
    from landing.tracking import TrackingController

    @asgi("/admin", is_mount=True, copy_scope=True)
    async def admin(scope: Scope, receive: Receive, send: Send) -> None:
        """piccolo-admin; `/admin` without its slash would break the admin's asset links."""
        if scope["type"] == "http" and scope.get("raw_path", b"").rstrip(b"?").split(b"?")[0] == b"/admin":
            await send({"type": "http.response.start", "status": 308,
                        "headers": [(b"location", b"/admin/"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await GUARDED_ADMIN(scope, receive, send)  # type: ignore[arg-type]

    settings = get_settings()
    covers = settings.data_dir / "media" / "covers"
    covers.mkdir(parents=True, exist_ok=True)
    media = create_static_files_router(path="/media/covers", directories=[covers], name="covers",
                                       cache_control=CacheControlHeader(max_age=3600, public=True))
    return Litestar(
        route_handlers=[index, favicon, LandingController, DownloadController, ConfirmController, PreferencesController,
                        RightsController, UnsubscribeController, TrackingController, ApiController, snippet, media,
                        health, admin, desk_router()],
        dependencies={"arq": Provide(provide_arq, sync_to_thread=False)},
        lifespan=[lifespan],
        template_config=TemplateConfig(directory=TEMPLATE_DIRS, engine=JinjaTemplateEngine),
        middleware=[DefineMiddleware(LeanCSRFMiddleware, config=CSRFConfig(
            secret=settings.secret_key,
            cookie_name="lk_csrf",
            header_name="x-lk-csrf",
            cookie_httponly=True,
            cookie_secure=settings.public_url.startswith("https://"),
            # The admin has its own CSRF; the API uses keys; one-click unsubscribe is
            # POSTed by mailbox providers without cookies (RFC 8058).
            # Regular expressions searched anywhere in the path: anchored, or a landing page
            # called /l/api-guide would skip CSRF. /u/ is RFC 8058 one-click unsubscribe,
            # which mailbox providers POST without a token (the signed URL is the proof). /t/ is
            # only GETs (the open pixel, link redirects): no CSRF cookie set in mail programs.
            exclude=["^/admin(/|$)", "^/api/", "^/u/", "^/t/", "^/health$"],
        ))],
        exception_handlers={NotFoundException: not_found},
        openapi_config=OpenAPIConfig(title="leadkiln", version="0.1.0", path="/api/schema",
                                     components=SECURITY_COMPONENTS),
        request_max_body_size=64 * 1024,
    )
