-- jobqueue: the canonical DDL of the current schema, for reading and for `psql -f schema.sql`.
-- `jobqueue migrate` brings any database here through the numbered migrations shipped in the
-- package (jobqueue/sql/migrations/, each idempotent, applied once and recorded in
-- jobqueue_migrations). tests/integration/test_schema.py checks that a migrated database and one
-- made from this file are the same, and that the SQLModel `Job` model (jobqueue/table.py) agrees.

CREATE TABLE IF NOT EXISTS jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            text        NOT NULL DEFAULT 'default',
    type             text        NOT NULL,
    payload          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'scheduled', 'processing', 'completed', 'failed', 'cancelled')),
    priority         smallint    NOT NULL DEFAULT 5 CHECK (priority BETWEEN 0 AND 9),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer     NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
    -- {"type": "fixed"|"exponential", "delay_ms": int, "max_delay_ms": int, "jitter": 0..1}
    backoff          jsonb       NOT NULL DEFAULT '{"type": "exponential", "delay_ms": 1000, "max_delay_ms": 3600000, "jitter": 0}'::jsonb,
    timeout_ms       integer     NOT NULL DEFAULT 30000 CHECK (timeout_ms > 0),
    idempotency_key  text,
    -- when the job may run: enqueue time, a delay, or the next retry after a backoff
    run_at           timestamptz NOT NULL DEFAULT now(),
    lease_token      text,
    lease_expires_at timestamptz,
    result           jsonb,
    error            text,
    -- one object per attempt: {"attempt", "started_at", "ended_at", "outcome", "error"}
    history          jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- false until a job enqueued inside an application's transaction is indexed in Redis (0002)
    dispatched       boolean     NOT NULL DEFAULT true,
    -- the schedule that fired it and the tick it stands for (0003)
    schedule_id      text,
    scheduled_for    timestamptz,
    -- its group (a tenant, a destination), its Redis member's flow-control suffix and the latest
    -- attempt's start (started_at keeps the first), from which reconcile rebuilds rates (0004)
    group_key        text,
    limiter          text,
    last_started_at  timestamptz
);

-- idempotency: a key is unique per queue
CREATE UNIQUE INDEX IF NOT EXISTS jobs_queue_idempotency_key
    ON jobs (queue, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- listing newest first by status (keyset paging on id); queue and type filters ride on it or on
-- the primary key. Every index costs on each state change (a status update is never HOT), so the
-- table keeps few full indexes and leans on partial ones.
CREATE INDEX IF NOT EXISTS jobs_status_id ON jobs (status, id DESC);
-- reconcile, the unfinished counts per queue and status, and the earliest due time per queue and
-- status (min(run_at) is one probe per status) over the unfinished jobs only (0007: it replaced
-- jobs_active and jobs_due, so an enqueued row goes into one partial index, not two)
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (queue, status, run_at)
    WHERE status IN ('pending', 'scheduled', 'processing');
-- retention, metrics over recent outcomes
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at, status)
    WHERE finished_at IS NOT NULL;

-- queues: the durable copy of the pause flag (Redis holds the fast copy; reconcile restores it)
CREATE TABLE IF NOT EXISTS queues (
    name       text PRIMARY KEY,
    paused     boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- flow control and defaults (0004): models.QueueSettings as JSON
    settings   jsonb       NOT NULL DEFAULT '{}'::jsonb
);

-- metrics and alerts: dead-letter and cancelled counts per queue as index-only scans (also the
-- per-queue DLQ listing). Rows enter it only when they fail or are cancelled.
CREATE INDEX IF NOT EXISTS jobs_dead ON jobs (queue, status, id DESC) WHERE status IN ('failed', 'cancelled');

-- jobs enqueued in an application's transaction that are not indexed yet: the dispatch sweep (0002)
CREATE INDEX IF NOT EXISTS jobs_undispatched ON jobs (id) WHERE NOT dispatched;

-- recurring jobs (0003)
CREATE TABLE IF NOT EXISTS schedules (
    id               text        PRIMARY KEY,
    type             text        NOT NULL,
    payload          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    queue            text,                      -- NULL: the job type's queue
    priority         smallint    NOT NULL DEFAULT 5 CHECK (priority BETWEEN 0 AND 9),
    max_attempts     integer     CHECK (max_attempts BETWEEN 1 AND 100),
    backoff          jsonb,
    timeout_ms       integer     CHECK (timeout_ms > 0),
    cron             text,
    tz               text        NOT NULL DEFAULT 'UTC',
    every_ms         bigint      CHECK (every_ms >= 1000),
    misfire          text        NOT NULL DEFAULT 'coalesce' CHECK (misfire IN ('coalesce', 'catch_up', 'skip')),
    misfire_grace_ms bigint      CHECK (misfire_grace_ms >= 0),
    catch_up_limit   integer     NOT NULL DEFAULT 10 CHECK (catch_up_limit BETWEEN 1 AND 1000),
    overlap          text        NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'skip')),
    paused           boolean     NOT NULL DEFAULT false,
    -- the earliest tick not yet fired (or skipped): the compare-and-set watermark
    next_run_at      timestamptz NOT NULL,
    -- the last tick fired or passed over, and how the schedule was last defined in code (NULL: by the API)
    last_run_at      timestamptz,
    code_hash        text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (every_ms IS NULL))
);

-- one job per schedule and tick, whatever fires it (the second line of defence)
CREATE UNIQUE INDEX IF NOT EXISTS jobs_schedule_tick ON jobs (schedule_id, scheduled_for)
    WHERE schedule_id IS NOT NULL;
-- a schedule's jobs, newest first (GET /api/jobs?schedule_id=, its last job), and its unfinished
-- ones (overlap: skip)
CREATE INDEX IF NOT EXISTS jobs_by_schedule ON jobs (schedule_id, id DESC) WHERE schedule_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_schedule_unfinished ON jobs (schedule_id)
    WHERE schedule_id IS NOT NULL AND status IN ('pending', 'scheduled', 'processing');
