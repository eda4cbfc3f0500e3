"""Landing tables: topics, visitors, leads, their events, consents and conversions."""

from __future__ import annotations

from enum import Enum

from piccolo.apps.user.tables import BaseUser
from piccolo.columns import (
    JSON,
    Boolean,
    ForeignKey,
    Integer,
    OnDelete,
    Real,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.readable import Readable
from piccolo.table import Table


class Topic(Table):
    """A subject of interest: ebooks, chains and scores are per topic."""

    name = Varchar(length=100, unique=True)
    slug = Varchar(length=100, unique=True, index=True)
    description = Text(default="")
    hot_threshold = Real(default=60.0, help_text="A lead whose combined score (0-100) on this topic reaches this is hot.")
    created_at = Timestamptz(default=TimestamptzNow())

    @classmethod
    def get_readable(cls):
        return Readable(template="%s", columns=[cls.name])


class LeadStage(str, Enum):
    new = "new"
    contacted = "contacted"
    qualified = "qualified"
    won = "won"
    lost = "lost"


class Lead(Table):
    """A person identified by a normalised email (or a historical CRM row with none)."""

    email = Varchar(length=254, null=True, default=None, unique=True, index=True)
    external_id = Varchar(length=200, null=True, default=None, help_text="The lead's id in an imported CRM export (unique).")
    first_name = Varchar(length=100, default="")
    last_name = Varchar(length=100, default="")
    company = Varchar(length=200, default="")
    role = Varchar(length=100, default="")
    timezone = Varchar(length=64, default="")
    source = Varchar(length=100, default="", index=True)
    first_touch = JSON(default={})
    last_touch = JSON(default={})
    attributes = JSON(default={}, help_text="Typed attributes imported from a CRM export.")
    stage = Varchar(length=20, choices=LeadStage, default=LeadStage.new, index=True)
    owner = ForeignKey(references=BaseUser, null=True, default=None, on_delete=OnDelete.set_null)
    topic = ForeignKey(references=Topic, null=True, default=None, on_delete=OnDelete.set_null,
                       help_text="The topic of first interest (the landing page or the import).")
    outcome_at = Timestamptz(null=True, default=None, help_text="When the stage became won, qualified or lost.")
    historical = Boolean(default=False, help_text="Imported for training only; never mailed.")
    confirmed = Boolean(default=False, help_text="Confirmed the address by double opt-in.")
    erased_at = Timestamptz(null=True, default=None, help_text="When the lead's personal data was erased (the row stays for counts).")
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    updated_at = Timestamptz(default=TimestamptzNow(), auto_update=TimestamptzNow().python)

    @classmethod
    def get_readable(cls):
        return Readable(template="%s", columns=[cls.email])


class Visitor(Table):
    """An anonymous browser, known by its first-party cookie; joined to a lead on capture."""

    cookie_id = Varchar(length=64, unique=True, index=True)
    lead = ForeignKey(references=Lead, null=True, default=None, on_delete=OnDelete.set_null, index=True)
    user_agent = Varchar(length=500, default="")
    first_seen_at = Timestamptz(default=TimestamptzNow())
    last_seen_at = Timestamptz(default=TimestamptzNow())


class Event(Table):
    """An append-only fact about a visitor or a lead: what scoring learns from."""

    type = Varchar(length=40, index=True)
    visitor = ForeignKey(references=Visitor, null=True, default=None, on_delete=OnDelete.set_null, index=True)
    lead = ForeignKey(references=Lead, null=True, default=None, on_delete=OnDelete.cascade, index=True)
    topic = ForeignKey(references=Topic, null=True, default=None, on_delete=OnDelete.set_null)
    properties = JSON(default={})
    occurred_at = Timestamptz(default=TimestamptzNow(), index=True)


class Consent(Table):
    """Proof of consent: the exact text version shown, when, from where, on which page."""

    lead = ForeignKey(references=Lead, on_delete=OnDelete.cascade, index=True)
    page_url = Varchar(length=500, default="")
    text = Text()
    version = Varchar(length=40)
    ip = Varchar(length=45, default="")
    user_agent = Varchar(length=500, default="")
    given_at = Timestamptz(default=TimestamptzNow())


class Conversion(Table):
    """A target action (an order, a booked call) that chains and experiments are judged by."""

    lead = ForeignKey(references=Lead, on_delete=OnDelete.cascade, index=True)
    kind = Varchar(length=60, default="order")
    value = Real(default=0.0)
    occurred_at = Timestamptz(default=TimestamptzNow(), index=True)


class TopicPreference(Table):
    """A lead's choice about one topic's letters, made on the preference page."""

    lead = ForeignKey(references=Lead, on_delete=OnDelete.cascade, index=True)
    topic = ForeignKey(references=Topic, on_delete=OnDelete.cascade)
    subscribed = Boolean(default=True)
    updated_at = Timestamptz(default=TimestamptzNow())


class ApiKeyScope(str, Enum):
    server = "server"
    """Called from the company's own servers: any event type, may name a lead by email."""
    browser = "browser"
    """Embedded in the tracking snippet, so public: anonymous page views and clicks only."""


class ApiKey(Table):
    """A key for POST /api/events; only its hash is kept, the key is shown once when made."""

    name = Varchar(length=100)
    prefix = Varchar(length=16, help_text="The key's first characters, to recognise it.")
    key_hash = Varchar(length=64, unique=True, index=True)
    scope = Varchar(length=10, choices=ApiKeyScope, default=ApiKeyScope.browser)
    allowed_origins = Text(default="", help_text="Browser keys: sites allowed to send events, one origin a line (https://www.example.com). Empty: any.")
    active = Boolean(default=True)
    created_at = Timestamptz(default=TimestamptzNow())
    last_used_at = Timestamptz(null=True, default=None)

    @classmethod
    def get_readable(cls):
        return Readable(template="%s", columns=[cls.name])


class UrlTopic(Table):
    """Maps visits to pages of the company's site (pricing, service pages) to a topic."""

    pattern = Varchar(length=300, help_text="A URL path with * wildcards, e.g. /services/seo/* or */pricing*.")
    topic = ForeignKey(references=Topic, on_delete=OnDelete.cascade)
    event_type = Varchar(length=40, default="page_view", help_text="page_view, or pricing_view for pricing pages.")
    priority = Integer(default=100, help_text="Lower first; the first matching pattern wins.")
    active = Boolean(default=True)


class LeadChange(Table):
    """A change of a lead's stage or owner: who made it and when (stages are the model's labels)."""

    lead = ForeignKey(references=Lead, on_delete=OnDelete.cascade, index=True)
    field = Varchar(length=20, help_text="stage or owner")
    old_value = Varchar(length=200, default="")
    new_value = Varchar(length=200, default="")
    changed_by = ForeignKey(references=BaseUser, null=True, default=None, on_delete=OnDelete.set_null)
    changed_by_name = Varchar(length=100, default="", help_text="The user's name when the change was made, kept if the user is deleted.")
    via = Varchar(length=20, default="desk", help_text="desk, admin table, import")
    changed_at = Timestamptz(default=TimestamptzNow(), index=True)
