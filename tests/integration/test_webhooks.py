"""CRM webhooks: http(s)-only endpoints checked in the admin, signed POSTs to a real receiver,
retries with backoff, timeouts, no redirects, one attempt at a time, and the delivery log."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from admin import webhooks
from admin.tables import WebhookDelivery, WebhookEndpoint, WebhookStatus
from admin.webhooks import deliver, due_deliveries, guard_endpoint_save, record_deliveries, verify
from tests.integration.test_pages_and_admin import _admin_login

ENDPOINTS_URL = "/admin/api/tables/webhook_endpoint/"


class Receiver:
    """A CRM stand-in on a real socket: checks each request's signature with the endpoint's
    secret, records it, and answers from a script (a status, (status, body, headers), or "hang")."""

    def __init__(self) -> None:
        self.secret = ""
        self.requests: list[dict[str, Any]] = []
        self.answers: list[Any] = []
        self.hang_seconds = 3.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signature = self.headers.get("X-Leadkiln-Signature", "")
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                          "signature": signature, "verified": verify(receiver.secret, body, signature)})
                answer = receiver.answers.pop(0) if receiver.answers else 200
                if answer == "hang":
                    time.sleep(receiver.hang_seconds)
                    answer = 200
                code, text, headers = answer if isinstance(answer, tuple) else (answer, "ok", {})
                try:
                    self.send_response(code)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(text.encode())))
                    self.end_headers()
                    self.wfile.write(text.encode())
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/leadkiln"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as receiver:
        yield receiver


async def make_endpoint(receiver: Receiver, **more: Any) -> WebhookEndpoint:
    """An endpoint made as the admin makes one (the save hook generates its secret)."""
    endpoint = guard_endpoint_save(WebhookEndpoint(name="CRM", url=receiver.url, **more))
    await endpoint.save()
    receiver.secret = endpoint.secret
    return endpoint


async def one_delivery(key: str = "lead.hot:1") -> int:
    payload = {"event": "lead.hot", "id": key, "lead": {"email": "ann@example.com", "first_name": "Ann"}}
    [delivery_id] = await record_deliveries("lead.hot", key, None, payload, datetime.now(timezone.utc))
    return delivery_id


async def row(delivery_id: int) -> WebhookDelivery:
    return await WebhookDelivery.objects().output(load_json=True).get(WebhookDelivery.id == delivery_id)


async def make_due(delivery_id: int) -> None:
    """The backoff has passed (moved back instead of waited for)."""
    await WebhookDelivery.update({WebhookDelivery.next_attempt_at: datetime.now(timezone.utc) - timedelta(seconds=1)}).where(
        WebhookDelivery.id == delivery_id)


BAD_URLS = ["ftp://x", "javascript:alert(1)", "http://user:pw@host/", "http://exa mple.com", "file:///etc/passwd",
            "gopher://127.0.0.1:6379/_FLUSHALL", "http://", "crm.example.com/hook", "http://x\r\nHost: evil"]


async def test_the_admin_refuses_urls_that_are_not_plain_http_and_saves_nothing(client) -> None:
    headers = await _admin_login(client)
    for url in BAD_URLS:
        refused = await client.post(ENDPOINTS_URL, headers=headers, json={"name": "CRM", "url": url})
        assert refused.status_code == 400, (url, refused.status_code, refused.text)
    assert await WebhookEndpoint.count() == 0, "nothing saved"
    unknown = await client.post(ENDPOINTS_URL, headers=headers, json={"name": "CRM", "url": "https://crm.example.com/h",
                                                                    "events": "lead.cold"})
    assert unknown.status_code == 400 and "lead.cold" in unknown.text
    weak = await client.post(ENDPOINTS_URL, headers=headers, json={"name": "CRM", "url": "https://crm.example.com/h",
                                                                 "secret": "short"})
    assert weak.status_code == 400 and await WebhookEndpoint.count() == 0

    made = await client.post(ENDPOINTS_URL, headers=headers, json={"name": "CRM", "url": " https://crm.example.com/hooks/lk "})
    assert made.status_code == 201, made.text
    endpoint = await WebhookEndpoint.objects().first()
    assert endpoint.url == "https://crm.example.com/hooks/lk", "surrounding spaces of a pasted URL are dropped"
    assert endpoint.secret.startswith("whsec_") and len(endpoint.secret) > 40, "a secret is made when none is given"
    shown = await client.get(f"{ENDPOINTS_URL}{endpoint.id}/", headers=headers)
    assert endpoint.secret in shown.text, "staff can read the secret to give it to the receiver"

    for url in ("javascript:alert(1)", "http://user:pw@crm.example.com/"):
        patched = await client.patch(f"{ENDPOINTS_URL}{endpoint.id}/", headers=headers, json={"url": url})
        assert patched.status_code == 400, patched.text
    replaced = await client.put(f"{ENDPOINTS_URL}{endpoint.id}/", headers=headers,
                                json={"name": "CRM", "url": "file:///etc/passwd", "secret": "x" * 20, "active": True,
                                      "events": "lead.hot"})
    assert replaced.status_code == 405, "PUT would skip the hooks"
    assert (await WebhookEndpoint.objects().get(WebhookEndpoint.id == endpoint.id)).url == endpoint.url
    renewed = await client.patch(f"{ENDPOINTS_URL}{endpoint.id}/", headers=headers, json={"secret": ""})
    assert renewed.status_code == 200, renewed.text
    secret = (await WebhookEndpoint.objects().get(WebhookEndpoint.id == endpoint.id)).secret
    assert secret.startswith("whsec_") and secret != endpoint.secret, "emptying the secret makes a new one"

    # The delivery log is a record: readable, not writable.
    delivery_id = await one_delivery()
    assert (await client.get(f"/admin/api/tables/webhook_delivery/{delivery_id}/", headers=headers)).status_code == 200
    edited = await client.patch(f"/admin/api/tables/webhook_delivery/{delivery_id}/", headers=headers,
                                json={"status": "delivered"})
    assert edited.status_code == 405 and (await row(delivery_id)).status == WebhookStatus.pending


async def test_a_signed_post_reaches_the_receiver_which_can_verify_body_and_time(receiver) -> None:
    endpoint = await make_endpoint(receiver)
    delivery_id = await one_delivery()
    result = await deliver(delivery_id)
    assert result.status == "delivered", result

    [request] = receiver.requests
    assert request["verified"], "the receiver's check passes with the endpoint's secret"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["content-type"] == "application/json"
    assert headers["x-leadkiln-event"] == "lead.hot" and headers["x-leadkiln-delivery"] == str(delivery_id)
    assert json.loads(request["body"])["lead"]["email"] == "ann@example.com"

    # The signature covers the body and the time: change either and the check fails.
    body, signature = request["body"], request["signature"]
    assert not verify(endpoint.secret, body.replace(b"ann@", b"eve@"), signature)
    sent_at = int(signature.split(",")[0][2:])
    moved = signature.replace(f"t={sent_at}", f"t={sent_at + 1}")
    assert not verify(endpoint.secret, body, moved)
    assert not verify("whsec_someone-elses-secret-0000", body, signature)
    assert not verify(endpoint.secret, body, signature, now=sent_at + 3600), "a replay an hour later is refused"

    stored = await row(delivery_id)
    assert (stored.status, stored.attempts, stored.response_code) == (WebhookStatus.delivered, 1, 200)
    assert stored.delivered_at is not None and stored.response_body == "ok"
    assert "attempt 1: HTTP 200" in stored.history
    assert await deliver(delivery_id) == webhooks.DeliveryResult("already"), "a delivered event is not sent again"
    assert len(receiver.requests) == 1


async def test_a_failing_receiver_is_retried_with_backoff_and_delivered_once(receiver) -> None:
    await make_endpoint(receiver)
    receiver.answers = [(500, "x" * 2000, {}), 200]
    delivery_id = await one_delivery()
    first = await deliver(delivery_id)
    assert first.status == "retry"
    stored = await row(delivery_id)
    assert (stored.status, stored.attempts, stored.response_code) == (WebhookStatus.failed, 1, 500)
    assert stored.response_body == "x" * 500, "the answer is kept up to 500 characters"
    wait = stored.next_attempt_at - datetime.now(timezone.utc)
    assert timedelta(seconds=50) < wait <= timedelta(minutes=1), "the first retry waits a minute"
    assert await due_deliveries() == [] and (await deliver(delivery_id)).status == "already", "not before its time"

    await make_due(delivery_id)
    assert await due_deliveries() == [(delivery_id, 1)]
    assert (await deliver(delivery_id)).status == "delivered"
    stored = await row(delivery_id)
    assert (stored.status, stored.attempts, stored.response_code, stored.error) == (WebhookStatus.delivered, 2, 200, "")
    assert [line.split(": ", 1)[1].split(" (")[0] for line in stored.history.splitlines()] == ["HTTP 500", "HTTP 200"]
    assert len(receiver.requests) == 2 and all(r["verified"] for r in receiver.requests)
    assert {r["headers"]["X-Leadkiln-Delivery"] for r in receiver.requests} == {str(delivery_id)}, \
        "the receiver dedupes a retry by the delivery id"


async def test_a_hanging_receiver_times_out_and_is_tried_again_later(receiver, monkeypatch) -> None:
    monkeypatch.setattr(webhooks, "TOTAL_TIMEOUT", 0.5)
    await make_endpoint(receiver)
    receiver.answers = ["hang"]
    receiver.hang_seconds = 3
    delivery_id = await one_delivery()
    result = await deliver(delivery_id)
    # Gave up after 0.5 s: waiting the receiver's 3 s out would have brought its 200.
    assert result.status == "retry" and result.retry_at > datetime.now(timezone.utc)
    stored = await row(delivery_id)
    assert stored.status == WebhookStatus.failed and stored.error == "no answer within 0.5 s"
    assert stored.response_code is None and "no answer within 0.5 s" in stored.history

    await make_due(delivery_id)
    assert (await deliver(delivery_id)).status == "delivered"
    assert (await row(delivery_id)).attempts == 2


async def test_redirects_are_not_followed_and_unreachable_receivers_are_retried(receiver) -> None:
    endpoint = await make_endpoint(receiver)
    receiver.answers = [(302, "moved", {"Location": "http://127.0.0.1:1/elsewhere"})]
    delivery_id = await one_delivery()
    assert (await deliver(delivery_id)).status == "retry"
    stored = await row(delivery_id)
    assert stored.response_code == 302 and "redirect" in stored.error and "not followed" in stored.error
    assert len(receiver.requests) == 1

    await WebhookEndpoint.update({WebhookEndpoint.active: False}).where(WebhookEndpoint.id == endpoint.id)
    nobody = WebhookEndpoint(name="Gone", url=f"http://127.0.0.1:{_closed_port()}/hook", secret="s" * 20)
    await nobody.save()
    [gone_id] = await record_deliveries("lead.hot", "lead.hot:2", None, {"id": "lead.hot:2"}, datetime.now(timezone.utc))
    assert (await row(gone_id)).endpoint == nobody.id
    assert (await deliver(gone_id)).status == "retry"
    assert "ConnectError" in (await row(gone_id)).error


def _closed_port() -> int:
    from server.embedded import free_port

    return free_port()


async def test_a_url_or_endpoint_changed_behind_the_admins_back_is_checked_again_at_send_time(receiver) -> None:
    endpoint = await make_endpoint(receiver)
    delivery_id = await one_delivery()
    await WebhookEndpoint.update({WebhookEndpoint.url: "file:///etc/passwd"}).where(WebhookEndpoint.id == endpoint.id)
    result = await deliver(delivery_id)
    assert result.status == "gave_up" and "http://" in result.detail
    assert (await row(delivery_id)).status == WebhookStatus.gave_up and receiver.requests == []

    await WebhookEndpoint.update({WebhookEndpoint.url: receiver.url, WebhookEndpoint.active: False}).where(
        WebhookEndpoint.id == endpoint.id)
    assert await record_deliveries("lead.hot", "lead.hot:9", None, {}, datetime.now(timezone.utc)) == [], \
        "a switched-off endpoint gets no new deliveries"


async def test_two_workers_never_post_one_attempt_at_once_and_a_dead_workers_claim_lapses(receiver) -> None:
    await make_endpoint(receiver)
    receiver.answers = ["hang"]
    receiver.hang_seconds = 0.3
    delivery_id = await one_delivery()
    results = await asyncio.gather(deliver(delivery_id), deliver(delivery_id))
    assert sorted(r.status for r in results) == ["already", "delivered"]
    assert len(receiver.requests) == 1

    # A worker that died mid-request left the row `sending`: once its claim lapses, it is sent again.
    stuck_id = await one_delivery("lead.hot:7")
    await WebhookDelivery.update({WebhookDelivery.status: WebhookStatus.sending, WebhookDelivery.attempts: 1,
                                  WebhookDelivery.next_attempt_at: datetime.now(timezone.utc) + timedelta(seconds=30)}).where(
        WebhookDelivery.id == stuck_id)
    assert await due_deliveries() == [], "a fresh claim is left alone"
    await make_due(stuck_id)
    assert await due_deliveries() == [(stuck_id, 1)]
    assert (await deliver(stuck_id)).status == "delivered" and (await row(stuck_id)).attempts == 2


async def test_backoff_doubles_up_to_six_hours_and_gives_up_after_the_last_attempt(receiver) -> None:
    assert [webhooks.backoff(n) for n in (1, 2, 3, 4)] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert webhooks.backoff(9) == timedelta(hours=4, minutes=16) and webhooks.backoff(10) == timedelta(hours=6)
    await make_endpoint(receiver)
    delivery_id = await one_delivery()
    refusing = httpx.MockTransport(lambda request: httpx.Response(503, text="maintenance"))
    await WebhookDelivery.update({WebhookDelivery.attempts: webhooks.MAX_ATTEMPTS - 1}).where(WebhookDelivery.id == delivery_id)
    result = await deliver(delivery_id, transport=refusing)
    assert result.status == "gave_up"
    stored = await row(delivery_id)
    assert (stored.status, stored.attempts, stored.response_code) == (WebhookStatus.gave_up, webhooks.MAX_ATTEMPTS, 503)
    assert await due_deliveries() == []
