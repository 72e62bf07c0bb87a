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
carries `Retry-After` (seconds or an HTTP date, capped at 24 h) it raises `RetryAfter` instead, or
for a 429 `RateLimited`: the receiver's group (below) is held that long and the delivery goes back
to it without using an attempt. 3xx
(redirects are not followed) and every other 4xx raise `PermanentError`: retrying cannot help.

Destinations: unless WEBHOOK_ALLOW_PRIVATE_NETWORKS is set, a URL whose host is, or resolves to,
a loopback, private, link-local, CGNAT, multicast, reserved or unspecified address (IPv4, IPv6,
and IPv4 embedded in IPv6) is refused permanently, so a job cannot probe the worker's network or
a cloud metadata endpoint. An IP literal is judged before anything is sent; a name is resolved
when a connection is opened, and the socket connects to the address that was checked (see
http.py), so DNS rebinding between a check and the connect is not possible.

Group: a delivery's group is its destination, host[:port] (`destination`), unless the request
names one; a queue's or the type's group limits then apply per receiver.

Bounds (slow or hostile receivers): the job's deadline bounds the whole request, queueing for a
connection included, not each phase (a receiver trickling a byte a second ends at the deadline,
not never); a 2xx body is read only when it is at most 4 KB (so its connection can be reused),
an error body only for a snippet, each for at most a second, and never decompressed.
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
from typing import TYPE_CHECKING, Annotated, Literal, cast

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, field_validator
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from jobqueue.errors import PermanentError, RateLimited, RetryAfter
from jobqueue.models import Backoff
from jobqueue.registry import Blueprint, JobContext
from jobqueue.settings import Settings

from .http import IPAddress, PoolConfig, shared_client

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

blueprint = Blueprint()

__all__ = ["IPAddress", "check_destination", "checked_addresses", "deliver", "refusal_reason", "resolve"]

USER_AGENT = "jobqueue-webhooks/0.1"
MAX_URL_CHARS = 2048
MAX_HEADERS = 50
MAX_HEADER_VALUE_CHARS = 8192
MAX_ERROR_BODY_CHARS = 500
MAX_OK_BODY_BYTES = 4096  # a 2xx body up to this is read (so the connection is reused), else dropped
BODY_READ_S = 1.0  # reading a snippet or a small 2xx body never takes longer than this
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
# RFC 9110 field-value without obs-text: visible ASCII, with spaces and tabs only between visible
# characters (a receiver strips the outer ones, so they could not arrive anyway). obs-text
# (0x80-0xFF) is refused: a JSON string has no agreed mapping to those octets (httpx encodes
# header values as ASCII and would fail every attempt; receivers differ on Latin-1 or UTF-8), and
# RFC 9110 marks it obsolete. Non-ASCII data belongs in an encoding (percent, base64, RFC 8187).
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20\x09\x21-\x7e]*[\x21-\x7e])?)?")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class DeliveryFailed(Exception):
    """The delivery failed, but a later attempt may succeed: the engine retries it with backoff."""


def _field_value(value: str) -> str:
    if len(value) > MAX_HEADER_VALUE_CHARS:
        raise ValueError(f"a header value may have at most {MAX_HEADER_VALUE_CHARS} characters")
    if not _HEADER_VALUE.fullmatch(value):
        bad = next((i for i, c in enumerate(value) if not " " <= c <= "~" and c != "\t"), None)
        where = f"{value[bad]!r} at position {bad}" if bad is not None else "leading or trailing whitespace"
        raise ValueError(
            "a header value may hold only visible ASCII characters, with spaces and tabs between them "
            f"(RFC 9110 field-value; no CR, LF, NUL, control or non-ASCII characters): {where}"
        )
    return value


# Validated per value, so a refusal's field names the header: `payload.headers.<name>`.
HeaderValue = Annotated[str, AfterValidator(_field_value)]


class WebhookPayload(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        # Shown by the API docs (web/openapi.py) as the example `webhook.deliver` request.
        json_schema_extra={
            "examples": [{"url": "https://example.com/hooks", "event": "order.paid", "data": {"id": 42}}]
        },
    )

    url: str = Field(max_length=MAX_URL_CHARS)
    event: str | None = Field(default=None, max_length=200)
    data: JsonValue = None
    headers: dict[str, HeaderValue] = Field(default_factory=dict, max_length=MAX_HEADERS)
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
        for name in v:
            low = name.lower()
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"invalid header name {name[:100]!r}")
            if low in RESERVED_HEADERS or low.startswith("webhook-"):
                raise ValueError(f"header {name!r} is set by the webhook sender and cannot be overridden")
            if low in seen:
                raise ValueError(f"header {name!r} is given twice")
            seen.add(low)
        return v


def destination(payload: WebhookPayload) -> str:
    """A delivery's default group: its receiver, host[:port] as the URL names it, so limits set
    per group (group_concurrency, group_rate) apply per receiving endpoint, and one slow or
    throttling receiver never holds back another's deliveries."""
    url = httpx.URL(payload.url)
    return f"{url.host}:{url.port}" if url.port is not None else url.host


@blueprint.job(
    "webhook.deliver",
    model=WebhookPayload,
    group=destination,
    # 12 attempts with this backoff span about 2.4 hours (5 s doubling, capped at 1 h), enough to
    # ride out a receiver's deploy or short outage before the job reaches the dead-letter queue.
    max_attempts=12,
    backoff=Backoff(type="exponential", delay_ms=5000, max_delay_ms=3_600_000, jitter=0.2),
    timeout_ms=30_000,
)
async def deliver(payload: WebhookPayload, ctx: JobContext) -> dict[str, int]:
    # A drain starts a whole batch in one turn of the loop; each yield below ends this job's share
    # of a turn, so a batch's validation, slot queueing and request building fall in separate
    # turns rather than one long one (the drain's own Postgres and Redis replies wait behind it).
    await asyncio.sleep(0)
    settings: Settings = ctx.settings if ctx.settings is not None else Settings()
    url = httpx.URL(payload.url)
    host = url.raw_host.decode("ascii")
    guarded = not settings.webhook_allow_private
    if guarded:
        _check_literal(host)  # a name is checked when its connection opens (GuardedBackend)
    config = PoolConfig(settings.webhook_max_connections, settings.webhook_max_per_host, guarded)
    client = shared_client(config, _guard)
    secret = settings.webhook_signing_secret or None

    # The deadline already holds min(job timeout, drain budget left), so this respects both. It
    # bounds the whole request (queueing for a slot included): httpx's own timeout is per phase,
    # so a receiver trickling a byte a second would never trip it.
    loop = asyncio.get_running_loop()
    deadline = ctx.deadline - TIMEOUT_MARGIN_S
    if deadline - loop.time() <= 0:
        raise DeliveryFailed("no time left in the job's timeout to send the request")
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout_at(deadline), client.hold(url):
            await asyncio.sleep(0)  # see the top: the first holders of slots send in a turn of their own
            # Built once a slot is ours, so webhook-timestamp is fresh when the request leaves.
            body, headers = _request(payload, ctx.job_id, secret)
            timeout = httpx.Timeout(max(0.001, deadline - loop.time()))
            async with client.http.stream("POST", url, content=body, headers=headers, timeout=timeout) as resp:
                duration_ms = int((time.perf_counter() - t0) * 1000)
                if 200 <= resp.status_code < 300:
                    await _read_small_body(resp)
                    return {"status_code": resp.status_code, "duration_ms": duration_ms}
                snippet = await _error_snippet(resp, secret)
    except TimeoutError:
        waited = int((time.perf_counter() - t0) * 1000)
        raise DeliveryFailed(f"no complete response from {host} within the job's timeout ({waited} ms)") from None
    except httpx.RequestError as e:
        raise DeliveryFailed(f"{type(e).__name__} delivering to {host}: {str(e)[:200]}") from e
    raise _classify(resp, snippet)


def _request(payload: WebhookPayload, job_id: int, secret: str | None) -> tuple[bytes, httpx.Headers]:
    msg_id = f"msg_{job_id}"  # stable across attempts: the receiver's deduplication key
    now = datetime.fromtimestamp(int(time.time()), UTC)  # wall clock: receivers compare it to theirs
    document = (
        payload.data
        if payload.body == "data"
        else {"type": payload.event, "data": payload.data, "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
    )
    body = json.dumps(document, separators=(",", ":"))
    # identity: bodies are read raw and never decompressed (no decompression bomb in a snippet).
    headers = httpx.Headers({"user-agent": USER_AGENT, "accept-encoding": "identity"})
    headers.update(payload.headers)  # case-insensitive: a caller's User-Agent replaces ours
    headers["content-type"] = "application/json"
    headers["webhook-id"] = msg_id
    headers["webhook-timestamp"] = str(int(now.timestamp()))
    if secret:
        headers["webhook-signature"] = _sign(secret, msg_id, now, body)
    return body.encode(), headers


async def _guard(host: str, port: int) -> list[IPAddress]:
    # Looked up at call time, so tests can replace `checked_addresses` or `resolve`.
    return await checked_addresses(host, port)


async def check_destination(url: httpx.URL) -> None:
    """Refuse (PermanentError) a host that is, or resolves to, a non-public address."""
    await checked_addresses(url.raw_host.decode("ascii"), url.port or (443 if url.scheme == "https" else 80))


async def checked_addresses(host: str, port: int) -> list[IPAddress]:
    """Every address of host (IDNA-encoded; IPv6 without brackets), each one public, or raise:
    PermanentError naming the first non-public one, DeliveryFailed when nothing resolves (a DNS
    hiccup may pass, so that one retries). The connection then uses only these addresses."""
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await resolve(host, port)
        except OSError as e:  # socket.gaierror
            raise DeliveryFailed(f"could not resolve {host}: {e}") from e
    if not addresses:
        raise DeliveryFailed(f"{host} resolved to no address")
    for ip in addresses:  # every one must pass: the connection may use any of them
        _refuse(host, ip)
    return addresses


def _check_literal(host: str) -> None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return
    _refuse(host, ip)


def _refuse(host: str, ip: IPAddress) -> None:
    reason = refusal_reason(ip)
    if reason:
        raise PermanentError(
            f"refusing to deliver to {host}: {ip} is a {reason} address "
            "(set WEBHOOK_ALLOW_PRIVATE_NETWORKS=1 to allow private destinations)"
        )


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address (A and AAAA) for host, through the loop's resolver so the drain never blocks."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


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
        if delay_ms is not None and status == 429:
            # "Too many requests, come back then": the receiver's whole group waits that long,
            # and this delivery goes back to it without using an attempt.
            return RateLimited(delay_ms, f"{detail} (Retry-After: {delay_ms} ms)")
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


async def _read_raw(resp: httpx.Response, limit: int) -> bytes:
    """Up to about `limit` raw bytes of the body (one chunk may overshoot by up to 64 KB), for at
    most BODY_READ_S; stops early at the end of the body. Never raises: the status is known."""
    raw = b""
    try:
        async with asyncio.timeout(BODY_READ_S):
            # aclosing: leaving the loop early must close the generator now, not at garbage collection.
            async with aclosing(cast("AsyncGenerator[bytes, None]", resp.aiter_raw())) as chunks:
                async for chunk in chunks:
                    raw += chunk
                    if len(raw) >= limit:
                        break
    except (TimeoutError, httpx.HTTPError):
        pass
    return raw


async def _read_small_body(resp: httpx.Response) -> None:
    """Read a small 2xx body to its end, so the connection goes back to the pool; anything larger
    (declared or not) is left unread, and closing the response drops its connection."""
    declared = resp.headers.get("content-length", "0")
    if declared.isdigit() and int(declared) <= MAX_OK_BODY_BYTES:
        await _read_raw(resp, MAX_OK_BODY_BYTES + 1)


async def _error_snippet(resp: httpx.Response, secret: str | None) -> str:
    """The start of an error body, whitespace collapsed: never more than a few KB is read."""
    raw = await _read_raw(resp, MAX_ERROR_BODY_CHARS * 4)
    text = " ".join(raw[: MAX_ERROR_BODY_CHARS * 4].decode("utf-8", "replace").split())
    if secret:  # a receiver that echoes its configuration must not put the secret in our error
        for s in (secret, secret.removeprefix("whsec_")):
            text = text.replace(s, "[redacted]")
    return text[:MAX_ERROR_BODY_CHARS]
