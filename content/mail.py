"""Letters as MIME messages (RFC 8058 unsubscribe headers, DKIM) and a pooled SMTP relay client."""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import random
import sys
from collections.abc import Awaitable, Callable
from html import escape
from dataclasses import dataclass
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import aiosmtplib
import dkim
import dkim.crypto

from content.letters import RenderedLetter
from content.throttle import SendThrottle
from server.settings import SmtpConfig, get_settings


class _FoldedOnce:
    """A header that keeps its folded form for the policy it was last folded for: a kept
    header (see _HeaderClasses) is flattened in every letter it sits in."""

    def fold(self, *, policy):
        kept = self.__dict__.get("_folded")
        if kept is not None and kept[0] is policy:
            return kept[1]
        folded = super().fold(policy=policy)
        self._folded = (policy, folded)
        return folded


class _HeaderClasses(HeaderRegistry):
    """The standard header registry, each header's class made once, and a header seen lately
    (the parts' Content-Type and encoding, List-Unsubscribe-Post, a chain's From) taken as
    parsed before: the stdlib makes a new class with `type()` every time a header is set,
    counted or read, then parses its value, which was half the cost of building a letter.
    Header objects are immutable, so one may sit in any number of letters, folded once; the
    bytes are the same."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._made: dict[str, type] = {}
        self._parsed = lru_cache(maxsize=_KEPT_HEADERS)(super().__call__)

    def map_to_type(self, name, cls):
        super().map_to_type(name, cls)
        self._made.clear()
        self._parsed.cache_clear()

    def __reduce__(self):
        # Pickled (with a policy or a message) as its map alone; the kept ones are remade.
        return _HeaderClasses, (self.base_class, self.default_class, False), {"registry": dict(self.registry)}

    def __setstate__(self, state: dict) -> None:
        self.registry = state["registry"]

    def __getitem__(self, name):
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            # As HeaderRegistry.__getitem__ makes it, with _FoldedOnce first.
            cls = self.registry.get(key, self.default_class)
            made = self._made[key] = type("_" + cls.__name__, (_FoldedOnce, cls, self.base_class), {})
        return made

    def __call__(self, name, value):
        return self._parsed(name, value)


_KEPT_HEADERS = 256


# Python folds a header as soon as it passes 78 characters, often right after the
# colon; RFC 5322 allows 998, and unfolded headers read the same in every client.
LETTER_POLICY = email.policy.SMTP.clone(max_line_length=998, header_factory=_HeaderClasses())


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

    html = f"<!doctype html><html><body>{letter.html}{footer_html}</body></html>"
    message.add_alternative(html, subtype="html")
    message.set_boundary(_boundary(letter.text + footer_text, html))
    return message


def _boundary(*parts: str) -> str:
    """A multipart boundary made as the stdlib's generator makes one, found absent from the
    parts with a plain search: the generator would otherwise compile a regular expression for
    each letter to check its own. (A run of fifteen "=" survives neither base64 nor
    quoted-printable, so the parts' text is what has to be searched.)"""
    while True:
        boundary = "=" * 15 + "%019d" % random.randrange(sys.maxsize) + "=="
        if not any(boundary in part for part in parts):
            return boundary


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
        """A permanent refusal of the address itself, the one case that suppresses it: a 5xx
        to RCPT, or a 5xx after the data whose enhanced status code (RFC 3463) blames the
        mailbox (5.1.x bad address, 5.2.1 disabled; some relays check recipients only then).
        A refusal of the letter itself (5.7.x policy, spam) does not blame the address."""
        if not self.permanent:
            return False
        if self.stage == "rcpt":
            return True
        status = self.reply.strip().split(" ", 1)[0]
        return self.stage == "data" and (status.startswith("5.1.") or status == "5.2.1")


class HandOver:
    """A relay.send `before_data` callback that remembers whether the relay was handed the letter:
    a send cancelled before that certainly did not go; after it, it may have."""

    def __init__(self) -> None:
        self.done = False

    async def __call__(self) -> None:
        self.done = True


class DeliveryUncertain(Exception):
    """The letter's data went out but no reply came back: the relay may have accepted it.

    Sending it again could deliver it twice (RFC 1047), so the caller records it for a
    person to resolve instead of retrying.
    """


# What a receiver must be able to trust: who it is from and to, what it says, and the
# one-click unsubscribe (RFC 8058 requires both List-Unsubscribe headers to be signed).
DKIM_SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
                       b"list-unsubscribe", b"list-unsubscribe-post")


class DkimSigner:
    """Signs flattened letters for one domain: rsa-sha256, relaxed/relaxed, one key loaded once."""

    def __init__(self, domain: str, selector: str, private_key: bytes) -> None:
        # dkimpy's PEM reader wants bare newlines; parsed once here so a bad key stops the
        # worker at startup instead of failing every letter.
        self.private_key = private_key.replace(b"\r\n", b"\n")
        try:
            key = dkim.crypto.parse_pem_private_key(self.private_key)
        except dkim.crypto.UnparsableKeyError as exc:
            raise ValueError(f"not an RSA private key in PEM: {exc}") from None
        if key["modulus"].bit_length() < 1024:
            raise ValueError("the DKIM key is shorter than 1024 bits: receivers ignore such signatures (RFC 8301)")
        self.domain = domain.encode()
        self.selector = selector.encode()

    @classmethod
    def from_file(cls, domain: str, selector: str, key_file: str | Path) -> "DkimSigner":
        return cls(domain, selector, Path(key_file).expanduser().read_bytes())

    def sign(self, raw: bytes) -> bytes:
        """The letter with its DKIM-Signature header prepended."""
        signature = dkim.sign(raw, self.selector, self.domain, self.private_key,
                              canonicalize=(b"relaxed", b"relaxed"), include_headers=list(DKIM_SIGNED_HEADERS))
        return signature + raw


@lru_cache(maxsize=1)
def configured_signer() -> DkimSigner | None:
    """The signer DKIM_DOMAIN, DKIM_SELECTOR and DKIM_KEY_FILE describe (the key read once per process)."""
    settings = get_settings()
    if not (settings.dkim_domain and settings.dkim_selector and settings.dkim_key_file):
        return None
    return DkimSigner.from_file(settings.dkim_domain, settings.dkim_selector, settings.dkim_key_file)


class Relay:
    """Up to `connections` reused SMTP connections to the relay: that many letters in flight.

    Each connection carries one letter at a time and is reused for the next, reconnected
    when it drops. With a `throttle`, each letter takes a slot of the global send rate
    just before MAIL FROM. Letters are DKIM-signed when a signer is configured.
    """

    def __init__(self, config: SmtpConfig, timeout: float = 30.0, *, connections: int | None = None,
                 throttle: SendThrottle | None = None, signer: DkimSigner | None = None) -> None:
        self.config = config
        self.timeout = timeout
        self.connections = connections or get_settings().smtp_connections
        self.throttle = throttle
        self.signer = signer or configured_signer()
        # A permit is a connection's worth of work: whoever holds one owns at most one
        # client, and opens a new one only when no idle one is left, so never more than
        # `connections` are open.
        self._permits = asyncio.Semaphore(self.connections)
        # Most recently used last: reused first, so the relay's idle timeout closes the
        # spare ones rather than the ones we are about to use.
        self._idle: list[aiosmtplib.SMTP] = []

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
        except BaseException:
            _discard(client)
            raise
        return client

    async def _ready(self, client: aiosmtplib.SMTP | None) -> aiosmtplib.SMTP:
        if client is not None and client.is_connected:
            return client
        if client is not None:
            _discard(client)
        return await self._connect()

    async def send(self, message: EmailMessage, before_data: Callable[[], Awaitable[None]] | None = None) -> str:
        """Send one letter and return the relay's reply.

        `before_data` runs once the relay has taken the recipient, just before the letter
        is handed over: the caller's last chance to record "in flight" (up to then, a
        failure or a cancellation means the letter was certainly not sent).

        Raises SmtpReplyError (refused: not delivered), OSError or SMTPException (not
        delivered: the relay or the send-rate limiter was unreachable) or
        DeliveryUncertain (maybe delivered).
        """
        # Flattened here: aiosmtplib would re-fold headers with its 78-column policy.
        raw = message.as_bytes(policy=LETTER_POLICY)
        if self.signer is not None:
            raw = self.signer.sign(raw)
        sender = address_of(str(message["From"]))
        recipient = address_of(str(message["To"]))
        async with self._permits:
            client = self._idle.pop() if self._idle else None
            # True while the connection sits between letters, safe for the next one. Any
            # other way out (a 421, a refused DATA, a cancelled job mid-command) closes it.
            clean = True
            try:
                for attempt in (1, 2):
                    client = await self._ready(client)
                    clean = True
                    if self.throttle is not None:
                        await self.throttle.acquire()
                        # The relay may have closed the connection while we waited for a slot.
                        client = await self._ready(client)
                    stage = "mail"
                    clean = False
                    try:
                        await client.mail(sender)
                        stage = "rcpt"
                        await client.rcpt(recipient)
                        if before_data is not None:
                            await before_data()
                            before_data = None  # a retried attempt never re-records
                        stage = "data"
                        reply = await client.data(raw)
                        clean = True
                        return reply.message
                    except aiosmtplib.SMTPResponseException as exc:
                        # 421: the relay is closing the session. After a refused DATA the
                        # session state is unclear. Either way the connection is closed.
                        if exc.code != 421 and stage != "data":
                            clean = await _reset(client)
                        raise SmtpReplyError(exc.code, exc.message, stage) from None
                    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
                        _discard(client)
                        client = None
                        if stage == "data":
                            raise DeliveryUncertain(f"no reply to the letter's data: {exc}") from None
                        # Before DATA nothing was handed over: a reused connection that the
                        # relay closed while idle is retried once on a fresh one.
                        if attempt == 2:
                            raise
                raise RuntimeError("unreachable")
            finally:
                if client is not None:
                    if clean and client.is_connected:
                        self._idle.append(client)
                    else:
                        _discard(client)

    async def close(self) -> None:
        """Wait for the letters in flight, then say QUIT on every connection."""
        held = 0
        try:
            for _ in range(self.connections):
                await self._permits.acquire()
                held += 1
            idle, self._idle = self._idle, []
            await asyncio.gather(*(_quit(client) for client in idle))
        finally:
            for _ in range(held):
                self._permits.release()


async def _reset(client: aiosmtplib.SMTP) -> bool:
    """RSET after a refused MAIL or RCPT, so the reused connection starts clean; False if it can't."""
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        return False
    return True


async def _quit(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        _discard(client)


def _discard(client: aiosmtplib.SMTP) -> None:
    """Close without a word: the connection is broken or its state unknown."""
    with contextlib.suppress(OSError, RuntimeError):  # a transport already gone, or its loop closed
        client.close()


def address_of(value: str) -> str:
    """The bare address in `Name <addr>` or `addr`."""
    return parseaddr(value)[1]
