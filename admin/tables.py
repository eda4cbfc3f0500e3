"""Admin tables: hot-lead letters to sales, CRM webhooks and their log, staff roles, the weekly report's ledger."""

from __future__ import annotations

from enum import Enum

from piccolo.columns import (
    JSON,
    Boolean,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.readable import Readable
from piccolo.apps.user.tables import BaseUser
from piccolo.table import Table

from landing.tables import Event, Lead, Topic


class AlertStatus(str, Enum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    failed = "failed"
    """Not sent yet: retried after `next_attempt_at`, or given up after the last attempt."""
    unknown = "unknown"
    """The relay may have the letter (no reply to its data, or the worker died): not resent."""
    skipped = "skipped"
    """Nobody to tell (no owner and no SALES_ALERT_TO), or the lead was erased."""


class HotAlert(Table):
    """One letter to sales per crossing into hot (a `became_hot` event): the hand-off ledger."""

    event = ForeignKey(references=Event, null=False, unique=True, on_delete=OnDelete.cascade,
                       help_text="The became_hot event: one alert per crossing, however often the job runs.")
    lead = ForeignKey(references=Lead, null=False, on_delete=OnDelete.cascade, index=True)
    topic = ForeignKey(references=Topic, null=True, default=None, on_delete=OnDelete.set_null)
    status = Varchar(length=10, choices=AlertStatus, default=AlertStatus.pending, index=True)
    to_address = Varchar(length=254, default="", help_text="The lead's owner, else SALES_ALERT_TO.")
    subject = Varchar(length=300, default="")
    message_id = Varchar(length=255, default="")
    smtp_reply = Varchar(length=500, default="")
    attempts = Integer(default=0)
    created_at = Timestamptz(default=TimestamptzNow())
    next_attempt_at = Timestamptz(default=TimestamptzNow(), index=True,
                                  help_text="When to try again; while sending, when the claim began.")
    sent_at = Timestamptz(null=True, default=None)


class WebhookEndpoint(Table):
    """A CRM (or any receiver) told about hot leads by an HMAC-signed JSON POST."""

    name = Varchar(length=100)
    url = Varchar(length=2000, help_text="http:// or https:// only, no user:password@. Redirects are not followed.")
    secret = Varchar(length=100, default="", help_text="Signs every request (X-Leadkiln-Signature). "
                                                       "Left empty, one is generated; give it to the receiver.")
    active = Boolean(default=True)
    events = Varchar(length=200, default="lead.hot", help_text="What to send, comma-separated: lead.hot")
    created_at = Timestamptz(default=TimestamptzNow())

    @classmethod
    def get_readable(cls):
        return Readable(template="%s", columns=[cls.name])


class WebhookStatus(str, Enum):
    pending = "pending"
    sending = "sending"
    """Claimed by a worker; a claim older than `next_attempt_at` belongs to a dead worker and is retried."""
    delivered = "delivered"
    failed = "failed"
    """The last attempt failed; tried again at `next_attempt_at`."""
    gave_up = "gave_up"


class WebhookDelivery(Table):
    """One event for one endpoint, retried with backoff until a 2xx: the delivery log.

    Unique on (endpoint, event_key), an index made in a raw migration.
    """

    endpoint = ForeignKey(references=WebhookEndpoint, null=False, on_delete=OnDelete.cascade, index=True)
    event = Varchar(length=40, default="lead.hot")
    event_key = Varchar(length=120, help_text="The event's id, also the body's `id`: lead.hot:<became_hot event id>.")
    lead = ForeignKey(references=Lead, null=True, default=None, on_delete=OnDelete.cascade, index=True)
    payload = JSON(default={})
    status = Varchar(length=10, choices=WebhookStatus, default=WebhookStatus.pending, index=True)
    attempts = Integer(default=0)
    next_attempt_at = Timestamptz(default=TimestamptzNow(), index=True)
    response_code = Integer(null=True, default=None)
    response_body = Varchar(length=500, default="", help_text="The start of the receiver's last answer.")
    error = Varchar(length=500, default="")
    history = Text(default="", help_text="One line per attempt: when, and what came back.")
    created_at = Timestamptz(default=TimestamptzNow())
    delivered_at = Timestamptz(null=True, default=None)


class Role(str, Enum):
    """What a staff user may do: see admin/roles.py for the whole policy."""

    admin = "admin"
    """Everything, including users, API keys, webhooks and training."""
    sales = "sales"
    """Leads, hot leads, stages and owners, lead exports and erasure; chains read-only."""
    content = "content"
    """Ebooks, landing pages, chains and their results; no lead exports or erasure."""


class StaffRole(Table):
    """A staff user's role; a user without one is refused everywhere but a superuser (an admin)."""

    user = ForeignKey(references=BaseUser, on_delete=OnDelete.cascade, unique=True, index=True)
    role = Varchar(length=10, choices=Role, default=Role.sales)
    updated_at = Timestamptz(default=TimestamptzNow(), auto_update=TimestamptzNow().python)


class ReportStatus(str, Enum):
    sending = "sending"
    sent = "sent"
    failed = "failed"


class WeeklyReport(Table):
    """The weekly sales report's send ledger: one row per week, so a schedule never sends it twice."""

    week_start = Varchar(length=10, unique=True, help_text="The Monday that starts the reported week (YYYY-MM-DD).")
    status = Varchar(length=10, choices=ReportStatus, default=ReportStatus.sending)
    recipients = Text(default="")
    error = Text(default="")
    attempts = Integer(default=0)
    sent_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
