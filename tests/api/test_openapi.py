"""The OpenAPI document and the docs page: named request and response components, the job
request per registered type (each with its payload model's schema), priorities, history entries,
security per operation, built lazily without connecting anywhere; and `/api/docs` with every file
it needs served by the app itself (nothing from a CDN, so it works offline)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from jobqueue.builtins import default_registry
from jobqueue.registry import JobContext, Registry
from jobqueue.settings import Settings
from jobqueue.web.app import create_app
from jobqueue.web.docs import asset_dir

from .conftest import APP_SETTINGS, AUTH


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/api/openapi.json")  # no credentials: the docs page needs it
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def schemas(spec: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = spec["components"]["schemas"]
    return found


def body(spec: dict[str, Any], method: str, path: str) -> Any:
    return spec["paths"][path][method]["requestBody"]["content"]["application/json"]


def resolve(spec: dict[str, Any], node: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = schemas(spec)[node["$ref"].rsplit("/", 1)[-1]]
    return found


def test_request_and_response_bodies_are_named_components(spec: dict[str, Any]) -> None:
    assert body(spec, "post", "/api/jobs")["schema"] == ref("EnqueueRequest")
    assert body(spec, "post", "/api/jobs/batch")["schema"] == ref("BatchRequest")
    assert body(spec, "post", "/api/dlq/replay")["schema"] == ref("ReplayRequest")
    batch = schemas(spec)["BatchRequest"]
    assert batch["properties"]["jobs"] == {"type": "array", "items": ref("EnqueueRequest"), "maxItems": 1000}
    assert batch["required"] == ["jobs"] and batch["additionalProperties"] is False
    drain = spec["paths"]["/api/workers"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert drain == ref("DrainResult")
    assert set(schemas(spec)["DrainResult"]["required"]) == {
        "claimed",
        "completed",
        "retried",
        "failed",
        "released",
        "recovered",
        "duration_ms",
        "more",
    }
    assert schemas(spec)["ErrorBody"]["properties"]["error"] == ref("ErrorDetail")
    errors = 0
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and path != "/api/health":
                    assert response["content"]["application/json"]["schema"] == ref("ErrorBody"), (method, path)
                    errors += 1
    assert errors > 50
    assert "$defs" not in str(spec)


def test_the_job_request_is_one_of_the_registered_types(spec: dict[str, Any], registry: Registry) -> None:
    enqueue = schemas(spec)["EnqueueRequest"]
    mapping = enqueue["discriminator"]["mapping"]
    assert enqueue["discriminator"]["propertyName"] == "type"
    assert list(mapping) == registry.names == ["boom", "echo", "strict", "webhook.deliver"]
    assert enqueue["oneOf"] == [{"$ref": r} for r in mapping.values()]
    strict = resolve(spec, {"$ref": mapping["strict"]})
    assert strict["properties"]["type"]["const"] == "strict" and strict["title"] == "strict job"
    assert strict["properties"]["payload"] == ref("StrictPayload") and {"type", "payload"} <= set(strict["required"])
    assert schemas(spec)["StrictPayload"]["properties"]["n"]["type"] == "integer"
    webhook = resolve(spec, {"$ref": mapping["webhook.deliver"]})
    assert webhook["properties"]["payload"] == ref("WebhookPayload")
    assert schemas(spec)["WebhookPayload"]["required"] == ["url"]
    assert "12" in webhook["description"]  # the type's registration defaults (max_attempts 12)
    boom = resolve(spec, {"$ref": mapping["boom"]})  # a type without a model takes any object
    assert boom["properties"]["payload"]["type"] == "object" and "payload" not in boom.get("required", [])
    assert "max_attempts 1" in boom["description"]
    # Every branch keeps the rest of the request: options, and no unknown fields.
    for branch in map(lambda r: resolve(spec, {"$ref": r}), mapping.values()):
        assert branch["additionalProperties"] is False and "idempotency_key" in branch["properties"]


async def test_the_examples_are_real_requests(spec: dict[str, Any], client: httpx.AsyncClient) -> None:
    examples = body(spec, "post", "/api/jobs")["examples"]
    assert [e["value"]["type"] for e in examples.values()] == ["boom", "echo", "strict", "webhook.deliver"]
    assert examples["strict"]["value"] == {"type": "strict", "payload": {"n": 0}}  # made up from the schema
    assert examples["webhook.deliver"]["value"]["payload"]["url"] == "https://example.com/hooks"  # declared
    for example in examples.values():
        r = await client.post("/api/jobs", json=example["value"], headers=AUTH)
        assert r.status_code == 201, r.text
    batch = body(spec, "post", "/api/jobs/batch")["examples"]["a batch"]["value"]
    assert (await client.post("/api/jobs/batch", json=batch, headers=AUTH)).status_code == 201


def test_priorities_runs_at_and_history_are_documented(spec: dict[str, Any]) -> None:
    priority = schemas(spec)["JobRequest"]["properties"]["priority"]
    assert priority["anyOf"] == [
        {"type": "integer", "minimum": 0, "maximum": 9},
        {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
    ]
    assert priority["default"] == 5 and "9 runs first, 0 last" in priority["description"]
    assert "low (2), normal (5), high (7), urgent (9)" in priority["description"]
    assert "timezone" in schemas(spec)["JobRequest"]["properties"]["run_at"]["description"]
    assert schemas(spec)["JobView"]["properties"]["history"]["items"] == ref("HistoryEntry")
    entry = schemas(spec)["HistoryEntry"]
    assert set(entry["properties"]) == {
        "attempt",
        "started_at",
        "ended_at",
        "outcome",
        "error",
        "duration_ms",
        "requeued_at",
        "previous_status",
    }
    assert all(p["description"].startswith(("attempt:", "requeue:")) for p in entry["properties"].values())
    assert "requeue" in entry["description"] and "attempt" in entry["description"]
    assert entry["properties"]["started_at"]["anyOf"][0] == {"type": "string", "format": "date-time"}


def test_security_is_declared_per_operation(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert {k: (v["type"], v.get("scheme") or v.get("name")) for k, v in schemes.items()} == {
        "ApiToken": ("http", "bearer"),
        "EnqueueToken": ("http", "bearer"),
        "MetricsToken": ("http", "bearer"),
        "WorkerSecret": ("http", "bearer"),
        "UpstashSignature": ("apiKey", "Upstash-Signature"),
    }
    security = {
        f"{m.upper()} {p}": sorted(next(iter(s)) for s in op.get("security", []))
        for p, ops in spec["paths"].items()
        for m, op in ops.items()
    }
    scoped = {
        "POST /api/jobs": ["ApiToken", "EnqueueToken"],
        "POST /api/jobs/batch": ["ApiToken", "EnqueueToken"],
        "GET /api/jobs/{job_id}": ["ApiToken", "EnqueueToken"],
        "GET /api/metrics": ["ApiToken", "MetricsToken"],
        "GET /api/metrics/prometheus": ["ApiToken", "MetricsToken"],
        "GET /api/workers": ["UpstashSignature", "WorkerSecret"],
        "POST /api/workers": ["UpstashSignature", "WorkerSecret"],
        "GET /api/health": [],
    }
    assert security == {op: scoped.get(op, ["ApiToken"]) for op in security}
    assert "403" in spec["paths"]["/api/queues"]["get"]["responses"]
    assert "409" in spec["paths"]["/api/workers"]["post"]["responses"]  # a QStash token in use


async def test_the_document_is_built_when_first_asked_for_without_connecting(
    registry: Registry, make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    calls: list[int] = []

    def source() -> Registry:
        calls.append(1)
        return registry

    app = create_app(Settings(**APP_SETTINGS), registry=source)  # no DATABASE_URL, no Redis
    assert calls == []
    async with make_client(app) as c:
        for _ in range(2):
            r = await c.get("/api/openapi.json")
            assert r.status_code == 200 and "Job_strict" in r.json()["components"]["schemas"]
    assert calls == [1]  # resolved once, and kept for the engine
    assert app.state.resources.built is None


async def test_a_registry_that_fails_leaves_a_generic_job_request(
    make_client: Callable[[FastAPI], httpx.AsyncClient],
) -> None:
    app = create_app(Settings(**APP_SETTINGS, JOBQUEUE_REGISTRY="no_such_module:registry"))
    async with make_client(app) as c:
        r = await c.get("/api/openapi.json")
    assert r.status_code == 200
    assert schemas(r.json())["EnqueueRequest"]["allOf"] == [ref("JobRequest")]
    assert schemas(r.json())["JobRequest"]["properties"]["payload"]["type"] == "object"
    assert app.openapi_schema is None  # not cached: the next request tries the registry again


def test_a_payload_model_named_like_a_component_is_renamed() -> None:
    class JobView(BaseModel):  # the same name as the API's job view
        x: int

    reg = default_registry()

    @reg.job("clash", model=JobView)
    async def clash(payload: JobView, ctx: JobContext) -> None:
        return None

    spec = create_app(Settings(**APP_SETTINGS), registry=reg).openapi()
    assert "status" in schemas(spec)["JobView"]["properties"]  # the API's own, untouched
    assert schemas(spec)["Job_clash"]["properties"]["payload"] == ref("Payload_JobView")
    assert schemas(spec)["Payload_JobView"]["properties"]["x"]["type"] == "integer"
    assert schemas(spec)["EnqueueRequest"]["discriminator"]["mapping"]["clash"] == ref("Job_clash")["$ref"]


# --- the docs page ---------------------------------------------------------------------------------


def _references(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r"url: '([^']+)'", page)


@pytest.mark.parametrize("root_path", ["", "/proxy"])
async def test_the_docs_page_and_everything_it_loads_are_served_by_the_app(app: FastAPI, root_path: str) -> None:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        r = await c.get(f"{root_path}/api/docs")
        assert r.status_code == 200 and "SwaggerUIBundle" in r.text
        urls = _references(r.text)
        assert len(urls) == 4  # the CSS, the favicon, the bundle, the document
        for url in urls:
            assert url.startswith(f"{root_path}/api/") and not url.startswith("//"), url  # this origin
            asset = await c.get(url)
            assert asset.status_code == 200, url
        assert "cdn" not in r.text and '"validatorUrl": null' in r.text  # no validator.swagger.io either
        css = (await c.get(next(u for u in urls if u.endswith(".css") or ".css?" in u))).text
        assert [u for u in re.findall(r"url\(([^)]*)\)", css) if not u.strip("\"'").startswith("data:")] == []
        # The one inline script is allowed by its hash, and nothing else runs.
        csp = r.headers["content-security-policy"]
        script = re.search(r"<script>(.*?)</script>", r.text, re.DOTALL)
        assert script is not None
        digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
        assert f"script-src 'self' 'sha256-{digest}';" in csp and "unsafe" not in csp
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp


async def test_docs_assets_are_cached_compressed_and_only_these(client: httpx.AsyncClient) -> None:
    page = (await client.get("/api/docs")).text
    js = next(u for u in _references(page) if "swagger-ui-bundle.js" in u)
    r = await client.get(js, headers={"Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and r.headers["cache-control"].endswith("immutable")
    assert r.content == (asset_dir() / "swagger-ui-bundle.js").read_bytes()  # httpx decompressed it
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    plain = await client.get("/api/docs/swagger-ui.css", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and "immutable" not in plain.headers["cache-control"]
    for name in ("redoc.standalone.js", "..%2Fcore.py", "nope"):
        assert (await client.get(f"/api/docs/{name}")).status_code == 404
    assert Path(asset_dir(), "swagger-ui-bundle.js").stat().st_size > 500_000  # the real bundle
