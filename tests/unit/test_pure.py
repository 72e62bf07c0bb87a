"""Pure functions: backoff, member encoding, URL parsing, and the layout rule on stdlib names."""

from __future__ import annotations

import random
import re
import ssl
import sys
from pathlib import Path

import pytest

from jobqueue.keys import Keys, encode_member, lease_member, member_id, member_priority, strip_lease
from jobqueue.models import Backoff, JobRequest
from jobqueue.retry import backoff_delay_ms
from jobqueue.store import QUERIES, Store, parse_database_url

ROOT = Path(__file__).resolve().parents[2]


def test_exponential_backoff_doubles_and_caps() -> None:
    p = Backoff(type="exponential", delay_ms=1000, max_delay_ms=5000)
    assert [backoff_delay_ms(p, a) for a in range(1, 6)] == [1000, 2000, 4000, 5000, 5000]


def test_fixed_backoff() -> None:
    p = Backoff(type="fixed", delay_ms=750, max_delay_ms=100_000)
    assert {backoff_delay_ms(p, a) for a in range(1, 10)} == {750}


def test_jitter_only_shortens_within_its_fraction() -> None:
    p = Backoff(type="fixed", delay_ms=10_000, jitter=0.25)
    rng = random.Random(7)
    delays = [backoff_delay_ms(p, 1, rng) for _ in range(500)]
    assert min(delays) >= 7500 and max(delays) <= 10_000
    assert len(set(delays)) > 100  # it really spreads


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert backoff_delay_ms({"type": "exponential", "delay_ms": 1000, "max_delay_ms": 60_000}, 100) == 60_000


def test_member_encoding_sorts_priority_first() -> None:
    m = encode_member(7, 1_700_000_000_123, 42)
    assert m == "999992:1700000000123:42"
    assert (member_id(m), member_priority(m)) == (42, 7)
    leased = lease_member(m, "abc")
    assert member_id(leased) == 42 and strip_lease(leased) == m
    assert Keys("jq").ready_all("default")[0] == "jq:default:ready:9"


@pytest.mark.parametrize(
    ("url", "dsn", "ssl_arg"),
    [
        (
            "postgresql://u:p@ep-x-pooler.eu.aws.neon.tech/db?sslmode=require&channel_binding=require",
            "postgresql://u:p@ep-x-pooler.eu.aws.neon.tech/db",
            "require",
        ),
        ("postgres://u@localhost:5432/db", "postgresql://u@localhost:5432/db", None),
        (
            "postgresql+asyncpg://u@h/db?ssl=require&application_name=x",
            "postgresql://u@h/db?application_name=x",
            "require",
        ),
        ("postgresql://u@h/db?sslmode=disable", "postgresql://u@h/db", False),
    ],
)
def test_database_url_normalisation(url: str, dsn: str, ssl_arg: object) -> None:
    got_dsn, got_ssl = parse_database_url(url)
    assert got_dsn == dsn and got_ssl == ssl_arg


def test_verify_full_builds_a_verifying_context() -> None:
    _, ctx = parse_database_url("postgresql://u@h/db?sslmode=verify-full")
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("url", "pooled"),
    [
        ("postgresql://u@ep-cool-1234-pooler.us-east-2.aws.neon.tech/db?sslmode=require", True),
        ("postgresql://u@ep-cool-1234.us-east-2.aws.neon.tech/db?sslmode=require", False),
        ("postgresql://u@db.example.com:6432/db", True),
        ("postgresql://u@aws-0-eu.pooler.supabase.com:6543/postgres", True),
        ("postgresql://u@127.0.0.1:5432/db", False),
    ],
)
def test_statement_cache_is_off_behind_a_pooler(url: str, pooled: bool) -> None:
    assert Store(url).statement_cache is (not pooled)
    assert Store(url, statement_cache=False).statement_cache is False


def test_database_url_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="postgres"):
        parse_database_url("mysql://u@h/db")


def test_request_validation_bounds() -> None:
    with pytest.raises(ValueError):
        JobRequest.model_validate({"type": "echo", "priority": 10})
    with pytest.raises(ValueError):
        JobRequest.model_validate({"type": "echo", "delay_ms": 5, "run_at": "2030-01-01T00:00:00Z"})
    with pytest.raises(ValueError):
        JobRequest.model_validate({"type": "echo", "run_at": "2030-01-01T00:00:00"})  # naive time
    with pytest.raises(ValueError):
        JobRequest.model_validate({"type": "echo", "surprise": 1})


def test_every_named_query_is_loaded() -> None:
    assert {"insert_jobs", "claim", "finish", "cancel", "rerun", "active_jobs"} <= set(QUERIES)
    assert all(q.strip() for q in QUERIES.values())


def test_no_named_query_leaves_session_state() -> None:
    """The pool skips asyncpg's reset query on release (store._Connection), which is right only
    while no statement leaves session state behind: no session SET, LISTEN, cursor or session
    advisory lock (pg_advisory_xact_lock ends with its transaction)."""
    session_state = re.compile(
        r"^\s*(SET\s+(?!LOCAL)|RESET\b|LISTEN\b|DECLARE\b)|pg_advisory_lock|set_config\([^)]*false", re.I | re.M
    )
    for name, sql in QUERIES.items():
        assert not session_state.search(sql), name


def test_no_top_level_name_shadows_the_standard_library() -> None:
    names = {p.stem for p in ROOT.glob("*.py")} | {
        p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }
    assert not names & set(sys.stdlib_module_names), names & set(sys.stdlib_module_names)
