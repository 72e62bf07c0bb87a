"""The schema: the shipped migrations bring an empty database, and one made by the schema.sql of
before migrations, to the same head as today's schema.sql; the SQLModel Job model agrees with it;
`jobqueue migrate` is idempotent and safe to run from several deploys at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.dialects import postgresql

from jobqueue.store import Store, migrations
from jobqueue.table import Job

from ..conftest import ADMIN_URL, _db_url

ROOT = Path(__file__).resolve().parents[2]
PG_TYPES = {
    "bigint": "BIGINT",
    "text": "TEXT",
    "jsonb": "JSONB",
    "smallint": "SMALLINT",
    "integer": "INTEGER",
    "boolean": "BOOLEAN",
    "timestamp with time zone": "TIMESTAMP WITH TIME ZONE",
}


@pytest.fixture
async def empty_db() -> AsyncIterator[Any]:
    """Makes empty databases (not from the migrated template) and drops them afterwards."""
    made: list[str] = []

    async def make() -> str:
        name = f"jq_s_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        made.append(name)
        return _db_url(name)

    yield make
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        for name in made:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def catalog(url: str) -> dict[str, Any]:
    """What a schema consists of: tables' columns (type, null, default), indexes, constraints."""
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity "
            "FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'jobqueue_migrations' "
            "ORDER BY table_name, column_name"
        )
        indexes = await conn.fetch(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "AND tablename <> 'jobqueue_migrations' ORDER BY indexname"
        )
        constraints = await conn.fetch(
            "SELECT conrelid::regclass::text AS t, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'jobqueue_migrations' "
            "ORDER BY 1, 2"
        )
    finally:
        await conn.close()
    return {
        "columns": [tuple(r) for r in columns],
        "indexes": [tuple(r) for r in indexes],
        "constraints": [tuple(r) for r in constraints],
    }


async def run_sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_an_empty_database_migrates_to_exactly_what_schema_sql_makes(empty_db: Any) -> None:
    migrated, from_file = await empty_db(), await empty_db()
    store = Store(migrated)
    assert await store.migrate() == [m.version for m in migrations()]
    await store.close()
    await run_sql(from_file, (ROOT / "schema.sql").read_text())
    assert await catalog(migrated) == await catalog(from_file)


async def test_a_database_made_by_the_schema_sql_of_before_migrations_upgrades_to_head(empty_db: Any) -> None:
    old, fresh = await empty_db(), await empty_db()
    await run_sql(old, (ROOT / "tests/fixtures/schema_before_migrations.sql").read_text())
    await run_sql(old, "INSERT INTO jobs (type, payload) VALUES ('echo', '{\"kept\": true}')")
    store = Store(old)
    assert await store.migrate() == [m.version for m in migrations()]  # 0001 is a no-op there
    await store.close()
    store = Store(fresh)
    await store.migrate()
    await store.close()
    assert await catalog(old) == await catalog(fresh)
    conn = await asyncpg.connect(old)
    try:
        row = await conn.fetchrow("SELECT payload, dispatched FROM jobs")
    finally:
        await conn.close()
    assert (row["payload"], row["dispatched"]) == ('{"kept": true}', True)  # the data survives


async def test_migrate_is_idempotent_and_serialised_across_concurrent_deploys(empty_db: Any) -> None:
    url = await empty_db()
    stores = [Store(url) for _ in range(5)]
    results = await asyncio.gather(*(s.migrate() for s in stores))
    for s in stores:
        await s.close()
    heads = [m.version for m in migrations()]
    assert sorted(results, key=len) == [[]] * 4 + [heads]  # exactly one deploy applied them
    store = Store(url)
    assert await store.migrate() == []
    await store.close()
    conn = await asyncpg.connect(url)
    try:
        assert [r["version"] for r in await conn.fetch("SELECT version FROM jobqueue_migrations")] == heads
    finally:
        await conn.close()


async def test_the_job_model_matches_the_migrated_schema(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'jobs' ORDER BY ordinal_position"
        )
    finally:
        await conn.close()
    db = {r["column_name"]: (PG_TYPES[r["data_type"]], r["is_nullable"] == "YES") for r in rows}
    table = Job.__table__  # type: ignore[attr-defined]
    model = {
        c.name: (c.type.compile(dialect=postgresql.dialect()), bool(c.nullable) and not c.primary_key)
        for c in table.columns
    }
    assert model == db
