-- 0001: the first schema (what schema.sql was before versioned migrations; every statement is
-- idempotent, so a database created from that schema.sql upgrades through here unchanged).


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
    finished_at      timestamptz
);

-- idempotency: a key is unique per queue
CREATE UNIQUE INDEX IF NOT EXISTS jobs_queue_idempotency_key
    ON jobs (queue, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- listing newest first by status (keyset paging on id); queue and type filters ride on it or on
-- the primary key. Every index costs on each state change (a status update is never HOT), so the
-- table keeps few full indexes and leans on partial ones.
CREATE INDEX IF NOT EXISTS jobs_status_id ON jobs (status, id DESC);
-- reconcile and metrics over the unfinished jobs only
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (queue, status, created_at)
    WHERE status IN ('pending', 'scheduled', 'processing');
-- retention, metrics over recent outcomes
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at, status)
    WHERE finished_at IS NOT NULL;

-- queues: the durable copy of the pause flag (Redis holds the fast copy; reconcile restores it)
CREATE TABLE IF NOT EXISTS queues (
    name       text PRIMARY KEY,
    paused     boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- metrics and alerts: when the oldest job that may run was due (min(run_at) per queue is one
-- probe, whatever the backlog). Only pending and scheduled rows are in it, so it costs on insert
-- and on a retry, never on the completion of a job.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (queue, run_at) WHERE status IN ('pending', 'scheduled');
-- metrics and alerts: dead-letter and cancelled counts per queue as index-only scans (also the
-- per-queue DLQ listing). Rows enter it only when they fail or are cancelled.
CREATE INDEX IF NOT EXISTS jobs_dead ON jobs (queue, status, id DESC) WHERE status IN ('failed', 'cancelled');
