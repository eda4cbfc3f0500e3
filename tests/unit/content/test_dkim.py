"""content/mail.py DkimSigner: letters signed for the sender's domain, unsubscribe headers covered."""

from __future__ import annotations

import base64
import dataclasses
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

import dkim
import pytest

from content.letters import RenderedLetter
from content.mail import DKIM_SIGNED_HEADERS, LETTER_POLICY, DkimSigner, Envelope, Relay, build_message, configured_signer
from server.settings import SmtpConfig, get_settings

DOMAIN = "acme.example"
SELECTOR = "lk2026"
UNSUBSCRIBE = "https://leads.acme.example/u/abc.DEF-123_xyz"


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes
    public_der: bytes

    def dns(self, name: bytes, timeout: float = 5) -> bytes | None:
        """The TXT record a receiver would find at selector._domainkey.domain."""
        if name.rstrip(b".") != f"{SELECTOR}._domainkey.{DOMAIN}".encode():
            return None
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(self.public_der)


# A 2048-bit RSA key made here in plain Python (Miller-Rabin primes, DER by hand): the
# project has no other use for a crypto library, and dkimpy signs without one.
def _probably_prime(n: int, rounds: int = 32) -> bool:
    if any(n % p == 0 for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)):
        return False
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        # The top two bits set, so two of them multiply to exactly 2 * bits bits.
        candidate = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if _probably_prime(candidate):
            return candidate


def _der(tag: int, body: bytes) -> bytes:
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _integer(n: int) -> bytes:
    return _der(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))  # a leading zero keeps it positive


def _sequence(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def rsa_key(bits: int = 2048, e: int = 65537) -> KeyPair:
    while True:
        p, q = _prime(bits // 2), _prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e:
            break
    n, d = p * q, pow(e, -1, phi)
    private = _sequence(*(_integer(v) for v in (0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))))
    rsa_encryption = _sequence(_der(0x06, bytes.fromhex("2a864886f70d010101")), _der(0x05, b""))
    public = _sequence(rsa_encryption, _der(0x03, b"\x00" + _sequence(_integer(n), _integer(e))))
    body = base64.encodebytes(private).replace(b"\n", b"")
    lines = b"\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    pem = b"-----BEGIN RSA PRIVATE KEY-----\n" + lines + b"\n-----END RSA PRIVATE KEY-----\n"
    return KeyPair(pem, public)


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return rsa_key()


def _signed_letter(key: KeyPair) -> bytes:
    envelope = Envelope("Acme Team", f"hello@{DOMAIN}", "maria@example.org", "<lk.1.2.3@leads.acme.example>",
                        UNSUBSCRIBE, "https://leads.acme.example/p/abc")
    letter = RenderedLetter(subject="Your ebook is here", text="Hi Maria,\n\nThanks.\n",
                            html="<p>Hi Maria,</p><p>Thanks.</p>")
    message = build_message(letter, envelope, sent_at=datetime(2026, 3, 4, 9, 30, tzinfo=timezone.utc))
    return DkimSigner(DOMAIN, SELECTOR, key.private_pem).sign(message.as_bytes(policy=LETTER_POLICY))


def _signature_tags(raw: bytes) -> dict[str, str]:
    headers = raw.split(b"\r\n\r\n", 1)[0].decode()
    match = re.match(r"DKIM-Signature: (.*?)\r\n(?![ \t])", headers, re.DOTALL)
    assert match, "the signature is the letter's first header"
    value = re.sub(r"\s+", "", match.group(1))
    return dict(tag.split("=", 1) for tag in value.strip(";").split(";"))


def test_a_signed_letter_verifies(key: KeyPair) -> None:
    assert dkim.verify(_signed_letter(key), dnsfunc=key.dns)


def test_the_signature_is_rsa_sha256_relaxed_for_the_domain(key: KeyPair) -> None:
    tags = _signature_tags(_signed_letter(key))
    assert tags["a"] == "rsa-sha256"
    assert tags["c"] == "relaxed/relaxed"
    assert (tags["d"], tags["s"]) == (DOMAIN, SELECTOR)


def test_the_signature_covers_the_one_click_unsubscribe(key: KeyPair) -> None:
    signed = _signature_tags(_signed_letter(key))["h"].split(":")
    assert "list-unsubscribe" in signed and "list-unsubscribe-post" in signed
    assert set(signed) == {name.decode() for name in DKIM_SIGNED_HEADERS}


@pytest.mark.parametrize("original, forged", [
    (f"List-Unsubscribe: <{UNSUBSCRIBE}>", "List-Unsubscribe: <https://evil.example/u/abc>"),
    ("List-Unsubscribe-Post: List-Unsubscribe=One-Click", "List-Unsubscribe-Post: List-Unsubscribe=Never"),
    ("Subject: Your ebook is here", "Subject: Your invoice is overdue"),
])
def test_a_header_altered_after_signing_fails(key: KeyPair, original: str, forged: str) -> None:
    raw = _signed_letter(key)
    assert original.encode() in raw
    assert not dkim.verify(raw.replace(original.encode(), forged.encode(), 1), dnsfunc=key.dns)


def test_an_altered_body_fails(key: KeyPair) -> None:
    raw = _signed_letter(key)
    assert not dkim.verify(raw.replace(b"Thanks.", b"Pay now.", 1), dnsfunc=key.dns)


def test_relaxed_headers_survive_a_relay_that_refolds_them(key: KeyPair) -> None:
    raw = _signed_letter(key).replace(b"Subject: Your ebook is here", b"Subject: Your ebook\r\n  is here", 1)
    assert dkim.verify(raw, dnsfunc=key.dns)


def test_a_key_that_is_not_a_key_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="not an RSA private key"):
        DkimSigner(DOMAIN, SELECTOR, b"-----BEGIN RSA PRIVATE KEY-----\nbm9wZQ==\n-----END RSA PRIVATE KEY-----\n")


def test_a_short_key_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="shorter than 1024 bits"):
        DkimSigner(DOMAIN, SELECTOR, rsa_key(bits=768).private_pem)


def test_a_key_file_is_read_once_and_signs(key: KeyPair, tmp_path) -> None:
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(key.private_pem.replace(b"\n", b"\r\n"))  # a key saved on Windows
    signer = DkimSigner.from_file(DOMAIN, SELECTOR, key_file)
    key_file.unlink()
    raw = b"From: hello@acme.example\r\nTo: maria@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
    assert dkim.verify(signer.sign(raw), dnsfunc=key.dns)


def test_the_relay_signs_when_the_three_settings_are_set(key: KeyPair, tmp_path, monkeypatch) -> None:
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(key.private_pem)
    configured = dataclasses.replace(get_settings(), dkim_domain=DOMAIN, dkim_selector=SELECTOR,
                                     dkim_key_file=str(key_file))
    monkeypatch.setattr("content.mail.get_settings", lambda: configured)
    configured_signer.cache_clear()
    try:
        signer = Relay(SmtpConfig("relay.test", 25)).signer
        assert signer is not None and signer is Relay(SmtpConfig("relay.test", 25)).signer, "one key per process"
        assert (signer.domain, signer.selector) == (DOMAIN.encode(), SELECTOR.encode())
        monkeypatch.setattr("content.mail.get_settings", lambda: dataclasses.replace(configured, dkim_key_file=""))
        configured_signer.cache_clear()
        assert Relay(SmtpConfig("relay.test", 25)).signer is None
    finally:
        configured_signer.cache_clear()
