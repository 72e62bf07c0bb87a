"""schema.sql is canonical; the SQLModel Job model must agree with what it creates."""

from __future__ import annotations

import asyncpg
from sqlalchemy.dialects import postgresql

from jobqueue.store import Store
from jobqueue.table import Job

PG_TYPES = {
    "bigint": "BIGINT",
    "text": "TEXT",
    "jsonb": "JSONB",
    "smallint": "SMALLINT",
    "integer": "INTEGER",
    "timestamp with time zone": "TIMESTAMP WITH TIME ZONE",
}


async def test_job_model_matches_schema_sql(database_url: str) -> None:
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


async def test_migrate_is_idempotent(database_url: str) -> None:
    store = Store(database_url)
    await store.migrate()
    await store.migrate()
    await store.close()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    finally:
        await conn.close()
