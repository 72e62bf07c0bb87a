"""webhook.deliver: payload validation, signing, outcome classification, SSRF refusals, and two runs
through the real engine.

respx stands in for every receiver (it refuses any request without a route, so nothing reaches
the network, and respx intercepts below the client, before any name is resolved: the connect-time
checks and real sockets are tested in test_webhook_network.py). The engine tests use
the redis-py transport, so respx never sees the Upstash transport's own httpx traffic.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from jobqueue.builtins import default_registry, webhook
from jobqueue.builtins.webhook import DeliveryFailed, WebhookPayload, deliver
from jobqueue.clock import FakeClock, to_ms
from jobqueue.engine import JobQueue
from jobqueue.errors import InvalidJob, PermanentError, RateLimited, RetryAfter
from jobqueue.registry import JobContext
from jobqueue.settings import Settings

SECRET = "whsec_" + base64.b64encode(b"test-signing-key-32-bytes-long!!").decode()
TARGET = "https://hooks.example.com/in"
PUBLIC_IP = ipaddress.ip_address("93.184.216.34")


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every name resolves to a public address; returns the names looked up."""
    looked_up: list[str] = []

    async def fake_resolve(host: str, port: int) -> list[webhook.IPAddress]:
        looked_up.append(host)
        return [PUBLIC_IP]

    monkeypatch.setattr(webhook, "resolve", fake_resolve)
    return looked_up


def make_ctx(*, job_id: int = 42, attempt: int = 1, settings: Settings | None = None, left_s: float = 10) -> JobContext:
    async def enqueue(req: Any) -> Any:
        raise AssertionError("webhook.deliver enqueues nothing")

    return JobContext(
        job_id=job_id,
        type="webhook.deliver",
        queue="default",
        attempt=attempt,
        max_attempts=12,
        deadline=asyncio.get_running_loop().time() + left_s,
        enqueue=enqueue,
        settings=settings if settings is not None else Settings(WEBHOOK_SIGNING_SECRET=SECRET),
    )


async def run(url: str = TARGET, ctx: JobContext | None = None, **payload: Any) -> dict[str, int]:
    return await deliver(WebhookPayload.model_validate({"url": url, **payload}), ctx or make_ctx())


# --- the payload model (what enqueue refuses) ---------------------------------------------------


def _validate(payload: dict[str, Any]) -> None:
    default_registry().get("webhook.deliver").validate(payload)


def test_registered_with_webhook_defaults() -> None:
    jt = default_registry().get("webhook.deliver")
    assert (jt.max_attempts, jt.timeout_ms, jt.queue) == (12, 30_000, "default")
    assert (jt.backoff.type, jt.backoff.delay_ms, jt.backoff.max_delay_ms, jt.backoff.jitter) == (
        "exponential",
        5000,
        3_600_000,
        0.2,
    )


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ({"url": "ftp://files.example.com/x"}, "payload.url", "only http and https"),
        ({"url": "/relative/path"}, "payload.url", "only http and https"),
        ({"url": "https://"}, "payload.url", ""),
        ({"url": "https://example.com/" + "a" * 2048}, "payload.url", "at most 2048"),
        ({"url": TARGET, "event": "e" * 201}, "payload.event", "at most 200"),
        ({"url": TARGET, "method": "GET"}, "payload.method", "Extra inputs"),
        ({"url": TARGET, "headers": {"Host": "internal"}}, "payload.headers", "cannot be overridden"),
        ({"url": TARGET, "headers": {"content-length": "0"}}, "payload.headers", "cannot be overridden"),
        ({"url": TARGET, "headers": {"Transfer-Encoding": "chunked"}}, "payload.headers", "cannot be overridden"),
        ({"url": TARGET, "headers": {"Connection": "close"}}, "payload.headers", "cannot be overridden"),
        ({"url": TARGET, "headers": {"Webhook-Signature": "v1,forged"}}, "payload.headers", "cannot be overridden"),
        ({"url": TARGET, "headers": {"webhook-id": "msg_1"}}, "payload.headers", "cannot be overridden"),
        ({"url": TARGET, "headers": {"X-A": "1\r\nX-Injected: 1"}}, "payload.headers.X-A", "no CR, LF"),
        ({"url": TARGET, "headers": {"bad name": "1"}}, "payload.headers", "invalid header name"),
        ({"url": TARGET, "headers": {"X-A": "1", "x-a": "2"}}, "payload.headers", "given twice"),
        ({"url": TARGET, "headers": {f"X-H{i}": "v" for i in range(51)}}, "payload.headers", "at most 50"),
    ],
)
def test_bad_payloads_are_refused_at_enqueue(payload: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidJob) as e:
        _validate(payload)
    assert e.value.field == field
    assert reason in e.value.message


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("café €", "'é' at position 3"),  # non-ASCII: httpx cannot encode it, every attempt failed
        ("a\x01b", "'\\x01' at position 1"),  # a control character
        ("a\x7fb", "'\\x7f' at position 1"),  # DEL
        ("ok\x85", "'\\x85' at position 2"),  # NEL, obs-text
        ("\xa0nbsp", "'\\xa0' at position 0"),
        (" padded", "leading or trailing whitespace"),
        ("padded\t", "leading or trailing whitespace"),
    ],
)
def test_header_values_that_can_never_be_sent_are_refused_at_enqueue(value: str, found: str) -> None:
    with pytest.raises(InvalidJob) as e:
        _validate({"url": TARGET, "headers": {"X-Custom": value}})
    assert e.value.field == "payload.headers.X-Custom"
    assert "only visible ASCII" in e.value.message and found in e.value.message


def test_header_values_with_inner_spaces_and_tabs_or_empty_are_accepted() -> None:
    _validate({"url": TARGET, "headers": {"X-A": "a b\tc", "X-Empty": "", "X-Sym": "!#$%&'*+-.^_`|~=,;:\"/()<>?@[]{}"}})


def test_good_payload_validates() -> None:
    _validate(
        {
            "url": "http://hooks.example.com:8080/in?x=1",
            "event": "order.paid",
            "data": {"items": [1, 2.5, None, True, "x"]},
            "headers": {f"X-H{i}": "v" for i in range(50)},
        }
    )


# --- the request ----------------------------------------------------------------------------------


async def test_request_is_signed_and_verifies(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    route = respx_mock.post(TARGET).mock(return_value=httpx.Response(204))
    data = {"order": 7, "total": "12.50", "tags": ["a", "é"]}
    result = await run(event="order.paid", data=data, headers={"X-Tenant": "acme", "User-Agent": "acme-hooks/2"})
    assert result["status_code"] == 204 and isinstance(result["duration_ms"], int)
    # Names are resolved and checked when a connection opens, below respx (test_webhook_network.py).

    req = route.calls.last.request
    body = Webhook(SECRET).verify(req.content, dict(req.headers))
    ts = int(req.headers["webhook-timestamp"])
    assert abs(ts - time.time()) < 5
    assert body == {
        "type": "order.paid",
        "data": data,
        "timestamp": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert list(json.loads(req.content)) == ["type", "data", "timestamp"]
    assert req.headers["webhook-id"] == "msg_42"
    assert req.headers["content-type"] == "application/json"
    assert req.headers.get_list("user-agent") == ["acme-hooks/2"]  # the caller's replaces ours
    assert req.headers["x-tenant"] == "acme"
    other = "whsec_" + base64.b64encode(b"another-key-of-thirty-two-bytes!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(req.content, dict(req.headers))


async def test_body_data_posts_data_itself_signed(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    route = respx_mock.post(TARGET).mock(return_value=httpx.Response(200))
    await run(event="jobqueue.alert", data={"text": "queue is on fire"}, body="data")
    req = route.calls.last.request
    assert Webhook(SECRET).verify(req.content, dict(req.headers)) == {"text": "queue is on fire"}
    assert req.headers["webhook-id"] == "msg_42"


async def test_default_user_agent_and_null_event(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    route = respx_mock.post(TARGET).mock(return_value=httpx.Response(200))
    await run()
    req = route.calls.last.request
    assert req.headers["user-agent"] == "jobqueue-webhooks/0.1"
    assert json.loads(req.content)["type"] is None and json.loads(req.content)["data"] is None


async def test_without_a_secret_the_request_is_unsigned(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    route = respx_mock.post(TARGET).mock(return_value=httpx.Response(200))
    await run(ctx=make_ctx(settings=Settings(WEBHOOK_SIGNING_SECRET=None)))
    headers = route.calls.last.request.headers
    assert "webhook-signature" not in headers
    assert headers["webhook-id"] == "msg_42" and headers["webhook-timestamp"].isdigit()


@pytest.mark.parametrize("bad_secret", ["whsec_!!!!", "whsec_a"])
async def test_invalid_secret_fails_permanently_without_revealing_it(
    respx_mock: respx.MockRouter, dns: list[str], bad_secret: str
) -> None:
    with pytest.raises(PermanentError, match="WEBHOOK_SIGNING_SECRET is not a valid") as e:
        await run(ctx=make_ctx(settings=Settings(WEBHOOK_SIGNING_SECRET=bad_secret)))
    assert bad_secret not in str(e.value) and e.value.__cause__ is None
    assert respx_mock.calls.call_count == 0


async def test_webhook_id_is_the_same_on_every_attempt(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    route = respx_mock.post(TARGET).mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    with pytest.raises(DeliveryFailed):
        await run(ctx=make_ctx(job_id=9001, attempt=1))
    assert (await run(ctx=make_ctx(job_id=9001, attempt=2)))["status_code"] == 200
    requests = [c.request for c in route.calls]
    assert [r.headers["webhook-id"] for r in requests] == ["msg_9001", "msg_9001"]
    for r in requests:  # each attempt is signed afresh, and each signature verifies
        Webhook(SECRET).verify(r.content, dict(r.headers))


async def test_no_time_left_sends_nothing(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    with pytest.raises(DeliveryFailed, match="no time left"):
        await run(ctx=make_ctx(left_s=0.01))
    assert respx_mock.calls.call_count == 0


# --- outcome classification -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_2xx_completes(respx_mock: respx.MockRouter, dns: list[str], status: int) -> None:
    respx_mock.post(TARGET).mock(return_value=httpx.Response(status, text="ok"))
    result = await run()
    assert set(result) == {"status_code", "duration_ms"}
    assert result["status_code"] == status and result["duration_ms"] >= 0


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_raise_for_a_retry(respx_mock: respx.MockRouter, dns: list[str], status: int) -> None:
    respx_mock.post(TARGET).mock(return_value=httpx.Response(status, text="upstream sad"))
    with pytest.raises(DeliveryFailed) as e:
        await run()
    assert str(e.value) == f"HTTP {status}: upstream sad"
    assert not isinstance(e.value, PermanentError | RetryAfter)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 413, 422])
async def test_other_4xx_is_permanent(respx_mock: respx.MockRouter, dns: list[str], status: int) -> None:
    respx_mock.post(TARGET).mock(return_value=httpx.Response(status, json={"error": "nope"}))
    with pytest.raises(PermanentError) as e:
        await run()
    assert str(e.value).startswith(f"HTTP {status}: ")
    assert "nope" in str(e.value)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_permanent_and_not_followed(
    respx_mock: respx.MockRouter, dns: list[str], status: int
) -> None:
    route = respx_mock.post(TARGET).mock(
        return_value=httpx.Response(status, headers={"Location": "https://elsewhere.example.com/in"})
    )
    # No route for the Location: had the client followed it, respx would have raised instead.
    with pytest.raises(PermanentError, match=f"HTTP {status}: redirects are not followed") as e:
        await run()
    assert "Location: https://elsewhere.example.com/in" in str(e.value)
    assert route.call_count == 1 and respx_mock.calls.call_count == 1


@pytest.mark.parametrize(
    "exc", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ConnectError, httpx.RemoteProtocolError]
)
async def test_transport_errors_are_retryable(
    respx_mock: respx.MockRouter, dns: list[str], exc: type[httpx.RequestError]
) -> None:
    respx_mock.post(TARGET).mock(side_effect=exc)
    with pytest.raises(DeliveryFailed, match=f"^{exc.__name__} delivering to hooks.example.com") as e:
        await run()
    assert isinstance(e.value.__cause__, exc)


async def test_retry_after_seconds_on_a_503_retries_then(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    respx_mock.post(TARGET).mock(return_value=httpx.Response(503, headers={"Retry-After": "7"}))
    with pytest.raises(RetryAfter) as e:
        await run()
    assert e.value.delay_ms == 7000
    assert e.value.reason.startswith("HTTP 503")


async def test_a_429_with_retry_after_holds_the_receivers_group(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    respx_mock.post(TARGET).mock(return_value=httpx.Response(429, headers={"Retry-After": "7"}))
    with pytest.raises(RateLimited) as e:
        await run()
    assert e.value.retry_after_ms == 7000
    assert e.value.reason.startswith("HTTP 429")


async def test_retry_after_http_date(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    when = datetime.fromtimestamp(int(time.time()) + 120, UTC)
    respx_mock.post(TARGET).mock(return_value=httpx.Response(429, headers={"Retry-After": format_datetime(when, True)}))
    with pytest.raises(RateLimited) as e:
        await run()
    assert 115_000 <= e.value.retry_after_ms <= 120_000


@pytest.mark.parametrize(
    ("value", "delay_ms"),
    [
        ("0", 0),
        ("999999999", 24 * 3600 * 1000),  # capped at a day
        (format_datetime(datetime.now(UTC) - timedelta(hours=1), True), 0),  # in the past: at once
        (format_datetime(datetime.now(UTC) + timedelta(days=30), True), 24 * 3600 * 1000),
    ],
)
async def test_retry_after_is_clamped(respx_mock: respx.MockRouter, dns: list[str], value: str, delay_ms: int) -> None:
    respx_mock.post(TARGET).mock(return_value=httpx.Response(503, headers={"Retry-After": value}))
    with pytest.raises(RetryAfter) as e:
        await run()
    assert e.value.delay_ms == delay_ms


async def test_unparseable_retry_after_falls_back_to_backoff(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    respx_mock.post(TARGET).mock(return_value=httpx.Response(429, headers={"Retry-After": "soon-ish"}))
    with pytest.raises(DeliveryFailed, match=r"^HTTP 429$"):
        await run()


async def test_retry_after_on_a_permanent_status_is_ignored(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    respx_mock.post(TARGET).mock(return_value=httpx.Response(400, headers={"Retry-After": "5"}))
    with pytest.raises(PermanentError, match=r"^HTTP 400$"):
        await run()


async def test_error_body_is_bounded_and_never_carries_the_secret(respx_mock: respx.MockRouter, dns: list[str]) -> None:
    body = f"debug: secret={SECRET}\n\n\t" + "x" * 1_000_000
    respx_mock.post(TARGET).mock(return_value=httpx.Response(500, text=body))
    with pytest.raises(DeliveryFailed) as e:
        await run()
    message = str(e.value)
    assert SECRET not in message and SECRET.removeprefix("whsec_") not in message
    assert message.startswith("HTTP 500: debug: secret=[redacted] xxx")
    assert len(message) == len("HTTP 500: ") + 500


# --- destinations (SSRF) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://10.0.0.5/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:8080/hook", "loopback"),
        ("http://100.64.0.1/hook", "carrier-grade NAT"),
        ("http://[::ffff:10.0.0.1]/hook", "private"),
        ("http://[fd00::1]/hook", "private"),
        ("http://0.0.0.0:8000/hook", "unspecified"),
        # Names (localhost included) are checked at connect time: test_webhook_network.py.
    ],
)
async def test_private_destinations_are_refused_permanently(
    respx_mock: respx.MockRouter, url: str, reason: str
) -> None:
    with pytest.raises(PermanentError, match=f"refusing to deliver to .* is a {reason}"):
        await run(url)
    assert respx_mock.calls.call_count == 0


async def test_allow_private_networks_lets_loopback_through(
    respx_mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through the environment and the Settings() fallback for a context without settings.
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "1")
    monkeypatch.delenv("WEBHOOK_SIGNING_SECRET", raising=False)
    route = respx_mock.post("http://127.0.0.1:9/hook").mock(return_value=httpx.Response(200))
    ctx = make_ctx()
    ctx.settings = None
    assert (await run("http://127.0.0.1:9/hook", ctx=ctx))["status_code"] == 200
    assert route.call_count == 1
    assert "webhook-signature" not in route.calls.last.request.headers


# --- through the engine --------------------------------------------------------------------------


async def test_engine_delivers_and_completes(make_jq: Any, respx_mock: respx.MockRouter, dns: list[str]) -> None:
    jq: JobQueue = make_jq(transport="redis", WEBHOOK_SIGNING_SECRET=SECRET)
    route = respx_mock.post(TARGET).mock(return_value=httpx.Response(200))
    row, _ = await jq.enqueue(
        {"type": "webhook.deliver", "payload": {"url": TARGET, "event": "user.created", "data": {"id": 5}}}
    )
    report = await jq.drain(5)
    assert report.completed == 1
    job = await jq.get(row["id"])
    assert job["status"] == "completed" and job["attempts"] == 1
    assert job["result"]["status_code"] == 200 and isinstance(job["result"]["duration_ms"], int)
    req = route.calls.last.request
    assert req.headers["webhook-id"] == f"msg_{row['id']}"
    assert Webhook(SECRET).verify(req.content, dict(req.headers))["data"] == {"id": 5}


async def test_engine_retries_500s_then_completes(
    make_jq: Any, clock: FakeClock, respx_mock: respx.MockRouter, dns: list[str]
) -> None:
    jq: JobQueue = make_jq(transport="redis")
    route = respx_mock.post(TARGET).mock(side_effect=[httpx.Response(500)] * 3 + [httpx.Response(200)])
    row, _ = await jq.enqueue({"type": "webhook.deliver", "payload": {"url": TARGET}, "max_attempts": 5})
    for attempt in (1, 2, 3):
        assert (await jq.drain(5)).retried == 1
        job = await jq.get(row["id"])
        assert (job["status"], job["attempts"]) == ("scheduled", attempt)
        assert job["error"].startswith("DeliveryFailed: HTTP 500")
        assert (await jq.drain(5)).claimed == 0  # still inside the backoff
        clock.advance(to_ms(job["run_at"]) - clock.ms())
    assert (await jq.drain(5)).completed == 1
    job = await jq.get(row["id"])
    assert (job["status"], job["attempts"], job["result"]["status_code"]) == ("completed", 4, 200)
    assert [h["outcome"] for h in job["history"]] == ["retried", "retried", "retried", "completed"]
    assert route.call_count == 4
    assert {c.request.headers["webhook-id"] for c in route.calls} == {f"msg_{row['id']}"}
