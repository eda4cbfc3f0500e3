"""Letters as MIME messages (RFC 8058 unsubscribe headers) and an SMTP relay client."""

from __future__ import annotations

import asyncio
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from datetime import datetime, timezone

import aiosmtplib

from content.letters import RenderedLetter
from server.settings import SmtpConfig


# Python folds a header as soon as it passes 78 characters, often right after the
# colon; RFC 5322 allows 998, and unfolded headers read the same in every client.
LETTER_POLICY = email.policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class Envelope:
    """Who a letter is from and to, and its fixed identity."""

    sender_name: str
    sender_email: str
    to_address: str
    message_id: str
    unsubscribe_url: str


def build_message(letter: RenderedLetter, envelope: Envelope, sent_at: datetime | None = None) -> EmailMessage:
    """A multipart/alternative letter with a visible and a one-click unsubscribe."""
    message = EmailMessage(policy=LETTER_POLICY)
    message["From"] = formataddr((envelope.sender_name, envelope.sender_email))
    message["To"] = envelope.to_address
    message["Subject"] = letter.subject
    message["Date"] = format_datetime(sent_at or datetime.now(timezone.utc))
    message["Message-ID"] = envelope.message_id
    message["List-Unsubscribe"] = f"<{envelope.unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    footer_text = f"\n--\nUnsubscribe: {envelope.unsubscribe_url}\n"
    message.set_content(letter.text + footer_text)
    footer_html = (
        '<hr><p style="font-size:12px;color:#555">'
        f'<a href="{envelope.unsubscribe_url}">Unsubscribe</a></p>'
    )
    message.add_alternative(
        f"<!doctype html><html><body>{letter.html}{footer_html}</body></html>", subtype="html"
    )
    return message


class SmtpReplyError(Exception):
    """The relay refused a letter; `code` tells temporary (4xx) from permanent (5xx)."""

    def __init__(self, code: int, reply: str) -> None:
        super().__init__(f"{code} {reply}")
        self.code = code
        self.reply = reply

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600


class Relay:
    """One reused SMTP connection to the relay, reconnected when it drops."""

    def __init__(self, config: SmtpConfig, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.config.host,
            port=self.config.port,
            use_tls=self.config.use_tls,
            start_tls=self.config.start_tls,
            timeout=self.timeout,
        )
        await client.connect()
        if self.config.username:
            await client.login(self.config.username, self.config.password or "")
        return client

    async def send(self, message: EmailMessage) -> str:
        """Send one letter; returns the relay's reply, raises SmtpReplyError or OSError."""
        async with self._lock:
            for attempt in (1, 2):
                if self._client is None or not self._client.is_connected:
                    self._client = await self._connect()
                try:
                    # Flattened here: aiosmtplib would re-fold headers with its 78-column policy.
                    raw = message.as_bytes(policy=LETTER_POLICY)
                    recipients = [address_of(str(message["To"]))]
                    _, reply = await self._client.sendmail(address_of(str(message["From"])), recipients, raw)
                    return reply
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    refusal = exc.recipients[0]
                    raise SmtpReplyError(refusal.code, refusal.message) from None
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code == 421:
                        # The relay is closing the session; the next letter reconnects.
                        await self._drop()
                    raise SmtpReplyError(exc.code, exc.message) from None
                except aiosmtplib.SMTPServerDisconnected:
                    # RFC 5321 4.1.1.4: with no reply to the end of DATA the letter is not
                    # delivered, so one resend on a fresh connection is correct.
                    await self._drop()
                    if attempt == 2:
                        raise
            raise RuntimeError("unreachable")

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    async def close(self) -> None:
        """Say QUIT and close the connection."""
        async with self._lock:
            client, self._client = self._client, None
            if client is not None and client.is_connected:
                try:
                    await client.quit()
                except aiosmtplib.SMTPException:
                    client.close()


def address_of(value: str) -> str:
    """The bare address in `Name <addr>` or `addr`."""
    return parseaddr(value)[1]
