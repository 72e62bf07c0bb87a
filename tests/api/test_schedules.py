"""`/api/schedules` over HTTP: the contract of DESIGN.md §8 (201 created / 200 updated, 404, 422
naming the field, nothing stored on a bad body), and `GET /api/jobs?schedule_id=`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue

from .conftest import AUTH


async def test_put_get_list_pause_resume_trigger_delete(
    app: FastAPI, jq: JobQueue, clock: FakeClock, make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    body = {"type": "echo", "payload": {"x": 1}, "cron": "0 9 * * *", "tz": "America/Sao_Paulo", "overlap": "skip"}
    async with make_client(app) as c:
        r = await c.put("/api/schedules/morning", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        made = r.json()
        assert (made["id"], made["tz"], made["source"], made["paused"]) == (
            "morning",
            "America/Sao_Paulo",
            "api",
            False,
        )
        assert made["next_run_at"].endswith("T12:00:00Z")  # 09:00 in São Paulo is 12:00 UTC
        r = await c.put("/api/schedules/morning", json={**body, "payload": {"x": 2}}, headers=AUTH)
        assert r.status_code == 200 and r.json()["payload"] == {"x": 2}
        assert r.json()["next_run_at"] == made["next_run_at"]  # the timing did not change
        r = await c.get("/api/schedules", headers=AUTH)
        assert [s["id"] for s in r.json()["schedules"]] == ["morning"]
        assert (await c.post("/api/schedules/morning/pause", headers=AUTH)).json()["paused"] is True
        assert (await c.post("/api/schedules/morning/resume", headers=AUTH)).json()["paused"] is False
        r = await c.post("/api/schedules/morning/trigger", headers=AUTH)
        assert r.status_code == 201 and r.json()["schedule_id"] == "morning" and r.json()["status"] == "pending"
        job_id = r.json()["id"]
        r = await c.get("/api/jobs", params={"schedule_id": "morning"}, headers=AUTH)
        assert [j["id"] for j in r.json()["jobs"]] == [job_id]
        got = (await c.get("/api/schedules/morning", headers=AUTH)).json()
        assert (got["last_job_id"], got["last_job_status"]) == (job_id, "pending")
        assert (await c.delete("/api/schedules/morning", headers=AUTH)).status_code == 204
        assert (await c.get("/api/schedules/morning", headers=AUTH)).status_code == 404
        assert (await c.delete("/api/schedules/morning", headers=AUTH)).status_code == 404
        assert (await c.post("/api/schedules/morning/trigger", headers=AUTH)).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "echo", "cron": "not a cron"}, "cron"),
        ({"type": "echo", "cron": "0 9 * * *", "tz": "Atlantis/Capital"}, "tz"),
        ({"type": "echo", "cron": "0 9 * * *", "every_ms": 60000}, "cron"),
        ({"type": "echo"}, "cron"),
        ({"type": "echo", "every_ms": 999}, "every_ms"),
        ({"type": "nope", "every_ms": 60000}, "type"),
        ({"type": "strict", "every_ms": 60000, "payload": {"n": "three"}}, "payload.n"),
        ({"type": "echo", "every_ms": 60000, "colour": "blue"}, "colour"),
    ],
)
async def test_a_bad_schedule_is_a_422_naming_the_field_and_stores_nothing(
    app: FastAPI, make_client: Callable[[FastAPI], httpx.AsyncClient], body: dict[str, Any], field: str
) -> None:
    async with make_client(app) as c:
        r = await c.put("/api/schedules/bad", json=body, headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
        assert (await c.get("/api/schedules", headers=AUTH)).json() == {"schedules": []}


async def test_a_bad_schedule_id_is_a_422(app: FastAPI, make_client: Callable[[FastAPI], httpx.AsyncClient]) -> None:
    async with make_client(app) as c:
        r = await c.put("/api/schedules/has%20space", json={"type": "echo", "every_ms": 60000}, headers=AUTH)
        assert r.status_code == 422
