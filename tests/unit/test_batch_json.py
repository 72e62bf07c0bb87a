"""The batch route's fast serialisation of just-enqueued rows gives JobView's bytes exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from jobqueue.web.routes_jobs import JobBatch, JobView, batch_json


def fresh_row(**over: Any) -> dict[str, Any]:
    now = datetime(2026, 12, 2, 2, 20, 17, 123456, tzinfo=UTC)
    row: dict[str, Any] = {
        "id": 41,
        "queue": "default",
        "type": "echo",
        "status": "pending",
        "priority": 5,
        "max_attempts": 3,
        "backoff": {"type": "exponential", "delay_ms": 1000, "max_delay_ms": 3_600_000, "jitter": 0.0},
        "timeout_ms": 30000,
        "idempotency_key": None,
        "group_key": None,
        "limiter": "",
        "payload": {"i": 1},
        "attempts": 0,
        "run_at": now,
        "lease_token": None,
        "lease_expires_at": None,
        "result": None,
        "error": None,
        "history": [],
        "created_at": now,
        "started_at": None,
        "finished_at": None,
    }
    return row | over


def model_bytes(rows: list[dict[str, Any]]) -> bytes:
    return JobBatch(jobs=[JobView.from_row(r) for r in rows]).model_dump_json().encode()


def test_fresh_rows_serialise_as_their_views() -> None:
    whole_second = datetime(2026, 12, 2, 2, 20, 17, tzinfo=UTC)
    rows = [
        fresh_row(),
        fresh_row(id=42, created_at=whole_second, run_at=whole_second),
        fresh_row(
            id=43,
            status="scheduled",
            run_at=datetime(2026, 12, 3, 9, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
            idempotency_key="order-7",
            group_key="tenant-a",
            priority=9,
            payload={"f": 1.5, "big": 2**62, "s": 'é \u2028 "q" \\', "nested": {"l": [1, None, True, {}]}, "e": {}},
            backoff={"type": "fixed", "delay_ms": 10, "max_delay_ms": 10, "jitter": 0.25},
        ),
        fresh_row(id=44, schedule_id="nightly", scheduled_for=whole_second),
    ]
    assert batch_json(rows) == model_bytes(rows)


def test_a_row_with_history_goes_through_the_model() -> None:
    # An idempotency key's existing job: it may have run; the fast path does not apply.
    done = fresh_row(
        id=7,
        status="completed",
        attempts=1,
        result={"ok": True},
        history=[{"attempt": 1, "started_at": "2026-12-02T02:20:17Z", "outcome": "completed"}],
        started_at=datetime(2026, 12, 2, 2, 20, 18, tzinfo=UTC),
        finished_at=datetime(2026, 12, 2, 2, 20, 19, tzinfo=UTC),
    )
    rows = [fresh_row(), done]
    assert batch_json(rows) == model_bytes(rows)


def test_fresh_rows_with_workflow_fields_serialise_as_their_views() -> None:
    cb = {"url": "https://example.com/done", "queue": "webhooks"}
    rows = [
        fresh_row(callback=cb, created_by=7),
        fresh_row(id=45, depends_on=[{"id": 3, "type": "echo", "status": "completed"}], on_dependency_failure="ignore"),
    ]
    assert batch_json(rows) == model_bytes(rows)
    # A row with a progress report or a graph is not a fresh one: it takes JobView's path (the same bytes).
    reported = [
        fresh_row(id=46, progress={"percent": 5, "message": None, "data": None, "updated_at": "2026-12-02T02:20:17Z"})
    ]
    assert batch_json(reported) == model_bytes(reported)
