"""Admin form: make an API key for POST /api/events (shown once, only its hash is kept)."""

from __future__ import annotations

from enum import Enum

from piccolo_admin.endpoints import FormConfig
from pydantic import BaseModel, Field
from starlette.requests import Request

from landing.api import create_api_key
from landing.tables import ApiKeyScope


class Scope(str, Enum):
    browser = "browser"
    server = "server"


class NewApiKey(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="What uses it, e.g. 'www.example.com snippet'.")
    scope: Scope = Field(Scope.browser, description="browser: the public snippet (page views, clicks); server: your own servers (any event, by email).")
    allowed_origins: str = Field("", max_length=2000, description="Browser keys: sites that may send events, one per line (https://www.example.com). Empty: any.")


async def make_api_key(request: Request, data: NewApiKey) -> str:
    key = await create_api_key(data.name.strip(), ApiKeyScope(data.scope.value), data.allowed_origins.strip())
    return f"Your new key (copy it now: it is not shown again): {key}"


FORM = FormConfig(
    name="Create API key",
    pydantic_model=NewApiKey,
    endpoint=make_api_key,
    description="Keys authenticate POST /api/events and the tracking snippet. Revoke one by unticking 'active' in API keys.",
    form_group="System",
)
