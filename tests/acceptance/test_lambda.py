"""`api/lambda.handler` with hand-built Lambda events: API Gateway HTTP API / Function URL (payload
v2), API Gateway REST (v1), and an EventBridge schedule that runs one drain. Each handler is
called several times in a row, as a warm Lambda environment would be, against the real Postgres
and Redis."""

from __future__ import annotations

import base64
import importlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from jobqueue.web import aws_lambda

API_TOKEN = "lambda-api-token-0123456789abcdef"
WORKER_SECRET = "lambda-worker-secret-0123456789abcdef"
AUTH = {"authorization": f"Bearer {API_TOKEN}"}


class Context:
    """The part of the Lambda context the handler reads."""

    def __init__(self, remaining_ms: int = 60_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def v2_event(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """API Gateway HTTP API payload 2.0; a Function URL sends the same shape."""
    host = "abcdefg.lambda-url.eu-west-1.on.aws"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": host, "content-type": "application/json", "x-forwarded-proto": "https", **(headers or {})},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abcdefg",
            "domainName": host,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.9",
                "userAgent": "t",
            },
            "requestId": "r1",
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": 1767225600000,
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


def v1_event(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """API Gateway REST API (payload 1.0): `path` excludes the stage; the body arrives base64."""
    hdrs = {"Host": "abc.execute-api.eu-west-1.amazonaws.com", "Content-Type": "application/json", **(headers or {})}
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": hdrs,
        "multiValueHeaders": {k: [v] for k, v in hdrs.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {"resourcePath": "/{proxy+}", "httpMethod": method, "path": f"/prod{path}", "stage": "prod"},
        "body": None if body is None else base64.b64encode(json.dumps(body).encode()).decode(),
        "isBase64Encoded": body is not None,
    }


SCHEDULED = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-11-23T00:00:00Z",
    "region": "eu-west-1",
    "resources": ["arn:aws:events:eu-west-1:123456789012:rule/jobqueue-drain"],
    "detail": {},
}


@pytest.fixture
def lambda_module() -> Any:
    # `lambda` is a keyword, so `import api.lambda` is a syntax error; the runtime uses importlib too.
    return importlib.import_module("api.lambda")


@pytest.fixture
def handler(
    lambda_module: Any, monkeypatch: pytest.MonkeyPatch, database_url: str, redis_server: str, prefix: str
) -> Iterator[Any]:
    for name in ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN", "KV_REST_API_URL", "KV_REST_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("QSTASH_TOKEN", raising=False)
    for name, value in {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server,
        "JOBQUEUE_PREFIX": prefix,
        "JOBS_API_TOKEN": API_TOKEN,
        "WORKER_SECRET": WORKER_SECRET,
    }.items():
        monkeypatch.setenv(name, value)
    h = lambda_module.LambdaHandler()  # what `handler` is, but fresh: built from this test's env
    yield h
    h.close()


def body(response: dict[str, Any]) -> Any:
    raw = response["body"]
    return json.loads(base64.b64decode(raw) if response.get("isBase64Encoded") else raw)


def test_the_module_exposes_a_handler_for_the_lambda_runtime(lambda_module: Any) -> None:
    assert isinstance(lambda_module.handler, lambda_module.LambdaHandler)
    assert callable(lambda_module.handler)


def test_http_api_v2_enqueue_then_read_in_a_row(handler: Any) -> None:
    made = handler(v2_event("POST", "/api/jobs", {"type": "echo", "payload": {"v": 2}}, AUTH), Context())
    assert made["statusCode"] == 201
    assert made["headers"]["content-type"] == "application/json"
    job = body(made)
    assert (job["type"], job["payload"], job["status"]) == ("echo", {"v": 2}, "pending")

    got = handler(v2_event("GET", f"/api/jobs/{job['id']}", headers=AUTH), Context())
    assert (got["statusCode"], body(got)["id"]) == (200, job["id"])

    worker = {"authorization": f"Bearer {WORKER_SECRET}"}
    drained = handler(v2_event("POST", "/api/workers", headers=worker), Context())
    assert drained["statusCode"] == 200
    report = body(drained)
    assert (report["claimed"], report["completed"], report["more"]) == (1, 1, False)

    done = handler(v2_event("GET", f"/api/jobs/{job['id']}", headers=AUTH), Context())
    assert (body(done)["status"], body(done)["result"]) == ("completed", {"v": 2})


def test_rest_api_v1_events(handler: Any) -> None:
    made = handler(v1_event("POST", "/api/jobs", {"type": "echo", "payload": {"v": 1}}, AUTH), Context())
    assert made["statusCode"] == 201
    job_id = body(made)["id"]
    got = handler(v1_event("GET", f"/api/jobs/{job_id}", headers=AUTH), Context())
    assert (got["statusCode"], body(got)["payload"]) == (200, {"v": 1})
    denied = handler(v1_event("GET", f"/api/jobs/{job_id}"), Context())
    assert denied["statusCode"] == 401
    assert body(denied)["error"]["code"] == "unauthorized"
    bad = handler(v1_event("POST", "/api/jobs", {"type": "nope", "payload": {}}, AUTH), Context())
    assert (bad["statusCode"], body(bad)["error"]["field"]) == (422, "type")


def test_a_scheduled_event_runs_one_drain_and_returns_its_report(handler: Any) -> None:
    for i in range(3):
        assert (
            handler(v2_event("POST", "/api/jobs", {"type": "echo", "payload": {"i": i}}, AUTH), Context())["statusCode"]
            == 201
        )
    report = handler(SCHEDULED, Context(remaining_ms=30_000))
    assert {k: v for k, v in report.items() if k != "duration_ms"} == {
        "claimed": 3,
        "completed": 3,
        "retried": 0,
        "failed": 0,
        "released": 0,
        "recovered": 0,
        "more": False,
        "gated_until": None,  # nothing waits on a flow-control limit
    }
    assert isinstance(report["duration_ms"], int)
    # a second tick in the same warm environment: nothing left, still fine
    again = handler(SCHEDULED, Context())
    assert (again["claimed"], again["more"]) == (0, False)
    # an EventBridge Scheduler target (or a manual invoke) says so explicitly
    assert handler({"jobqueue": "drain"}, Context())["claimed"] == 0


def test_health_without_any_configuration_says_what_is_missing(
    lambda_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "UPSTASH_REDIS_REST_URL", "KV_REST_API_URL"):
        monkeypatch.delenv(name, raising=False)
    h = lambda_module.LambdaHandler()
    try:
        for _ in range(2):
            resp = h(v2_event("GET", "/api/health"), Context())
            assert resp["statusCode"] == 503
            assert body(resp) == {"status": "unavailable", "postgres": "not configured", "redis": "not configured"}
    finally:
        h.close()


@pytest.mark.parametrize(
    ("event", "drain"),
    [
        (SCHEDULED, True),
        ({"source": "aws.events"}, True),
        ({"jobqueue": "drain"}, True),
        ({"source": "aws.s3", "detail-type": "Object Created"}, False),
        (v2_event("GET", "/api/health"), False),
        ([], False),
    ],
)
def test_which_events_drain(lambda_module: Any, event: Any, drain: bool) -> None:
    assert aws_lambda.is_drain_event(event) is drain
