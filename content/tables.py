"""Content tables: ebooks, landing pages, nurture chains and the send ledger."""

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
from piccolo.table import Table

from landing.tables import Lead, Topic


class Ebook(Table):
    """A lead magnet: authored in Markdown/HTML and rendered to PDF, or an uploaded PDF."""

    title = Varchar(length=200)
    slug = Varchar(length=120, unique=True, index=True)
    topic = ForeignKey(references=Topic, on_delete=OnDelete.restrict, index=True)
    body_markdown = Text(default="")
    subtitle = Varchar(length=300, default="")
    author = Varchar(length=200, default="")
    cover_image = Varchar(length=500, null=True, default=None, help_text="An image for the cover and the landing page.")
    uploaded_pdf = Varchar(length=500, null=True, default=None, help_text="A finished PDF, served as it is instead of the body.")
    content_hash = Varchar(length=64, null=True, default=None)
    rendered_path = Varchar(length=500, null=True, default=None)
    render_error = Text(default="", help_text="Why the last rendering failed (empty when it worked).")
    rendered_at = Timestamptz(null=True, default=None)
    leads_waiting = Integer(default=0, help_text="Leads that asked for this ebook while its topic had no active chain.")
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow(), auto_update=TimestamptzNow().python)

    @classmethod
    def get_readable(cls):
        return Readable(template="%s", columns=[cls.title])


class LandingPage(Table):
    """A public page under /l/<slug> that gates an ebook behind an email form."""

    slug = Varchar(length=120, unique=True, index=True)
    title = Varchar(length=200)
    headline = Varchar(length=300, default="")
    description = Varchar(length=300, default="", help_text="For search results and link previews (meta description, Open Graph).")
    cover_image = Varchar(length=500, null=True, default=None, help_text="Shown beside the copy; the ebook's cover when empty.")
    body_markdown = Text(default="")
    bullets = Text(default="", help_text="One bullet point a line.")
    ebook = ForeignKey(references=Ebook, on_delete=OnDelete.restrict, index=True)
    form_fields = Varchar(length=200, default="first_name", help_text="Fields asked besides email, comma-separated: first_name, company, role.")
    consent_text = Text(default="I agree to receive this ebook and related emails. I can unsubscribe at any time.")
    consent_version = Varchar(length=40, default="v1")
    double_opt_in = Boolean(default=False, help_text="Send a confirmation letter first; the ebook and the chain follow the confirmation.")
    progressive_fields = Integer(default=1, help_text="A returning lead is asked this many of the fields it has not given yet.")
    published = Boolean(default=True, index=True)
    created_at = Timestamptz(default=TimestamptzNow())

    @classmethod
    def get_readable(cls):
        return Readable(template="/l/%s", columns=[cls.slug])


class ChainStatus(str, Enum):
    draft = "draft"
    active = "active"
    paused = "paused"


class Chain(Table):
    """A topic's nurture chain: ordered steps ending in a hot or a cold offer."""

    name = Varchar(length=200)
    topic = ForeignKey(references=Topic, on_delete=OnDelete.restrict, index=True)
    status = Varchar(length=20, choices=ChainStatus, default=ChainStatus.draft, index=True)
    starts_at = Timestamptz(null=True, default=None)
    hot_threshold = Integer(default=60)
    sender_name = Varchar(length=120, default="")
    sender_email = Varchar(length=254, default="")
    timezone = Varchar(length=64, default="UTC")
    send_window_start = Integer(default=0, help_text="First hour (0-23) letters may leave, in the lead's time zone.")
    send_window_end = Integer(default=24, help_text="Hour (1-24) after which letters wait for the next day.")
    send_weekdays = Varchar(length=20, default="0123456", help_text="Weekdays letters may leave: 0=Monday … 6=Sunday.")
    holdout_percent = Integer(default=0, help_text="Share of enrolled leads kept as a control group that gets no letters.")
    is_fallback = Boolean(default=False, help_text="Takes the leads of every topic that has no active chain of its own.")
    enroll_when_hot = Boolean(default=False, help_text="A lead that turns hot on this chain's topic joins it, whatever ebook it came from.")
    exit_stage = Varchar(length=20, default="qualified", help_text="A lead leaves the chain when sales move it to this stage or beyond (empty: never).")
    check_error = Text(default="", help_text="Why the chain cannot be activated (a template error, a missing offer); empty when it can.")
    created_at = Timestamptz(default=TimestamptzNow())

    @classmethod
    def get_readable(cls):
        return Readable(template="%s", columns=[cls.name])


class StepKind(str, Enum):
    letter = "letter"
    offer = "offer"


class Step(Table):
    """One letter of a chain; an `offer` step sends the chain's hot or cold offer."""

    chain = ForeignKey(references=Chain, on_delete=OnDelete.cascade, index=True)
    position = Integer()
    kind = Varchar(length=10, choices=StepKind, default=StepKind.letter)
    delay_minutes = Integer(default=0, help_text="Wait after the previous letter (or after enrollment for the first).")
    subject = Varchar(length=300, default="")
    body_markdown = Text(default="")
    subject_b = Varchar(length=300, default="", help_text="Variant B's subject for an A/B test (empty: the same as A).")
    body_markdown_b = Text(default="", help_text="Variant B's body for an A/B test (empty: the same as A).")

    @classmethod
    def get_readable(cls):
        return Readable(template="#%s %s", columns=[cls.position, cls.subject])


class OfferKind(str, Enum):
    hot = "hot"
    cold = "cold"


class Offer(Table):
    """The final letter's two versions: hot (over the threshold) or cold."""

    chain = ForeignKey(references=Chain, on_delete=OnDelete.cascade, index=True)
    kind = Varchar(length=10, choices=OfferKind)
    subject = Varchar(length=300)
    body_markdown = Text(default="")
    call_to_action_url = Varchar(length=500, default="")


class EnrollmentGroup(str, Enum):
    treatment = "treatment"
    control = "control"


class EnrollmentStatus(str, Enum):
    active = "active"
    completed = "completed"
    exited = "exited"


class Enrollment(Table):
    """A lead in a chain: its group, the next step and when it is due."""

    lead = ForeignKey(references=Lead, on_delete=OnDelete.cascade)
    chain = ForeignKey(references=Chain, on_delete=OnDelete.cascade, index=True)
    group = Varchar(length=12, choices=EnrollmentGroup, default=EnrollmentGroup.treatment)
    variant = Varchar(length=8, default="A")
    status = Varchar(length=12, choices=EnrollmentStatus, default=EnrollmentStatus.active, index=True)
    next_position = Integer(default=1)
    due_at = Timestamptz(null=True, default=None, index=True)
    exit_reason = Varchar(length=40, default="")
    reason = Varchar(length=20, default="", help_text="Why the lead joined: download, waiting, fallback or hot.")
    enrolled_at = Timestamptz(default=TimestamptzNow())


class ChainWait(Table):
    """A lead that asked for a topic's ebook while no chain took it: enrolled when one does."""

    lead = ForeignKey(references=Lead, on_delete=OnDelete.cascade, index=True)
    topic = ForeignKey(references=Topic, on_delete=OnDelete.cascade, index=True)
    since = Timestamptz(default=TimestamptzNow())


class DeliveryStatus(str, Enum):
    claimed = "claimed"
    """Reserved by a send job that has not yet handed the letter to the relay."""
    sending = "sending"
    """Handed to the relay, no answer recorded yet."""
    sent = "sent"
    failed = "failed"
    """Not delivered (refused, unreachable, template error): retried with backoff."""
    bounced = "bounced"
    unknown = "unknown"
    """Maybe delivered (no reply after the data, or the worker died mid-send): for a person
    to resolve in the admin, `sent` to go on with the chain, `failed` to send it again."""


class Delivery(Table):
    """The send ledger: one row per enrollment and step, reserved before SMTP is spoken."""

    enrollment = ForeignKey(references=Enrollment, on_delete=OnDelete.cascade)
    step = ForeignKey(references=Step, on_delete=OnDelete.cascade, index=True)
    lead = ForeignKey(references=Lead, null=True, default=None, on_delete=OnDelete.cascade, index=True)
    variant = Varchar(length=1, default="", help_text="A or B when the step has a variant B.")
    links = JSON(default=[], help_text="The links in the letter, in order: a click redirects only to one of these.")
    # Every insert names its status; the column default stays as first migrated because
    # SQLite cannot alter a column's default in place.
    status = Varchar(length=12, choices=DeliveryStatus, default=DeliveryStatus.sending, index=True)
    offer_kind = Varchar(length=10, default="")
    to_address = Varchar(length=254, default="")
    subject = Varchar(length=300, default="")
    message_id = Varchar(length=255, default="")
    smtp_reply = Varchar(length=500, default="")
    attempts = Integer(default=0)
    reserved_at = Timestamptz(default=TimestamptzNow())
    sent_at = Timestamptz(null=True, default=None)
    opened_at = Timestamptz(null=True, default=None)
    clicked_at = Timestamptz(null=True, default=None)


class SuppressionReason(str, Enum):
    unsubscribe = "unsubscribe"
    bounce = "bounce"
    complaint = "complaint"
    erased = "erased"


class Suppression(Table):
    """An address that must not be mailed, kept by hash so erased leads stay suppressed."""

    email_hash = Varchar(length=64, unique=True, index=True)
    reason = Varchar(length=20, choices=SuppressionReason)
    detail = Varchar(length=500, default="")
    created_at = Timestamptz(default=TimestamptzNow())


class DownloadLink(Table):
    """A signed, expiring download link made for one lead and one ebook."""

    nonce = Varchar(length=32, unique=True, index=True)
    lead = ForeignKey(references=Lead, on_delete=OnDelete.cascade, index=True)
    ebook = ForeignKey(references=Ebook, on_delete=OnDelete.cascade)
    created_at = Timestamptz(default=TimestamptzNow())
    expires_at = Timestamptz()
    downloads = Integer(default=0)
    last_download_at = Timestamptz(null=True, default=None)


class NoticeKind(str, Enum):
    confirm = "confirm"
    """Double opt-in: the confirmation link."""
    ebook = "ebook"
    """The download link, after a capture or a confirmation."""
    rights = "rights"
    """A link to export or erase the lead's data, asked for on the preference page."""


class NoticeStatus(str, Enum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    failed = "failed"
    unknown = "unknown"
    skipped = "skipped"
    """Not sent on purpose: the address is suppressed or was erased."""


class Notice(Table):
    """A one-off letter a visitor asked for (confirmation, download, data request): its own ledger."""

    lead = ForeignKey(references=Lead, on_delete=OnDelete.cascade, index=True)
    kind = Varchar(length=10, choices=NoticeKind)
    dedupe_key = Varchar(length=120, unique=True, index=True, help_text="One letter per key, however often its job runs.")
    status = Varchar(length=10, choices=NoticeStatus, default=NoticeStatus.pending, index=True)
    payload = JSON(default={})
    to_address = Varchar(length=254, default="")
    subject = Varchar(length=300, default="")
    message_id = Varchar(length=255, default="")
    smtp_reply = Varchar(length=500, default="")
    attempts = Integer(default=0)
    created_at = Timestamptz(default=TimestamptzNow())
    next_attempt_at = Timestamptz(default=TimestamptzNow(), index=True)
    sent_at = Timestamptz(null=True, default=None)
