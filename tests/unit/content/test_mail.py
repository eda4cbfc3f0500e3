"""content/mail.py: MIME letters with RFC 8058 unsubscribe headers, relay reply codes, addresses."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import pytest

from content.letters import RenderedLetter
from content.mail import LETTER_POLICY, Envelope, SmtpReplyError, address_of, build_message

UNSUBSCRIBE = "https://leads.example.com/u/abc.DEF-123_xyz"
SENT_AT = datetime(2026, 3, 4, 9, 30, tzinfo=timezone.utc)


def _envelope() -> Envelope:
    return Envelope(
        sender_name="Acme Team",
        sender_email="hello@acme.example",
        to_address="maria@example.org",
        message_id="<lk.1.2.3@leads.example.com>",
        unsubscribe_url=UNSUBSCRIBE,
    )


def _letter(subject: str = "Your ebook is here") -> RenderedLetter:
    return RenderedLetter(subject=subject, text="Hi Maria,\n\nThanks.\n", html="<p>Hi Maria,</p><p>Thanks.</p>")


def test_headers() -> None:
    message = build_message(_letter(), _envelope(), sent_at=SENT_AT)
    assert message["From"] == "Acme Team <hello@acme.example>"
    assert message["To"] == "maria@example.org"
    assert message["Subject"] == "Your ebook is here"
    assert parsedate_to_datetime(message["Date"]) == SENT_AT
    assert message["Message-ID"] == "<lk.1.2.3@leads.example.com>"
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_each_header_appears_once() -> None:
    message = build_message(_letter(), _envelope(), sent_at=SENT_AT)
    for name in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post"):
        assert len(message.get_all(name)) == 1, name


def test_date_defaults_to_now() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    message = build_message(_letter(), _envelope())
    after = datetime.now(timezone.utc)
    assert before <= parsedate_to_datetime(message["Date"]) <= after


def test_multipart_alternative_with_text_and_html() -> None:
    message = build_message(_letter(), _envelope(), sent_at=SENT_AT)
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    text, html = (part.get_content() for part in parts)
    assert text.startswith("Hi Maria,\n\nThanks.\n")
    assert "<p>Hi Maria,</p><p>Thanks.</p>" in html


def test_visible_unsubscribe_link_in_both_parts() -> None:
    message = build_message(_letter(), _envelope(), sent_at=SENT_AT)
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    assert f"Unsubscribe: {UNSUBSCRIBE}" in text
    assert f'<a href="{UNSUBSCRIBE}">Unsubscribe</a>' in html


def test_long_subject_is_not_folded() -> None:
    subject = "A long subject line about pricing strategy for small teams, chapter one of six"
    subject = (subject + " and more")[:80]
    assert len(subject) == 80
    message = build_message(_letter(subject), _envelope(), sent_at=SENT_AT)
    raw = message.as_bytes(policy=LETTER_POLICY)
    lines = raw.split(b"\r\n")
    index = next(i for i, line in enumerate(lines) if line.startswith(b"Subject:"))
    assert lines[index] == b"Subject: " + subject.encode()
    assert not lines[index + 1].startswith((b" ", b"\t"))


def test_raw_message_has_every_header_on_one_line() -> None:
    message = build_message(_letter("x" * 90), _envelope(), sent_at=SENT_AT)
    raw = message.as_bytes(policy=LETTER_POLICY)
    headers = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert f"List-Unsubscribe: <{UNSUBSCRIBE}>".encode() in headers
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in headers
    assert not any(line.startswith((b" ", b"\t")) for line in headers)


@pytest.mark.parametrize("code, permanent", [(550, True), (554, True), (500, True), (451, False), (421, False)])
def test_smtp_reply_error_tells_permanent_from_temporary(code: int, permanent: bool) -> None:
    error = SmtpReplyError(code, "mailbox unavailable", "rcpt")
    assert error.permanent is permanent
    assert error.code == code
    assert str(error) == f"{code} mailbox unavailable"


@pytest.mark.parametrize(
    "code, stage, bounce",
    [
        (550, "rcpt", True),  # the address does not exist: suppress it
        (451, "rcpt", False),  # try later
        (550, "mail", False),  # the relay refuses our sender: our problem, not the lead's
        (530, "connect", False),  # authentication required: a misconfigured relay
        (554, "data", False),  # the letter was refused: retried, the address stays
    ],
)
def test_only_a_permanent_refusal_of_the_address_is_a_bounce(code: int, stage: str, bounce: bool) -> None:
    assert SmtpReplyError(code, "refused", stage).recipient_refused is bounce


@pytest.mark.parametrize(
    "value, address",
    [
        ("Maria <m@x.org>", "m@x.org"),
        ('"Doe, Maria" <m@x.org>', "m@x.org"),
        ("m@x.org", "m@x.org"),
    ],
)
def test_address_of(value: str, address: str) -> None:
    assert address_of(value) == address


@pytest.mark.parametrize(("reply", "bounce"), [
    ("5.1.1 <ann@example.com>: Recipient address rejected: User unknown", True),
    ("5.2.1 mailbox disabled", True),
    ("5.7.1 message content rejected as spam", False),
    ("Requested action not taken", False),
])
def test_a_refused_letter_blames_the_address_only_when_its_status_code_says_so(reply: str, bounce: bool) -> None:
    assert SmtpReplyError(550, reply, "data").recipient_refused is bounce
