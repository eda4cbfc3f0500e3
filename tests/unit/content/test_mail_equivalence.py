"""build_message's faster assembly (header classes made once, the boundary chosen up front)
flattens to the same bytes as the stdlib's plain way, for ordinary and awkward letters."""

from __future__ import annotations

import email.policy
import random
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from html import escape

import pytest

from content.letters import RenderedLetter
from content.mail import LETTER_POLICY, Envelope, build_message

STOCK_POLICY = email.policy.SMTP.clone(max_line_length=998)
SENT_AT = datetime(2026, 3, 4, 9, 30, 15, tzinfo=timezone.utc)


def _stock(letter: RenderedLetter, envelope: Envelope) -> EmailMessage:
    """The letter as build_message made it before: the stock policy, the generator's boundary."""
    message = EmailMessage(policy=STOCK_POLICY)
    message["From"] = formataddr((envelope.sender_name, envelope.sender_email))
    message["To"] = envelope.to_address
    message["Subject"] = letter.subject
    message["Date"] = format_datetime(SENT_AT)
    message["Message-ID"] = envelope.message_id
    message["List-Unsubscribe"] = f"<{envelope.unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    footer_text = f"\n--\nUnsubscribe: {envelope.unsubscribe_url}\n"
    footer_links = f'<a href="{escape(envelope.unsubscribe_url, quote=True)}">Unsubscribe</a>'
    if envelope.preferences_url:
        footer_text += f"Your preferences and data: {envelope.preferences_url}\n"
        footer_links += f' · <a href="{escape(envelope.preferences_url, quote=True)}">Your preferences and data</a>'
    message.set_content(letter.text + footer_text)
    footer_html = f'<hr><p style="font-size:12px;color:#555">{footer_links}</p>'
    message.add_alternative(f"<!doctype html><html><body>{letter.html}{footer_html}</body></html>", subtype="html")
    return message


LONG = "A long subject line about pricing strategy for small teams, chapter one of six and more " * 3

CASES = [
    ("plain", "Acme Team", "maria@example.org", "Your ebook is here", "Hi Maria,\n\nThanks.\n", "<p>Hi</p>"),
    ("unicode", "Zoë Müller, Sales", "zoe@example.org", "Grüße aus Köln — 10 € Rabatt", "Hallo Zoë,\n\nDanke ✓\n",
     "<p>Grüße</p>"),
    ("quotes", 'Ann "The Ads" O\'Neil', "ann+tag@example.org", 'Re: "quoted" (comment) <angle>',
     "Text\twith tab\n", "<p>&amp;</p>"),
    ("long", "A" * 120, "long.address.for.someone@sub.domain.example.org", LONG.strip(), "x" * 1200 + "\n",
     "<p>" + "y" * 1500 + "</p>"),
    ("encoded-word lookalike", "=?utf-8?q?Ann?=", "ann@example.org", "=?utf-8?q?hi?= there", "Hi\n", "<p>Hi</p>"),
    ("boundary lookalike", "Acme", "a@example.org", "Hi", "===============1234567890123456789==\n--x\n",
     "<p>===============</p>"),
    ("empty", "", "a@example.org", "", "\n", ""),
    ("long unicode body", "Acme", "a@example.org", "Hi", ("ü" * 700 + "\n") * 12, "<p>" + "é" * 1200 + "</p>"),
]


@pytest.mark.parametrize("preferences", ["", "https://leads.example.com/p/abc.DEF"])
@pytest.mark.parametrize(("name", "sender", "to", "subject", "text", "html"), CASES, ids=[c[0] for c in CASES])
def test_the_same_bytes_as_the_stock_assembly(name, sender, to, subject, text, html, preferences) -> None:
    letter = RenderedLetter(subject=subject, text=text, html=html)
    envelope = Envelope(sender, "hello@acme.example", to, "<lk.1.2.3@leads.example.com>",
                        "https://leads.example.com/u/abc.DEF-123_xyz", preferences)
    random.seed(name)
    expected = _stock(letter, envelope).as_bytes(policy=STOCK_POLICY)
    random.seed(name)
    message = build_message(letter, envelope, sent_at=SENT_AT)
    assert message.as_bytes(policy=LETTER_POLICY) == expected
    # Reading headers back gives the same parsed values too.
    stock = _stock(letter, envelope)
    for header in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post"):
        assert str(message[header]) == str(stock[header]), header


def test_header_classes_are_made_once() -> None:
    factory = LETTER_POLICY.header_factory
    assert factory["Subject"] is factory["subject"]
    assert factory["From"] is not factory["Subject"]
