"""Dependencies over HTTP: `depends_on` and `on_dependency_failure` on POST /api/jobs and in batches
(with `{"index": N}`), the 422s that store nothing (unknown id, cycle, a reference outside the
batch), the view's `depends_on` and `dependents`, cancel of a waiting job, and the dashboard's
graph around a job, with hostile text escaped under the strict CSP."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from jobqueue import PermanentError
from jobqueue.engine import JobQueue
from jobqueue.registry import JobContext, Registry
from jobqueue.web.dashboard_render import CSP

from .conftest import AUTH
from .test_dashboard import XSS, login, with_dashboard


@pytest.fixture
def registry(registry: Registry) -> Registry:
    @registry.job(XSS, max_attempts=1)
    async def hostile(payload: dict[str, Any], ctx: JobContext) -> None:
        raise PermanentError(XSS)

    return registry


async def post(client: httpx.AsyncClient, body: dict[str, Any], path: str = "/api/jobs") -> httpx.Response:
    return await client.post(path, json=body, headers=AUTH)


async def test_enqueue_with_depends_on_answers_a_waiting_job_and_the_view_shows_both_sides(
    client: httpx.AsyncClient, jq: JobQueue
) -> None:
    up = (await post(client, {"type": "echo", "payload": {"n": 1}})).json()
    r = await post(
        client, {"type": "echo", "payload": {}, "depends_on": [up["id"]], "on_dependency_failure": "continue"}
    )
    assert r.status_code == 201, r.text
    down = r.json()
    assert (down["status"], down["on_dependency_failure"]) == ("waiting", "continue")
    got = (await client.get(f"/api/jobs/{down['id']}", headers=AUTH)).json()
    assert got["depends_on"] == [{"id": up["id"], "status": "pending", "type": "echo"}]
    assert got["dependents"] == []
    got = (await client.get(f"/api/jobs/{up['id']}", headers=AUTH)).json()
    assert got["dependents"] == [{"id": down["id"], "status": "waiting", "type": "echo"}]
    assert got["on_dependency_failure"] is None
    await jq.drain(5)
    await jq.drain(5)
    got = (await client.get(f"/api/jobs/{down['id']}", headers=AUTH)).json()
    assert got["status"] == "completed"
    assert got["depends_on"] == [{"id": up["id"], "status": "completed", "type": "echo"}]
    listed = (await client.get("/api/jobs?status=waiting", headers=AUTH)).json()
    assert listed["jobs"] == []


async def test_a_batch_graph_with_index_references_is_one_request(client: httpx.AsyncClient, jq: JobQueue) -> None:
    jobs = [
        {"type": "echo", "payload": {"child": 0}},
        {"type": "echo", "payload": {"child": 1}},
        {"type": "echo", "payload": {"parent": True}, "depends_on": [{"index": 0}, {"index": 1}]},
    ]
    r = await post(client, {"jobs": jobs}, "/api/jobs/batch")
    assert r.status_code == 201, r.text
    a, b, parent = r.json()["jobs"]
    assert [j["status"] for j in (a, b, parent)] == ["pending", "pending", "waiting"]
    view = (await client.get(f"/api/jobs/{parent['id']}", headers=AUTH)).json()
    assert [d["id"] for d in view["depends_on"]] == [a["id"], b["id"]]
    await jq.drain(5)
    await jq.drain(5)
    assert (await jq.get(parent["id"]))["status"] == "completed"


@pytest.mark.parametrize(
    ("body", "path", "field", "text"),
    [
        ({"type": "echo", "payload": {}, "depends_on": [424242]}, "/api/jobs", "depends_on.0", "424242"),
        ({"type": "echo", "payload": {}, "depends_on": [{"index": 0}]}, "/api/jobs", "depends_on.0", "batch"),
        ({"type": "echo", "payload": {}, "depends_on": ["x"]}, "/api/jobs", "depends_on", ""),
        ({"type": "echo", "payload": {}, "on_dependency_failure": "explode"}, "/api/jobs", "on_dependency_failure", ""),
        (
            {"jobs": [{"type": "echo", "depends_on": [{"index": 1}]}, {"type": "echo", "depends_on": [{"index": 0}]}]},
            "/api/jobs/batch",
            "jobs.",
            "cycle",
        ),
        (
            {"jobs": [{"type": "echo"}, {"type": "echo", "depends_on": [{"index": 7}]}]},
            "/api/jobs/batch",
            "jobs.1",
            "7",
        ),
        ({"jobs": [{"type": "echo"}, {"type": "echo", "depends_on": [99999]}]}, "/api/jobs/batch", "jobs.1", "99999"),
    ],
)
async def test_a_bad_dependency_is_a_422_naming_the_field_and_nothing_is_stored(
    client: httpx.AsyncClient, jq: JobQueue, body: dict[str, Any], path: str, field: str, text: str
) -> None:
    r = await post(client, body, path)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert field in err.get("field", ""), err
    assert text in err["message"], err
    rows, _ = await jq.list_jobs()
    assert rows == []


async def test_a_waiting_job_can_be_cancelled_over_the_api(client: httpx.AsyncClient, jq: JobQueue) -> None:
    up = (await post(client, {"type": "echo", "payload": {}, "delay_ms": 60_000})).json()
    down = (await post(client, {"type": "echo", "payload": {}, "depends_on": [up["id"]]})).json()
    r = await client.post(f"/api/jobs/{up['id']}/cancel", headers=AUTH)
    assert r.json()["status"] == "cancelled"
    got = (await client.get(f"/api/jobs/{down['id']}", headers=AUTH)).json()
    assert (got["status"], got["error"]) == ("cancelled", f"dependency {up['id']} was cancelled")


@pytest.fixture
async def dash(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_dashboard(app)), base_url="http://t") as c:
        yield c


async def test_the_job_page_draws_the_graph_around_a_job_with_links_and_escapes_hostile_text(
    dash: httpx.AsyncClient, jq: JobQueue
) -> None:
    jobs = [
        {"type": XSS, "payload": {"html": XSS}},
        {"type": "echo", "payload": {"note": XSS}, "depends_on": [{"index": 0}], "on_dependency_failure": "ignore"},
        {"type": "echo", "payload": {}, "depends_on": [{"index": 1}]},
    ]
    r = await dash.post("/api/jobs/batch", json={"jobs": jobs}, headers=AUTH)
    up, mid, down = (j["id"] for j in r.json()["jobs"])
    await login(dash)
    page = await dash.get(f"/dashboard/jobs/{mid}")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    text = page.text
    assert f'href="/dashboard/jobs/{up}" data-dep="up:{up}"' in text
    assert f'href="/dashboard/jobs/{down}" data-dep="down:{down}"' in text
    assert "<script>alert(1)" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert " style=" not in text and not re.search(r"<script(?! src=)", text)
    assert 'data-field="on_dependency_failure">ignore<' in text
    assert "badge-waiting" in text
    await jq.drain(5)  # the hostile job fails; `ignore` lets mid run, and down after it
    await jq.drain(5)
    await jq.drain(5)
    text = (await dash.get(f"/dashboard/jobs/{up}")).text
    assert "<script>alert(1)" not in text and "<img src=x" not in text
    assert f'data-dep="down:{mid}"' in text
    assert [(await jq.get(i))["status"] for i in (up, mid, down)] == ["failed", "completed", "completed"]
    # a job without dependencies draws no graph
    plain = (await dash.post("/api/jobs", json={"type": "echo", "payload": {}}, headers=AUTH)).json()["id"]
    assert 'data-field="graph"' not in (await dash.get(f"/dashboard/jobs/{plain}")).text
