"""The `jobs` table as a SQLModel model. schema.sql is canonical; tests/integration/test_schema.py
checks that this model agrees with it, column by column. The engine's hot paths run named SQL
(sql/queries.sql) on asyncpg; this model is for apps that query jobs with SQLModel/SQLAlchemy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

try:
    from sqlalchemy import BigInteger, Boolean, Column, Identity, SmallInteger, Text
    from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
    from sqlmodel import Field as SQLField
    from sqlmodel import SQLModel
except ModuleNotFoundError as e:  # an optional dependency: nothing else in the package imports this module
    raise ModuleNotFoundError(
        f"jobqueue.table needs SQLModel ({e}): pip install 'jobqueue[sqlmodel]'", name=e.name
    ) from e


class Job(SQLModel, table=True):
    """The `jobs` table (schema.sql is canonical)."""

    __tablename__ = "jobs"

    id: int | None = SQLField(default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True))
    queue: str = SQLField(default="default", sa_column=Column(Text, nullable=False))
    type: str = SQLField(sa_column=Column(Text, nullable=False))
    payload: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    status: str = SQLField(default="pending", sa_column=Column(Text, nullable=False))
    priority: int = SQLField(default=5, sa_column=Column(SmallInteger, nullable=False))
    attempts: int = SQLField(default=0, nullable=False)
    max_attempts: int = SQLField(default=3, nullable=False)
    backoff: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    timeout_ms: int = SQLField(default=30000, nullable=False)
    idempotency_key: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    run_at: datetime = SQLField(sa_column=Column(TIMESTAMP(timezone=True), nullable=False))
    lease_token: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    lease_expires_at: datetime | None = SQLField(default=None, sa_column=Column(TIMESTAMP(timezone=True)))
    result: Any | None = SQLField(default=None, sa_column=Column(JSONB, nullable=True))
    error: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    history: list[dict[str, Any]] = SQLField(default_factory=list, sa_column=Column(JSONB, nullable=False))
    created_at: datetime = SQLField(sa_column=Column(TIMESTAMP(timezone=True), nullable=False))
    started_at: datetime | None = SQLField(default=None, sa_column=Column(TIMESTAMP(timezone=True)))
    finished_at: datetime | None = SQLField(default=None, sa_column=Column(TIMESTAMP(timezone=True)))
    dispatched: bool = SQLField(default=True, sa_column=Column(Boolean, nullable=False))
    schedule_id: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    scheduled_for: datetime | None = SQLField(default=None, sa_column=Column(TIMESTAMP(timezone=True)))
    group_key: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    limiter: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    last_started_at: datetime | None = SQLField(default=None, sa_column=Column(TIMESTAMP(timezone=True)))
    pending_deps: int = SQLField(default=0, nullable=False)
    has_dependents: bool = SQLField(default=False, sa_column=Column(Boolean, nullable=False))
    on_dependency_failure: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    progress: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONB, nullable=True))
    callback: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONB, nullable=True))
    created_by: int | None = SQLField(default=None, sa_column=Column(BigInteger, nullable=True))
