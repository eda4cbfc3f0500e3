"""The relay's connection pool: N letters in flight on N reused connections, each letter sent once."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections import Counter
from collections.abc import Iterator

import dkim
import pytest
from aiosmtpd.controller import Controller

from content.letters import RenderedLetter
from content.mail import DkimSigner, Envelope, Relay, SmtpReplyError, build_message
from server.embedded import free_port
from server.settings import SmtpConfig
from tests.unit.content.test_dkim import DOMAIN, SELECTOR, rsa_key


class CountingRelay:
    """An SMTP relay that counts connections, letters, QUITs and transactions open at once.

    `drop_every`: after that many letters on one connection it drops the connection,
    either at the start of the next MAIL or just after its 250 to the letter's data.
    """

    def __init__(self, drop_every: int = 0, drop: str = "at_next_mail", refuse: str = "",
                 data_delay: float = 0.05) -> None:
        self.drop_every = drop_every
        self.drop = drop
        self.refuse = refuse
        self.data_delay = data_delay
        self.connections = 0
        self.letters: list[bytes] = []
        self.quits = 0
        self.resets = 0
        self.in_transaction = 0
        self.most_in_transaction = 0
        self._sent_on: Counter[int] = Counter()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        if self.drop_every and self._sent_on[id(session)] == self.drop_every and self.drop == "at_next_mail":
            server.transport.abort()  # no reply at all: the client finds the connection gone
            return "421 never seen"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.in_transaction += 1
        self.most_in_transaction = max(self.most_in_transaction, self.in_transaction)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address == self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):  # noqa: N802
        self.resets += 1
        if envelope.mail_from:
            self.in_transaction -= 1
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        await asyncio.sleep(self.data_delay)  # a relay that takes a moment: letters overlap
        self.letters.append(envelope.original_content)
        self.in_transaction -= 1
        self._sent_on[id(session)] += 1
        if self.drop_every and self._sent_on[id(session)] == self.drop_every and self.drop == "after_reply":
            # The reply goes out, then the connection closes before the client says more.
            await server.push("250 OK queued")
            server.transport.close()
        return "250 OK queued"

    async def handle_QUIT(self, server, session, envelope):  # noqa: N802
        self.quits += 1
        return "221 Bye"

    def message_ids(self) -> Counter[str]:
        return Counter(str(email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"])
                       for raw in self.letters)


class CountingController(Controller):
    def factory(self):
        self.handler.connections += 1
        return super().factory()


@pytest.fixture
def smtp_server(request) -> Iterator[tuple[CountingRelay, SmtpConfig]]:
    handler = CountingRelay(**getattr(request, "param", {}))
    port = free_port()
    controller = CountingController(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.connections = 0  # start() opens one itself to check the server is up
    yield handler, SmtpConfig("127.0.0.1", port, start_tls=False)
    controller.stop()


def _letter(n: int, to: str = ""):
    envelope = Envelope("Acme", f"hello@{DOMAIN}", to or f"lead{n}@example.org", f"<lk.p{n}@{DOMAIN}>",
                        f"https://leads.{DOMAIN}/u/{n}")
    return build_message(RenderedLetter(f"Letter {n}", f"Hello {n}.\n", f"<p>Hello {n}.</p>"), envelope)


async def test_twenty_letters_go_out_on_three_reused_connections(smtp_server) -> None:
    handler, config = smtp_server
    relay = Relay(config, connections=3)
    try:
        replies = await asyncio.gather(*(relay.send(_letter(n)) for n in range(20)))
    finally:
        await relay.close()
    assert all(reply.startswith("OK queued") for reply in replies)
    assert handler.message_ids() == Counter(f"<lk.p{n}@{DOMAIN}>" for n in range(20)), "each letter once"
    assert handler.connections == 3, "three connections, each reused"
    assert handler.most_in_transaction == 3, "three letters in flight, never more"
    assert handler.quits == 3, "close says QUIT on every connection"


async def test_the_default_pool_size_comes_from_the_settings(smtp_server) -> None:
    from server.settings import get_settings

    handler, config = smtp_server
    relay = Relay(config)
    try:
        await asyncio.gather(*(relay.send(_letter(n)) for n in range(12)))
    finally:
        await relay.close()
    assert relay.connections == get_settings().smtp_connections
    assert handler.connections == handler.most_in_transaction == relay.connections
    assert len(handler.letters) == 12


@pytest.mark.parametrize("smtp_server", [{"drop_every": 5, "drop": "at_next_mail"},
                                         {"drop_every": 5, "drop": "after_reply"}], indirect=True,
                         ids=["dropped-at-next-mail", "dropped-after-reply"])
async def test_a_relay_that_drops_connections_gets_every_letter_once(smtp_server) -> None:
    handler, config = smtp_server
    relay = Relay(config, connections=3)
    try:
        await asyncio.gather(*(relay.send(_letter(n)) for n in range(20)))
    finally:
        await relay.close()
    ids = handler.message_ids()
    assert ids == Counter(f"<lk.p{n}@{DOMAIN}>" for n in range(20)), "all arrived, none twice"
    assert handler.connections >= 4, "dropped connections were replaced"
    assert handler.most_in_transaction <= 3


@pytest.mark.parametrize("smtp_server", [{"refuse": "gone@example.org"}], indirect=True)
async def test_a_refused_recipient_keeps_the_connection_for_the_next_letter(smtp_server) -> None:
    handler, config = smtp_server
    relay = Relay(config, connections=1)
    try:
        await relay.send(_letter(1))
        with pytest.raises(SmtpReplyError) as refused:
            await relay.send(_letter(2, to="gone@example.org"))
        await relay.send(_letter(3))
    finally:
        await relay.close()
    assert (refused.value.code, refused.value.stage) == (550, "rcpt")
    assert handler.resets == 1, "RSET after the refusal"
    assert handler.connections == 1 and len(handler.letters) == 2


@pytest.mark.parametrize("smtp_server", [{"data_delay": 1.0}], indirect=True)
async def test_a_send_cancelled_mid_letter_does_not_leave_its_connection_in_the_pool(smtp_server) -> None:
    handler, config = smtp_server
    relay = Relay(config, connections=1)
    try:
        sending = asyncio.create_task(relay.send(_letter(1)))
        await asyncio.sleep(0.3)  # inside DATA: the relay is still chewing on it
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        handler.data_delay = 0
        reply = await asyncio.wait_for(relay.send(_letter(2)), 5)
    finally:
        await relay.close()
    assert reply.startswith("OK")
    assert handler.connections == 2, "the half-used connection was closed, not reused"


async def test_a_signed_letter_verifies_as_the_relay_received_it(smtp_server) -> None:
    handler, config = smtp_server
    key = rsa_key()
    relay = Relay(config, connections=1, signer=DkimSigner(DOMAIN, SELECTOR, key.private_pem))
    try:
        await relay.send(_letter(1))
    finally:
        await relay.close()
    [received] = handler.letters
    assert received.startswith(b"DKIM-Signature: ")
    assert dkim.verify(received, dnsfunc=key.dns)
