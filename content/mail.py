"""Letters as MIME messages (RFC 8058 unsubscribe headers) and an SMTP relay client."""

from __future__ import annotations

import asyncio
import email.policy
from html import escape
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
    preferences_url: str = ""


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
    footer_links = f'<a href="{escape(envelope.unsubscribe_url, quote=True)}">Unsubscribe</a>'
    if envelope.preferences_url:
        footer_text += f"Your preferences and data: {envelope.preferences_url}\n"
        footer_links += f' · <a href="{escape(envelope.preferences_url, quote=True)}">Your preferences and data</a>'
    message.set_content(letter.text + footer_text)
    footer_html = f'<hr><p style="font-size:12px;color:#555">{footer_links}</p>'

    message.add_alternative(
        f"<!doctype html><html><body>{letter.html}{footer_html}</body></html>", subtype="html"
    )
    return message


class SmtpReplyError(Exception):
    """The relay answered a letter with a refusal; nothing was delivered.

    `stage` says which command was refused: a 5xx to RCPT is the recipient's address
    (a bounce), a 5xx anywhere else is the relay or the letter (our problem, not the lead's).
    """

    def __init__(self, code: int, reply: str, stage: str) -> None:
        super().__init__(f"{code} {reply}")
        self.code = code
        self.reply = reply
        self.stage = stage

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def recipient_refused(self) -> bool:
        """A permanent refusal of the address itself: the one case that suppresses it."""
        return self.permanent and self.stage == "rcpt"


class DeliveryUncertain(Exception):
    """The letter's data went out but no reply came back: the relay may have accepted it.

    Sending it again could deliver it twice (RFC 1047), so the caller records it for a
    person to resolve instead of retrying.
    """


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
        try:
            await client.connect()
            if self.config.username:
                await client.login(self.config.username, self.config.password or "")
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise SmtpReplyError(exc.code, exc.message, "connect") from None
        return client

    async def send(self, message: EmailMessage) -> str:
        """Send one letter and return the relay's reply.

        Raises SmtpReplyError (refused: not delivered), OSError or SMTPException (not
        delivered: the relay was unreachable) or DeliveryUncertain (maybe delivered).
        """
        # Flattened here: aiosmtplib would re-fold headers with its 78-column policy.
        raw = message.as_bytes(policy=LETTER_POLICY)
        sender = address_of(str(message["From"]))
        recipient = address_of(str(message["To"]))
        async with self._lock:
            for attempt in (1, 2):
                if self._client is None or not self._client.is_connected:
                    self._client = await self._connect()
                client = self._client
                stage = "mail"
                try:
                    await client.mail(sender)
                    stage = "rcpt"
                    await client.rcpt(recipient)
                    stage = "data"
                    reply = await client.data(raw)
                    return reply.message
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code == 421 or stage == "data":
                        # 421: the relay is closing the session. After a refused DATA the
                        # session state is unclear. Either way the next letter reconnects.
                        await self._drop()
                    else:
                        await self._reset(client)
                    raise SmtpReplyError(exc.code, exc.message, stage) from None
                except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
                    await self._drop()
                    if stage == "data":
                        raise DeliveryUncertain(f"no reply to the letter's data: {exc}") from None
                    # Before DATA nothing was handed over: a reused connection that the
                    # relay closed while idle is retried once on a fresh one.
                    if attempt == 2:
                        raise
            raise RuntimeError("unreachable")

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        """RSET after a refused MAIL or RCPT, so the reused connection starts clean."""
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            await self._drop()

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
                except (aiosmtplib.SMTPException, OSError):
                    client.close()


def address_of(value: str) -> str:
    """The bare address in `Name <addr>` or `addr`."""
    return parseaddr(value)[1]
