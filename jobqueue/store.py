"""The Postgres adapter: a narrow port that runs named statements (jobqueue/sql/queries.sql) on
asyncpg and returns plain dicts. No SQL lives anywhere else (a test checks), and no asyncpg error
leaves this module: connectivity failures become `PostgresUnavailable`, errors of a statement
itself `StatementFailed`.

Connections are safe behind a transaction-mode pooler (Neon's `-pooler` host, PgBouncer):
`statement_cache_size=0`, so no named prepared statement outlives its transaction; and the pool is
bound to the event loop that made it, so a new loop (Mangum, `asyncio.run` per call, pytest) gets
a new pool instead of sockets that belong to a dead loop.
"""

from __future__ import annotations

import asyncio
import re
import ssl as ssl_module
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson

from .errors import PostgresUnavailable, StatementFailed

Row = dict[str, Any]


def load_queries() -> dict[str, str]:
    text = resources.files("jobqueue").joinpath("sql/queries.sql").read_text()
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip().rstrip(";")
    return queries


QUERIES = load_queries()


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The numbered migrations shipped in the package (sql/migrations/NNNN_name.sql), in order."""
    found = []
    for entry in resources.files("jobqueue").joinpath("sql/migrations").iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def parse_database_url(url: str) -> tuple[str, Any]:
    """Make a libpq/Neon/SQLAlchemy-style URL usable by asyncpg.

    Neon strings carry `sslmode=require&channel_binding=require`: asyncpg would send the unknown
    `channel_binding` to the server as a setting, and SQLAlchemy-style `+asyncpg` schemes are not
    DSNs. Returns (dsn, ssl) where ssl is the asyncpg `ssl` argument.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be a postgres:// or postgresql:// URL, not {scheme}://")
    params = parse_qsl(parts.query, keep_blank_values=True)
    ssl: Any = None
    kept = []
    for key, value in params:
        if key in ("sslmode", "ssl"):
            ssl = _ssl_arg(value)
        elif key == "channel_binding":
            continue  # asyncpg negotiates SCRAM itself; the key would reach the server as a GUC
        else:
            kept.append((key, value))
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(kept), parts.fragment))
    return dsn, ssl


def looks_pooled(dsn: str) -> bool:
    """Neon's pooled hosts carry `-pooler`; PgBouncer listens on 6432, Supabase's pooler on 6543."""
    parts = urlsplit(dsn)
    return "-pooler" in (parts.hostname or "") or parts.port in (6432, 6543)


def _ssl_arg(mode: str) -> Any:
    mode = mode.lower()
    if mode in ("disable", "false", "0"):
        return False
    if mode in ("allow", "prefer"):
        return "prefer"
    if mode in ("require", "true", "1"):
        return "require"
    if mode in ("verify-ca", "verify-full"):
        return ssl_module.create_default_context()
    raise ValueError(f"unsupported sslmode {mode!r}")


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # orjson: a drain decodes every claimed payload; the stdlib json was a visible share of it.
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    """A pool connection that skips asyncpg's reset query on release.

    The default (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`) is one more
    round trip after every statement, the largest part of a single enqueue's own time. It undoes
    session state, and the pool's connections never have any: they run only the named statements,
    none of which sets a session variable, LISTENs, declares a cursor outside a transaction or
    takes a session advisory lock (migrate_lock is transaction-scoped); tests/unit/test_pure.py
    checks queries.sql for these. Behind a transaction-mode pooler (PgBouncer, Neon's -pooler)
    the query was useless anyway: it ran on whichever server connection the pooler picked. An
    open transaction is still rolled back on release (asyncpg does that whatever this returns)."""

    def get_reset_query(self) -> str:
        return ""


_DOWN = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.TooManyConnectionsError,
)


class Store:
    """Runs named statements; returns plain dicts. Counts statements for the O(1) tests."""

    def __init__(
        self, url: str, *, pool_max: int = 10, timeout_s: float = 10.0, statement_cache: bool | None = None
    ) -> None:
        self.dsn, self._ssl = parse_database_url(url)
        # Named prepared statements do not survive a transaction-mode pooler (a later transaction
        # lands on another server connection), so the cache is off behind one; on a direct
        # connection it saves a round trip per statement.
        self.statement_cache = not looks_pooled(self.dsn) if statement_cache is None else statement_cache
        self._pool_max = pool_max
        self._timeout = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self.statements = 0

    async def _get_pool(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
            self._loop = loop
            self._pool = None
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self.dsn,
                        ssl=self._ssl,
                        min_size=0,
                        max_size=self._pool_max,
                        statement_cache_size=100 if self.statement_cache else 0,
                        command_timeout=self._timeout,
                        timeout=self._timeout,
                        max_inactive_connection_lifetime=60,
                        init=_init_connection,
                        connection_class=_Connection,
                    )
                except _DOWN as e:
                    raise PostgresUnavailable(f"postgres: {type(e).__name__}: {e}") from e
            return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn:
                yield conn
        except _DOWN as e:
            raise PostgresUnavailable(f"postgres: {type(e).__name__}: {e}") from e
        except asyncpg.PostgresError as e:
            raise StatementFailed(f"postgres refused a statement: {type(e).__name__}: {e}") from e

    async def fetch(self, name: str, *args: Any) -> list[Row]:
        """Run the named statement; its rows as dicts."""
        self.statements += 1
        sql = QUERIES[name]
        async with self.connection() as conn:
            try:
                rows = await conn.fetch(sql, *args)
            except _DOWN as e:
                raise PostgresUnavailable(f"postgres: {type(e).__name__}: {e}") from e
        return [dict(r) for r in rows]

    async def fetch_on(self, connection: Any, name: str, *args: Any) -> list[Row]:
        """Run the named statement on an application's own asyncpg connection (inside its
        transaction, if it has one open). Its codecs are not ours: JSON arrives as text."""
        self.statements += 1
        try:
            rows = await connection.fetch(QUERIES[name], *args)
        except _DOWN as e:
            raise PostgresUnavailable(f"postgres: {type(e).__name__}: {e}") from e
        except asyncpg.PostgresError as e:
            raise StatementFailed(f"postgres refused a statement: {type(e).__name__}: {e}") from e
        return [dict(r) for r in rows]

    async def session_connection(self, session: Any) -> Any:
        """The asyncpg connection under a SQLAlchemy/SQLModel AsyncSession, with the session's
        transaction started on it (SQLAlchemy's asyncpg adapter begins lazily, at its first
        statement; a job inserted before that would commit on its own)."""
        conn = await session.connection()
        driver = (await conn.get_raw_connection()).driver_connection
        if not driver.is_in_transaction():
            await conn.exec_driver_sql(QUERIES["ping"])
        return driver

    async def fetchrow(self, name: str, *args: Any) -> Row | None:
        rows = await self.fetch(name, *args)
        return rows[0] if rows else None

    async def execute_script(self, sql: str) -> None:
        self.statements += 1
        async with self.connection() as conn:
            await conn.execute(sql)

    async def migrate(self) -> list[int]:
        """Apply the migrations this database has not had, in order, in one transaction, and
        record each; returns the versions applied. Serialised by an advisory lock held for the
        transaction, so concurrent deploys do not race; running it again applies nothing. Every
        migration is idempotent too, so a database made from schema.sql (which records none)
        upgrades cleanly."""
        applied: list[int] = []
        async with self.connection() as conn, conn.transaction():
            await conn.execute(QUERIES["migrate_lock"])
            await conn.execute(QUERIES["migrations_table"])
            done = {r["version"] for r in await conn.fetch(QUERIES["migrations_applied"])}
            for m in migrations():
                if m.version in done:
                    continue
                await conn.execute(m.sql)
                await conn.execute(QUERIES["migration_record"], m.version, m.name)
                applied.append(m.version)
        return applied

    @staticmethod
    async def create_database(admin_url: str, name: str, *, template: str | None = None) -> None:
        """CREATE DATABASE (for the test harness); names are checked: identifiers cannot be parameters."""
        sql = QUERIES["create_database_from" if template else "create_database"]
        await _admin(admin_url, sql.format(name=_ident(name), template=_ident(template or name)))

    @staticmethod
    async def drop_database(admin_url: str, name: str) -> None:
        await _admin(admin_url, QUERIES["drop_database"].format(name=_ident(name)))

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval(QUERIES["ping"])

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._loop is asyncio.get_running_loop():
            await pool.close()


def _ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name


async def _admin(admin_url: str, sql: str) -> None:
    dsn, ssl = parse_database_url(admin_url)
    try:
        conn = await asyncpg.connect(dsn, ssl=ssl)
    except _DOWN as e:
        raise PostgresUnavailable(f"postgres: {type(e).__name__}: {e}") from e
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def ids_array(ids: Sequence[int]) -> list[int]:
    return [int(i) for i in ids]
