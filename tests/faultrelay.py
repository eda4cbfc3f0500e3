"""A programmable SMTP relay for fault tests: it keeps what it accepts and misbehaves on cue."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from server.embedded import free_port

CHAIN_MESSAGE_ID = re.compile(r"<lk\.(\d+)\.(\d+)\.(\d+)@")
"""A chain letter's Message-ID names its delivery, enrollment and step position."""

REPLIES = {
    421: "421 4.7.0 closing the session, try again later",
    451: "451 4.3.0 local error, try again later",
    452: "452 4.2.2 mailbox full",
    454: "454 4.7.0 temporary authentication failure",
    550: "550 5.1.1 no such user here",
    554: "554 5.6.0 message refused",
}


def step_of(message: EmailMessage) -> tuple[int, int] | None:
    """(enrollment, position) of a chain letter; None for a notice or a stranger."""
    match = CHAIN_MESSAGE_ID.match(str(message.get("Message-ID", "")))
    return (int(match.group(2)), int(match.group(3))) if match else None


@dataclass
class Refusal:
    """Answer `code` at `stage` to the first `times` attempts at `address`."""

    address: str
    code: int
    stage: str
    times: int
    given: int = 0


@dataclass
class Drop:
    """Once `after` chain letters are in, close the next letter's connection at `stage`, unanswered."""

    after: int
    stage: str
    done: bool = False


class FaultRelay:
    """An aiosmtpd relay on a free port of 127.0.0.1.

    A letter counts as delivered once its data is in, before the relay answers: a relay
    that loses its connection (or whose client dies) after that point has the letter, as
    a real one would have queued it. Faults:

    - `refuse(address, code, stage, times)`: answer a code at RCPT or DATA, the first times;
      a 421 also closes the connection, as a relay that is shutting down does.
    - `drop(after, stage)`: once `after` chain letters are in, close the connection of the
      next letter without a reply, at MAIL (nothing handed over) or after its DATA.
    - `delay(seconds)`: wait before answering each letter's data.
    - `hold(after)`: once `after` chain letters are in, keep the answers to the chain
      letters that follow back until `release()`; `held()` says how many wait.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []
        self._refusals: list[Refusal] = []
        self._drops: list[Drop] = []
        self.refused: list[tuple[str, str, int]] = []
        """(address, stage, code) of every refusal given, in order."""
        self.dropped: list[str] = []
        """The stage of every connection dropped."""
        self.reply_delay = 0.0
        self._hold_after: int | None = None
        self._held = 0
        self._released = threading.Event()
        self._controller = Controller(_Handler(self), hostname=host, port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> "FaultRelay":
        self._controller.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._controller.stop()

    def __enter__(self) -> "FaultRelay":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Programming.

    def refuse(self, address: str, code: int, stage: str = "rcpt", times: int = 1) -> None:
        assert stage in ("rcpt", "data") and code in REPLIES, (stage, code)
        with self._lock:
            self._refusals.append(Refusal(address.lower(), code, stage, times))

    def drop(self, after: int, stage: str = "data") -> None:
        assert stage in ("mail", "data"), stage
        with self._lock:
            self._drops.append(Drop(after, stage))

    def delay(self, seconds: float) -> None:
        self.reply_delay = seconds

    def hold(self, after: int) -> None:
        with self._lock:
            self._hold_after = after
            self._released.clear()

    def held(self) -> int:
        """Letters whose data is in and whose answer is being kept back."""
        with self._lock:
            return self._held

    def release(self) -> None:
        """Answer the held letters (whose clients are still there) and hold no more."""
        with self._lock:
            self._hold_after = None
        self._released.set()

    # What arrived.

    def messages(self) -> list[EmailMessage]:
        """Every letter the relay took, in arrival order."""
        with self._lock:
            return list(self._messages)

    def letters(self) -> list[EmailMessage]:
        """Chain letters only."""
        return [m for m in self.messages() if step_of(m) is not None]

    def per_step(self) -> Counter[tuple[int, int]]:
        """How many letters arrived for each (enrollment, position)."""
        return Counter(step_of(m) for m in self.letters())

    def message_ids(self) -> set[str]:
        return {str(m["Message-ID"]) for m in self.messages()}

    # Called by the handler, in the relay's thread.

    def _chain_count(self) -> int:
        return sum(1 for m in self._messages if step_of(m) is not None)

    def _refusal_for(self, address: str, stage: str) -> int | None:
        with self._lock:
            for refusal in self._refusals:
                if refusal.address == address.lower() and refusal.stage == stage and refusal.given < refusal.times:
                    refusal.given += 1
                    self.refused.append((refusal.address, stage, refusal.code))
                    return refusal.code
        return None

    def _drop_now(self, stage: str) -> bool:
        with self._lock:
            count = self._chain_count()
            for drop in self._drops:
                if not drop.done and drop.stage == stage and count >= drop.after:
                    drop.done = True
                    self.dropped.append(stage)
                    return True
        return False

    def _keep(self, raw: bytes) -> bool:
        """Store a letter; True if its answer is to be held back."""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        with self._lock:
            hold = (self._hold_after is not None and step_of(message) is not None  # type: ignore[arg-type]
                    and self._chain_count() >= self._hold_after)
            self._messages.append(message)  # type: ignore[arg-type]
            self._held += hold
        return hold

    async def _wait_for_release(self) -> None:
        try:
            while not self._released.is_set():
                await asyncio.sleep(0.02)  # cancelled when the client goes away
        finally:
            with self._lock:
                self._held -= 1


class _Handler:
    def __init__(self, relay: FaultRelay) -> None:
        self.relay = relay

    async def _hang_up(self, server, reply: str | None = None) -> None:
        if reply is not None:
            await server.push(reply)
        server.transport.close()
        # aiosmtpd cancels this session's task when it sees the connection gone.
        await asyncio.sleep(3600)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        if self.relay._drop_now("mail"):
            await self._hang_up(server)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        code = self.relay._refusal_for(address, "rcpt")
        if code == 421:
            await self._hang_up(server, REPLIES[code])
        if code is not None:
            return REPLIES[code]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        for address in envelope.rcpt_tos:
            code = self.relay._refusal_for(address, "data")
            if code == 421:
                await self._hang_up(server, REPLIES[code])
            if code is not None:
                return REPLIES[code]
        drop = self.relay._drop_now("data")
        hold = self.relay._keep(envelope.original_content)
        if drop:
            await self._hang_up(server)
        if hold:
            await self.relay._wait_for_release()
        if self.relay.reply_delay:
            await asyncio.sleep(self.relay.reply_delay)
        return "250 2.0.0 queued"
