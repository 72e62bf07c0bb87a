"""The ports stay narrow: Redis commands are built only in the Redis adapter (broker.py, over the
transports), SQL lives only as named queries (sql/queries.sql, run by store.py), and the Postgres
driver is imported only by the store. The import-linter layers contract (pyproject.toml) covers
the rest of the layering; these are the rules it cannot see."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "jobqueue"
REDIS_ADAPTER = {"broker.py", "transports.py", "upstash_proxy.py"}
# A command word as the first element of a list/tuple literal, or a call on the transport.
REDIS_WORDS = re.compile(
    r"^(ZADD|ZREM|ZRANGE|ZRANGEBYSCORE|ZCARD|LPUSH|RPUSH|LMPOP|LRANGE|LLEN|SADD|SREM|SMEMBERS|SET|GET|DEL|"
    r"EVAL|EVALSHA|EXPIRE|PEXPIRE|INCR|HSET|HGET|HINCRBY|PTTL|PING)$"
)
SQL = re.compile(r"\b(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX))\b")
TRANSPORT_CALLS = {"command", "pipeline", "script", "execute_command", "evalsha"}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def rel(p: Path) -> str:
    return str(p.relative_to(PACKAGE))


def test_no_redis_command_is_built_outside_the_redis_adapter() -> None:
    offences: list[str] = []
    for path in modules():
        if rel(path) in REDIS_ADAPTER:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.List | ast.Tuple) and node.elts:
                first = node.elts[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str) and REDIS_WORDS.match(first.value):
                    offences.append(f"{rel(path)}:{node.lineno} builds [{first.value!r}, ...]")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if node.func.attr in TRANSPORT_CALLS and owner_name in ("redis", "_redis", "transport", "_client"):
                    offences.append(f"{rel(path)}:{node.lineno} calls {owner_name}.{node.func.attr}()")
    assert offences == []


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (they may describe statements without being any)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_no_sql_outside_the_named_queries() -> None:
    offences: list[str] = []
    for path in modules():
        tree = ast.parse(path.read_text())
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
                and SQL.search(node.value)
            ):
                offences.append(f"{rel(path)}:{node.lineno}: {node.value.strip()[:60]!r}")
    assert offences == []


def test_only_the_store_imports_the_postgres_driver() -> None:
    importers = {
        rel(path)
        for path in modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "asyncpg" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncpg")
    }
    assert importers == {"store.py"}


def test_the_checks_above_would_catch_an_offence() -> None:
    # The patterns must match what they guard against, or the tests above prove nothing.
    assert REDIS_WORDS.match("ZADD") and REDIS_WORDS.match("SET")
    assert SQL.search("SELECT * FROM jobs WHERE id = $1")
    assert SQL.search("UPDATE jobs SET status = 'x'")
    tree = ast.parse('jq.redis.command("SET", key, 1)\nx = ["ZREM", k, m]')
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert calls[0].func.attr == "command"  # type: ignore[attr-defined]
