"""`webhook.deliver`: POST a signed JSON event to a URL, following Standard Webhooks.

Payload (`WebhookPayload`): `url` (http/https), optional `event`, `data` (any JSON), `headers`,
and `body`: "envelope" (default) or "data".

The request is `POST url` with a compact JSON body (UTF-8, ASCII-escaped); with the default
`body: "envelope"`:

    {"type": <event or null>, "data": <data>, "timestamp": "2024-05-01T12:00:00Z"}

With `body: "data"` the body is `data` itself, for receivers that define their own shape (a Slack
incoming webhook wants `{"text": ...}` at the top); the headers and signature are the same.

`timestamp` is the time of this attempt (the same second as `webhook-timestamp`): the job does not
know when the event happened, only when it is being sent. Headers:

- `webhook-id: msg_<job id>`: the same on every attempt, so receivers can drop duplicates
  (delivery is at-least-once; a retry after a lost 2xx sends the message again).
- `webhook-timestamp`: unix seconds of this attempt; receivers refuse old ones, so it is fresh on
  each retry and the signature is recomputed.
- `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` with the `whsec_...`
  secret in WEBHOOK_SIGNING_SECRET. With no secret configured the request goes out unsigned (no
  `webhook-signature` header): convenient in development, and receivers should refuse it in
  production.
- `content-type: application/json`, `user-agent: jobqueue-webhooks/0.1` (the latter may be
  overridden through `headers`), then the caller's `headers`.

Outcomes: 2xx completes with `{"status_code", "duration_ms"}`. 408, 429, 5xx, timeouts, connection
and DNS errors raise `DeliveryFailed`, which the engine retries with backoff; when such a response
carries `Retry-After` (seconds or an HTTP date, capped at 24 h) it raises `RetryAfter` instead. 3xx
(redirects are not followed) and every other 4xx raise `PermanentError`: retrying cannot help.

Destinations: unless WEBHOOK_ALLOW_PRIVATE_NETWORKS is set, a URL whose host is, or resolves to,
a loopback, private, link-local, CGNAT, multicast, reserved or unspecified address (IPv4, IPv6,
and IPv4 embedded in IPv6) is refused permanently, so a job cannot probe the worker's network or
a cloud metadata endpoint.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import time
from contextlib import aclosing
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Literal, TypeAlias, cast

import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from jobqueue.errors import PermanentError, RetryAfter
from jobqueue.models import Backoff
from jobqueue.registry import Blueprint, JobContext
from jobqueue.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

blueprint = Blueprint()

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

USER_AGENT = "jobqueue-webhooks/0.1"
MAX_URL_CHARS = 2048
MAX_HEADERS = 50
MAX_HEADER_VALUE_CHARS = 8192
MAX_ERROR_BODY_CHARS = 500
MAX_RETRY_AFTER_MS = 24 * 3600 * 1000
# Keep the request's own timeout just inside the drain's wait_for, so a slow receiver ends as a
# clean httpx timeout ("ReadTimeout delivering to ...") rather than a bare cancellation.
TIMEOUT_MARGIN_S = 0.05
RETRYABLE_4XX = frozenset({408, 429})
# Owned by the HTTP framing (a caller's value would corrupt the request or smuggle a second one)
# or by this module (content-type matches the body; webhook-* are the signature scheme's, and a
# caller-set one could pass off an unsigned message as signed).
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "keep-alive", "te"}
    | {"trailer", "upgrade", "expect", "proxy-connection", "proxy-authorization"}
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # an RFC 9110 token
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class DeliveryFailed(Exception):
    """The delivery failed, but a later attempt may succeed: the engine retries it with backoff."""


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL_CHARS)
    event: str | None = Field(default=None, max_length=200)
    data: JsonValue = None
    headers: dict[str, str] = Field(default_factory=dict, max_length=MAX_HEADERS)
    body: Literal["envelope", "data"] = "envelope"

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        try:
            u = httpx.URL(v)
        except (httpx.InvalidURL, ValueError, TypeError) as e:
            raise ValueError(f"not a valid URL: {e}") from None
        if u.scheme not in ("http", "https"):
            raise ValueError("only http and https URLs can receive webhooks")
        if not u.raw_host:
            raise ValueError("the URL has no host")
        return v

    @field_validator("headers")
    @classmethod
    def _allowed_headers(cls, v: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, value in v.items():
            low = name.lower()
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"invalid header name {name[:100]!r}")
            if low in RESERVED_HEADERS or low.startswith("webhook-"):
                raise ValueError(f"header {name!r} is set by the webhook sender and cannot be overridden")
            if low in seen:
                raise ValueError(f"header {name!r} is given twice")
            if len(value) > MAX_HEADER_VALUE_CHARS or any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has a value that is too long or contains CR, LF or NUL")
            seen.add(low)
        return v


@blueprint.job(
    "webhook.deliver",
    model=WebhookPayload,
    # 12 attempts with this backoff span about 2.4 hours (5 s doubling, capped at 1 h), enough to
    # ride out a receiver's deploy or short outage before the job reaches the dead-letter queue.
    max_attempts=12,
    backoff=Backoff(type="exponential", delay_ms=5000, max_delay_ms=3_600_000, jitter=0.2),
    timeout_ms=30_000,
)
async def deliver(payload: WebhookPayload, ctx: JobContext) -> dict[str, int]:
    settings: Settings = ctx.settings if ctx.settings is not None else Settings()
    url = httpx.URL(payload.url)
    host = url.raw_host.decode("ascii")
    if not settings.webhook_allow_private:
        await check_destination(url)

    msg_id = f"msg_{ctx.job_id}"  # stable across attempts: the receiver's deduplication key
    now = datetime.fromtimestamp(int(time.time()), UTC)  # wall clock: receivers compare it to theirs
    document = (
        payload.data
        if payload.body == "data"
        else {"type": payload.event, "data": payload.data, "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
    )
    body = json.dumps(document, separators=(",", ":"))
    headers = httpx.Headers({"user-agent": USER_AGENT})
    headers.update(payload.headers)  # case-insensitive: a caller's User-Agent replaces ours
    headers["content-type"] = "application/json"
    headers["webhook-id"] = msg_id
    headers["webhook-timestamp"] = str(int(now.timestamp()))
    secret = settings.webhook_signing_secret or None
    if secret:
        headers["webhook-signature"] = _sign(secret, msg_id, now, body)

    # The deadline already holds min(job timeout, drain budget left), so this respects both.
    # httpx applies it per phase (connect, write, read); the drain's wait_for bounds the total.
    left = ctx.deadline - asyncio.get_running_loop().time() - TIMEOUT_MARGIN_S
    if left <= 0:
        raise DeliveryFailed("no time left in the job's timeout to send the request")
    t0 = time.perf_counter()
    try:
        # One client per call: no module-level state, and no connection reuse across receivers.
        # trust_env=False: no proxy from the environment (the address check must describe the
        # real peer) and no .netrc credentials sent to arbitrary hosts.
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(left), follow_redirects=False, trust_env=False) as client,
            client.stream("POST", url, content=body.encode(), headers=headers) as resp,
        ):
            duration_ms = int((time.perf_counter() - t0) * 1000)
            if 200 <= resp.status_code < 300:
                return {"status_code": resp.status_code, "duration_ms": duration_ms}
            snippet = await _error_snippet(resp, secret)
    except httpx.RequestError as e:
        raise DeliveryFailed(f"{type(e).__name__} delivering to {host}: {str(e)[:200]}") from e
    raise _classify(resp, snippet)


async def check_destination(url: httpx.URL) -> None:
    """Refuse (PermanentError) a host that is, or resolves to, a non-public address."""
    host = url.raw_host.decode("ascii")  # IDNA-encoded; IPv6 literals without brackets
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await resolve(host, url.port or (443 if url.scheme == "https" else 80))
        except OSError as e:  # socket.gaierror: may be a DNS hiccup, so retry
            raise DeliveryFailed(f"could not resolve {host}: {e}") from e
    if not addresses:
        raise DeliveryFailed(f"{host} resolved to no address")
    # Every address must pass, since the connection may use any of them. Known gap: DNS
    # rebinding, as httpx resolves again when it connects and a hostile resolver can answer
    # differently. Closing it means connecting to the checked address with Host/SNI set to the
    # name, which httpx does not offer cheaply; a network-level egress policy is the real fix.
    for ip in addresses:
        reason = refusal_reason(ip)
        if reason:
            raise PermanentError(
                f"refusing to deliver to {host}: {ip} is a {reason} address "
                "(set WEBHOOK_ALLOW_PRIVATE_NETWORKS=1 to allow private destinations)"
            )


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address (A and AAAA) for host, through the loop's resolver so the drain never blocks."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ip is not a public destination, or None when it is one."""
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address: judge the IPv4 one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal_reason(embedded)
        if ip.is_site_local:
            return "site-local"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT (100.64.0.0/10)"
    # Order matters only for the message: 127.0.0.1 is also "private" in ipaddress's tables.
    for label, hit in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),  # is_global says True for 224.0.0.0/4
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),  # includes IPv6 ULA fc00::/7
        ("non-global", not ip.is_global),
    ):
        if hit:
            return label
    return None


def _sign(secret: str, msg_id: str, timestamp: datetime, body: str) -> str:
    try:
        return str(Webhook(secret).sign(msg_id, timestamp, body))
    except (ValueError, EmptyWebhookSecretError):  # binascii.Error is a ValueError
        # `from None`: the decoder's message must not drag any part of the secret into the job.
        raise PermanentError("WEBHOOK_SIGNING_SECRET is not a valid whsec_<base64> secret") from None


def _classify(resp: httpx.Response, snippet: str) -> Exception:
    status = resp.status_code
    detail = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if 300 <= status < 400:
        location = resp.headers.get("location", "")[:200]
        return PermanentError(
            f"HTTP {status}: redirects are not followed, point the webhook at the final URL"
            + (f" (Location: {location})" if location else "")
        )
    if status in RETRYABLE_4XX or status >= 500:
        delay_ms = retry_after_ms(resp.headers.get("retry-after"), time.time())
        if delay_ms is not None:
            return RetryAfter(delay_ms, f"{detail} (Retry-After: {delay_ms} ms)")
        return DeliveryFailed(detail)
    if 400 <= status < 500:
        return PermanentError(detail)
    return DeliveryFailed(detail)  # 1xx as final status: a broken proxy, perhaps passing


def retry_after_ms(value: str | None, now_s: float) -> int | None:
    """Retry-After (delay-seconds or an HTTP date, RFC 9110 10.2.3) in ms, capped; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,12}", value):
        ms = int(value) * 1000
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        ms = int((when.timestamp() - now_s) * 1000)
    return min(max(ms, 0), MAX_RETRY_AFTER_MS)


async def _error_snippet(resp: httpx.Response, secret: str | None) -> str:
    """The start of an error body, whitespace collapsed: never more than a few KB is read."""
    raw = b""
    try:
        # aclosing: leaving the loop early must close the generator now, not at garbage collection.
        async with aclosing(cast("AsyncGenerator[bytes, None]", resp.aiter_bytes())) as chunks:
            async for chunk in chunks:
                raw += chunk
                if len(raw) >= MAX_ERROR_BODY_CHARS * 4:
                    break
    except httpx.HTTPError:
        pass  # the status alone still classifies the failure
    text = " ".join(raw[: MAX_ERROR_BODY_CHARS * 4].decode("utf-8", "replace").split())
    if secret:  # a receiver that echoes its configuration must not put the secret in our error
        for s in (secret, secret.removeprefix("whsec_")):
            text = text.replace(s, "[redacted]")
    return text[:MAX_ERROR_BODY_CHARS]
