"""CRM webhooks: HMAC-signed JSON POSTs to http(s) endpoints, retried with backoff, each attempt logged.

Delivery is at least once: a receiver dedupes by `X-Leadkiln-Delivery`. A request is signed
Stripe-style, `X-Leadkiln-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with
the endpoint's secret, so a receiver can check the body and refuse a replayed request (`verify`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
from piccolo.columns.defaults.base import Default
from starlette.exceptions import HTTPException

from admin.tables import WebhookDelivery, WebhookEndpoint, WebhookStatus

log = logging.getLogger("leadkiln.webhooks")

EVENTS = ("lead.hot",)
"""What an endpoint can be sent."""
CONNECT_TIMEOUT = 5.0
TOTAL_TIMEOUT = 10.0
"""Seconds for a whole request, answer included: a receiver that hangs is an attempt that failed."""
BODY_CAP = 500
"""Characters of the receiver's answer kept in the log (and bytes read beyond it: none)."""
MAX_ATTEMPTS = 10
FIRST_RETRY = timedelta(minutes=1)
LONGEST_WAIT = timedelta(hours=6)
CLAIM_TIMEOUT = timedelta(seconds=60)
"""A delivery still `sending` this long after its claim belongs to a dead worker and is sent
again (a POST is safe to repeat: the receiver dedupes). Well above TOTAL_TIMEOUT."""
HISTORY_LINES = 20
USER_AGENT = "leadkiln-webhooks/1"


# Checks


def url_problem(url: str) -> str | None:
    """Why a webhook URL cannot be used, or None: http(s) with a host, no user:password@, no
    spaces or control characters. (Private addresses are not refused: see the README.)"""
    if not url:
        return "The URL is empty."
    if len(url) > 2000:
        return "The URL is longer than 2000 characters."
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in url):
        return "The URL contains spaces or control characters."
    if "\\" in url:
        return "The URL contains a backslash."
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        return f"The URL cannot be read: {exc}."
    if parts.scheme.lower() not in ("http", "https"):
        return f"Only http:// and https:// URLs are allowed, not {parts.scheme or 'a URL without a scheme'}:."
    if "@" in parts.netloc:
        return "The URL must not carry a user name or password (user:password@): the secret signs the request."
    host = parts.hostname or ""
    if not host:
        return "The URL names no host."
    if not host.startswith("[") and ":" not in host:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return f"The host {host!r} is not a valid name."
        if not all(ch.isalnum() or ch in ".-_" for ch in ascii_host):
            return f"The host {host!r} is not a valid name."
    return None


def events_problem(value: str) -> str | None:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        return f"Choose what to send: {', '.join(EVENTS)}."
    unknown = [name for name in names if name not in EVENTS]
    if unknown:
        return f"Unknown events {', '.join(unknown)}: choose from {', '.join(EVENTS)}."
    return None


def subscribes(events: str, event: str) -> bool:
    return event in {name.strip() for name in events.split(",")}


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


# Signatures


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Leadkiln-Signature value for a body sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, now: float | None = None, tolerance: int = 300) -> bool:
    """What a receiver does: the signature matches the body and its time, and the time is
    within `tolerance` seconds of now (an old request replayed is refused)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 1 min, 2, 4 … at most 6 h."""
    return min(FIRST_RETRY * 2 ** max(attempts - 1, 0), LONGEST_WAIT)


# Admin hooks


def _refuse_if(problem: str | None) -> None:
    if problem:
        raise HTTPException(status_code=400, detail=problem)


def _secret_problem(secret: str) -> str | None:
    if len(secret) < 16 or any(ch.isspace() or not ch.isprintable() for ch in secret):
        return "The secret needs at least 16 characters and no spaces (leave it empty to have one made)."
    return None


def guard_endpoint_save(row: WebhookEndpoint) -> WebhookEndpoint:
    """Table hook: a new endpoint has a usable URL and events, and a secret (made if empty)."""
    for column in row._meta.columns:
        # The admin's API passes a field left out as None: the column's default, not NULL.
        if getattr(row, column._meta.name) is None and not column._meta.null and not column._meta.primary_key:
            default = column.get_default_value()
            setattr(row, column._meta.name, default.python() if isinstance(default, Default) else default)
    row.url = (row.url or "").strip()
    _refuse_if(url_problem(row.url))
    _refuse_if(events_problem(row.events or ""))
    row.secret = (row.secret or "").strip() or new_secret()
    _refuse_if(_secret_problem(row.secret))
    return row


def guard_endpoint_patch(row_id: Any, values: dict[Any, Any]) -> dict[Any, Any]:
    """Table hook: an edit keeps the URL, events and secret usable; an emptied secret is remade."""
    out = dict(values)
    for key, value in values.items():
        # piccolo-admin keys the new values by column object.
        name = key if isinstance(key, str) else key._meta.name
        if name == "url":
            out[key] = str(value or "").strip()
            _refuse_if(url_problem(out[key]))
        elif name == "events":
            _refuse_if(events_problem(str(value or "")))
        elif name == "secret":
            out[key] = str(value or "").strip() or new_secret()
            _refuse_if(_secret_problem(out[key]))
    return out


def refuse_put(piccolo_crud: Any, request: Any) -> None:
    """Validator: PUT replaces a row without the table hooks, so endpoints are edited by PATCH."""
    raise HTTPException(status_code=405, detail="Edit an endpoint with PATCH (the admin's form does).")


# Deliveries


async def record_deliveries(event: str, event_key: str, lead_id: int | None, payload: dict[str, Any],
                            now: datetime) -> list[int]:
    """One pending delivery per active endpoint that takes `event` (inside the caller's
    transaction); none twice for one endpoint and key. Returns the new deliveries' ids."""
    endpoints = await WebhookEndpoint.select(WebhookEndpoint.id, WebhookEndpoint.events).where(
        WebhookEndpoint.active == True)  # noqa: E712
    created: list[int] = []
    for endpoint in endpoints:
        if not subscribes(endpoint["events"], event):
            continue
        rows = await WebhookDelivery.insert(WebhookDelivery(
            endpoint=endpoint["id"], event=event, event_key=event_key[:120], lead=lead_id, payload=payload,
            status=WebhookStatus.pending, created_at=now, next_attempt_at=now,
        )).on_conflict(target=(WebhookDelivery.endpoint, WebhookDelivery.event_key), action="DO NOTHING").returning(
            WebhookDelivery.id)
        created += [row["id"] for row in rows]
    return created


async def due_deliveries(now: datetime | None = None, limit: int = 1000) -> list[tuple[int, int]]:
    """(id, attempts) of deliveries to attempt now: new ones, failed ones whose wait is over,
    and ones whose worker died mid-request. A dead worker's last attempt is given up."""
    now = now or datetime.now(timezone.utc)
    await WebhookDelivery.update({WebhookDelivery.status: WebhookStatus.gave_up,
                                  WebhookDelivery.error: "the worker died during the last attempt"}).where(
        (WebhookDelivery.status == WebhookStatus.sending) & (WebhookDelivery.next_attempt_at <= now)
        & (WebhookDelivery.attempts >= MAX_ATTEMPTS))
    rows = await WebhookDelivery.select(WebhookDelivery.id, WebhookDelivery.attempts).where(
        WebhookDelivery.status.is_in([WebhookStatus.pending, WebhookStatus.failed, WebhookStatus.sending])
        & (WebhookDelivery.next_attempt_at <= now) & (WebhookDelivery.attempts < MAX_ATTEMPTS)
    ).order_by(WebhookDelivery.next_attempt_at).limit(limit)
    return [(row["id"], row["attempts"]) for row in rows]


def delivery_job_id(delivery_id: int, attempts: int) -> str:
    return f"webhook:{delivery_id}:{attempts}"


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: a status code and the answer's start, or an error."""

    delivered: bool
    code: int | None = None
    body: str = ""
    error: str = ""
    seconds: float = 0.0

    def line(self, at: datetime, number: int) -> str:
        outcome = f"HTTP {self.code}" if self.code is not None else self.error
        return f"{at:%Y-%m-%d %H:%M:%S}Z attempt {number}: {outcome} ({self.seconds:.2f} s)"[:300]


async def post(url: str, secret: str, event: str, delivery_id: int, payload: dict[str, Any],
               transport: httpx.AsyncBaseTransport | None = None) -> Attempt:
    """POST the payload once, signed now; never follows a redirect, never waits past TOTAL_TIMEOUT."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        # The answer is only logged: uncompressed, so reading BODY_CAP of it costs no more.
        "Accept-Encoding": "identity",
        "X-Leadkiln-Event": event,
        "X-Leadkiln-Delivery": str(delivery_id),
        "X-Leadkiln-Signature": sign(secret, body, int(time.time())),
    }
    started = time.perf_counter()
    # trust_env=False: no proxy or .netrc credentials from the worker's environment.
    client = httpx.AsyncClient(timeout=httpx.Timeout(TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT), follow_redirects=False,
                               trust_env=False, transport=transport)
    try:
        async with client, asyncio.timeout(TOTAL_TIMEOUT):
            async with client.stream("POST", url, content=body, headers=headers) as response:
                answer = b""
                async for chunk in response.aiter_bytes():
                    answer += chunk
                    if len(answer) >= BODY_CAP * 4:  # enough bytes for BODY_CAP characters
                        break
                text = answer.decode("utf-8", errors="replace")[:BODY_CAP]
                code = response.status_code
    except (TimeoutError, httpx.TimeoutException):
        return Attempt(False, error=f"no answer within {TOTAL_TIMEOUT:g} s", seconds=time.perf_counter() - started)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return Attempt(False, error=f"{type(exc).__name__}: {exc}"[:500], seconds=time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - anything else is a failed attempt, logged and retried
        log.exception("webhook POST to %s failed unexpectedly", url)
        return Attempt(False, error=f"{type(exc).__name__}: {exc}"[:500], seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    if 200 <= code < 300:
        return Attempt(True, code, text, seconds=seconds)
    error = f"HTTP {code}"
    if 300 <= code < 400:
        error += f": a redirect (to {response.headers.get('location', '?')[:200]}), not followed; fix the URL"
    return Attempt(False, code, text, error=error, seconds=seconds)


@dataclass(frozen=True)
class DeliveryResult:
    status: str
    detail: str = ""
    retry_at: datetime | None = None


async def _claim(delivery_id: int, now: datetime) -> dict[str, Any] | None:
    rows = await WebhookDelivery.update({
        WebhookDelivery.status: WebhookStatus.sending,
        WebhookDelivery.attempts: WebhookDelivery.attempts + 1,
        # While sending, next_attempt_at is when the claim lapses (a dead worker's is retried).
        WebhookDelivery.next_attempt_at: now + CLAIM_TIMEOUT,
    }).where(
        (WebhookDelivery.id == delivery_id)
        & WebhookDelivery.status.is_in([WebhookStatus.pending, WebhookStatus.failed, WebhookStatus.sending])
        & (WebhookDelivery.next_attempt_at <= now)
        & (WebhookDelivery.attempts < MAX_ATTEMPTS)
    ).returning(WebhookDelivery.id)
    if not rows:
        return None
    return await WebhookDelivery.select(
        WebhookDelivery.all_columns(),
        WebhookDelivery.endpoint.url.as_alias("url"),
        WebhookDelivery.endpoint.secret.as_alias("secret"),
        WebhookDelivery.endpoint.active.as_alias("endpoint_active"),
        WebhookDelivery.lead.erased_at.as_alias("lead_erased_at"),
    ).where(WebhookDelivery.id == delivery_id).output(load_json=True).first()


async def _finish(delivery: dict[str, Any], values: dict[Any, Any]) -> None:
    # Only while this claim holds: a claim that lapsed and was taken again is not overwritten.
    await WebhookDelivery.update(values).where(
        (WebhookDelivery.id == delivery["id"]) & (WebhookDelivery.attempts == delivery["attempts"])
        & (WebhookDelivery.status == WebhookStatus.sending))


def _history(delivery: dict[str, Any], line: str) -> str:
    lines = (delivery["history"] or "").splitlines() + [line]
    return "\n".join(lines[-HISTORY_LINES:]) + "\n"


async def deliver(delivery_id: int, now: datetime | None = None,
                  transport: httpx.AsyncBaseTransport | None = None) -> DeliveryResult:
    """Attempt one delivery: claimed first, so two workers never post one attempt at once."""
    now = now or datetime.now(timezone.utc)
    delivery = await _claim(delivery_id, now)
    if delivery is None:
        return DeliveryResult("already")
    reason = None
    if not delivery["endpoint_active"]:
        reason = "the endpoint was switched off"
    elif delivery["lead_erased_at"] is not None:
        reason = "the lead was erased"
    else:
        reason = url_problem(delivery["url"] or "")
    if reason:
        await _finish(delivery, {WebhookDelivery.status: WebhookStatus.gave_up, WebhookDelivery.error: reason[:500],
                                 WebhookDelivery.history: _history(delivery, f"{now:%Y-%m-%d %H:%M:%S}Z not sent: {reason}")})
        return DeliveryResult("gave_up", reason)
    try:
        attempt = await post(delivery["url"], delivery["secret"], delivery["event"], delivery["id"], delivery["payload"],
                             transport)
    except asyncio.CancelledError:
        # The job was cancelled (a worker shutting down): tried again soon, the receiver dedupes.
        await asyncio.shield(_finish(delivery, {WebhookDelivery.status: WebhookStatus.failed,
                                                WebhookDelivery.error: "cancelled: the worker stopped",
                                                WebhookDelivery.next_attempt_at: now}))
        raise
    finished = datetime.now(timezone.utc)
    values: dict[Any, Any] = {
        WebhookDelivery.response_code: attempt.code,
        WebhookDelivery.response_body: attempt.body,
        WebhookDelivery.error: attempt.error,
        WebhookDelivery.history: _history(delivery, attempt.line(now, delivery["attempts"])),
    }
    if attempt.delivered:
        await _finish(delivery, values | {WebhookDelivery.status: WebhookStatus.delivered,
                                          WebhookDelivery.delivered_at: finished})
        return DeliveryResult("delivered", f"HTTP {attempt.code}")
    if delivery["attempts"] >= MAX_ATTEMPTS:
        await _finish(delivery, values | {WebhookDelivery.status: WebhookStatus.gave_up})
        log.error("webhook delivery %s: gave up after %d attempts: %s", delivery["id"], delivery["attempts"], attempt.error)
        return DeliveryResult("gave_up", attempt.error)
    retry_at = finished + backoff(delivery["attempts"])
    await _finish(delivery, values | {WebhookDelivery.status: WebhookStatus.failed,
                                      WebhookDelivery.next_attempt_at: retry_at})
    return DeliveryResult("retry", attempt.error, retry_at)

