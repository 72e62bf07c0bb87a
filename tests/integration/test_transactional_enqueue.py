"""Enqueue inside the application's own transaction (asyncpg connection, SQLAlchemy/SQLModel
AsyncSession): the job commits or rolls back with the business data; Redis hears of it only after
the commit; a commit whose push never happened is found by the dispatch sweep, within a bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis as redis_sync
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.keys import Keys


@pytest.fixture
async def app_conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The application's own connection, with a business table of its own."""
    conn = await asyncpg.connect(database_url)
    await conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, total int NOT NULL)")
    yield conn
    await conn.close()


def ready_ids(redis_server: str, prefix: str) -> set[int]:
    r = redis_sync.Redis.from_url(redis_server, decode_responses=True)
    members = [m for p in range(10) for m in r.lrange(Keys(prefix).ready("default", p), 0, -1)]
    return {int(m.rsplit(":", 1)[1]) for m in members}


async def counts(conn: asyncpg.Connection) -> tuple[int, int]:
    return (await conn.fetchval("SELECT count(*) FROM orders"), await conn.fetchval("SELECT count(*) FROM jobs"))


async def test_a_job_commits_with_the_business_data_and_is_pushed_after_the_commit(
    jq: JobQueue, app_conn: asyncpg.Connection, redis_server: str, prefix: str
) -> None:
    await jq.drain(1)
    async with jq.transaction(app_conn):
        await app_conn.execute("INSERT INTO orders (total) VALUES (42)")
        row, created = await jq.enqueue({"type": "echo", "payload": {"order": 1}}, connection=app_conn)
        assert created and ready_ids(redis_server, prefix) == set()  # nothing in Redis before the commit
    assert ready_ids(redis_server, prefix) == {row["id"]}  # pushed right after it
    assert await counts(app_conn) == (1, 1)
    report = await jq.drain(5)
    assert (report.completed, report.reconciled) == (1, 0)


async def test_a_rolled_back_transaction_leaves_no_job_and_nothing_in_redis(
    jq: JobQueue, app_conn: asyncpg.Connection, redis_server: str, prefix: str, clock: FakeClock
) -> None:
    await jq.drain(1)
    with pytest.raises(RuntimeError):
        async with jq.transaction(app_conn):
            await app_conn.execute("INSERT INTO orders (total) VALUES (42)")
            await jq.enqueue({"type": "echo", "payload": {}}, connection=app_conn)
            raise RuntimeError("the order failed")
    assert await counts(app_conn) == (0, 0)
    assert ready_ids(redis_server, prefix) == set()
    clock.advance(seconds=3600)  # whatever sweeps or reconciles run later find nothing to run
    assert (await jq.drain(2)).claimed == 0


async def test_a_commit_whose_push_never_happened_is_found_by_the_sweep_within_a_second(
    jq: JobQueue, app_conn: asyncpg.Connection, redis_server: str, prefix: str, clock: FakeClock
) -> None:
    await jq.drain(1)
    # The application manages its transaction itself (or its process dies right after COMMIT):
    # nobody pushes the job.
    async with app_conn.transaction():
        await app_conn.execute("INSERT INTO orders (total) VALUES (7)")
        row, _ = await jq.enqueue({"type": "echo", "payload": {}}, connection=app_conn)
    assert ready_ids(redis_server, prefix) == set()
    assert (await jq.drain(1)).claimed == 0  # the sweep is not due yet
    clock.advance(999)
    assert (await jq.drain(1)).claimed == 0
    clock.advance(1)  # one second after the enqueue: the bound
    report = await jq.drain(5)
    assert (report.reconciled, report.completed) == (1, 1)
    assert (await jq.get(row["id"]))["status"] == "completed"


async def test_a_commit_long_after_the_sweep_window_is_found_by_the_periodic_reconcile(
    make_jq: Any, app_conn: asyncpg.Connection, clock: FakeClock
) -> None:
    jq: JobQueue = make_jq(JOBQUEUE_RECONCILE_INTERVAL_S=60)
    await jq.drain(1)
    tx = app_conn.transaction()
    await tx.start()
    row, _ = await jq.enqueue({"type": "echo", "payload": {}}, connection=app_conn)
    clock.advance(seconds=121)  # the transaction stays open past the sweep's two-minute window
    assert (await jq.drain(1)).claimed == 0  # the last sweeps ran before the commit
    await tx.commit()
    clock.advance(seconds=60)  # the periodic reconcile's interval: the bound in this case
    report = await jq.drain(5)
    assert report.completed == 1
    assert (await jq.get(row["id"]))["status"] == "completed"


async def test_on_a_connection_without_a_transaction_the_job_is_pushed_at_once(
    jq: JobQueue, app_conn: asyncpg.Connection, redis_server: str, prefix: str
) -> None:
    await jq.drain(1)
    row, _ = await jq.enqueue({"type": "echo", "payload": {}}, connection=app_conn)
    assert ready_ids(redis_server, prefix) == {row["id"]}


async def test_idempotency_keys_hold_inside_a_transaction(jq: JobQueue, app_conn: asyncpg.Connection) -> None:
    async with jq.transaction(app_conn):
        first, created = await jq.enqueue({"type": "echo", "payload": {}, "idempotency_key": "k"}, connection=app_conn)
        again, created_again = await jq.enqueue(
            {"type": "echo", "payload": {}, "idempotency_key": "k"}, connection=app_conn
        )
    assert (created, created_again, again["id"]) == (True, False, first["id"])
    assert again["payload"] == {}  # read on the application's connection, decoded like any row


async def test_a_sqlmodel_session_commits_and_rolls_back_with_its_jobs(
    jq: JobQueue, app_conn: asyncpg.Connection, database_url: str, redis_server: str, prefix: str
) -> None:
    await jq.drain(1)
    engine = create_async_engine(database_url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with AsyncSession(engine) as session:
            # The job is the first statement of the session: it must not commit on its own.
            row, _ = await jq.enqueue({"type": "echo", "payload": {"via": "session"}}, session=session)
            await session.exec(text("INSERT INTO orders (total) VALUES (5)"))  # type: ignore[call-overload]
            assert ready_ids(redis_server, prefix) == set()
            await session.commit()
        await asyncio.gather(*jq.enqueuer._background)  # the after-commit push
        assert ready_ids(redis_server, prefix) == {row["id"]}

        async with AsyncSession(engine) as session:
            await session.exec(text("INSERT INTO orders (total) VALUES (6)"))  # type: ignore[call-overload]
            await jq.enqueue({"type": "echo", "payload": {"via": "rolled back"}}, session=session)
            await session.rollback()
        assert await counts(app_conn) == (1, 1)
    finally:
        await engine.dispose()
    report = await jq.drain(5)
    assert report.completed == 1
