"""Server tables: what the built-in mail catcher caught, for the admin to show."""

from __future__ import annotations

from piccolo.columns import Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class CaughtMail(Table):
    """A letter received by the demo's mail catcher instead of a real relay."""

    message_id = Varchar(length=255, default="", index=True)
    sender = Varchar(length=254, default="")
    recipients = Varchar(length=1000, default="", index=True)
    subject = Varchar(length=500, default="")
    raw = Text(default="")
    received_at = Timestamptz(default=TimestamptzNow(), index=True)
