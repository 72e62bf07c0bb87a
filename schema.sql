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
                     CONSTRAINT jobs_status_check
                     CHECK (status IN ('waiting', 'pending', 'scheduled', 'processing', 'completed', 'failed', 'cancelled')),
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
    last_started_at  timestamptz,
    -- dependencies (0005): unfinished dependencies of a `waiting` job, whether edges point at this
    -- job (the statement recording its outcome then resolves them), and the policy when one fails
    -- (NULL: the job has no dependencies)
    pending_deps     integer     NOT NULL DEFAULT 0,
    has_dependents   boolean     NOT NULL DEFAULT false,
    on_dependency_failure text   CHECK (on_dependency_failure IN ('fail', 'ignore', 'continue')),
    -- the handler's last progress report, the completion callback as resolved at enqueue, and the
    -- job whose handler (or outcome, for a callback) created this one (0006)
    progress         jsonb,
    callback         jsonb,
    created_by       bigint
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

-- dependencies (0005): one row per edge, "job_id waits for depends_on"; state is the dependency's
-- outcome as recorded on the edge ('pending' until it ends, 'ok' completed, 'failed' failed or
-- cancelled)
CREATE TABLE IF NOT EXISTS job_deps (
    job_id     bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    depends_on bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    state      text   NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'ok', 'failed')),
    PRIMARY KEY (job_id, depends_on)
);
-- a job's dependents (the view, resolving edges, retention's guard)
CREATE INDEX IF NOT EXISTS job_deps_upstream ON job_deps (depends_on);
-- reconcile's liveness net over waiting jobs
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (id) WHERE status = 'waiting';

-- completion callbacks (0008): a job's view as JSON, and the insert of the callback jobs
CREATE OR REPLACE FUNCTION jobqueue_job_view(j jobs) RETURNS jsonb
LANGUAGE sql STABLE AS $$
SELECT jsonb_build_object(
    'id', j.id, 'queue', j.queue, 'type', j.type, 'payload', j.payload, 'status', j.status,
    'priority', j.priority, 'attempts', j.attempts, 'max_attempts', j.max_attempts,
    'backoff', j.backoff, 'timeout_ms', j.timeout_ms, 'idempotency_key', j.idempotency_key,
    'result', j.result, 'error', j.error, 'history', j.history, 'run_at', NULL,
    'created_at', to_char(j.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'started_at', to_char(j.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'finished_at', to_char(j.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'group', j.group_key, 'schedule_id', j.schedule_id,
    'scheduled_for', to_char(j.scheduled_for AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'progress', j.progress, 'callback_url', j.callback ->> 'url', 'created_by', j.created_by,
    'on_dependency_failure', j.on_dependency_failure,
    'depends_on', (SELECT COALESCE(jsonb_agg(jsonb_build_object('id', u.id, 'type', u.type, 'status', u.status)
                                             ORDER BY u.id), '[]'::jsonb)
                   FROM job_deps d JOIN jobs u ON u.id = d.depends_on WHERE d.job_id = j.id),
    'dependents', (SELECT COALESCE(jsonb_agg(jsonb_build_object('id', u.id, 'type', u.type, 'status', u.status)
                                             ORDER BY u.id), '[]'::jsonb)
                   FROM job_deps d JOIN jobs u ON u.id = d.job_id WHERE d.depends_on = j.id))
$$;

-- The completion callbacks of jobs that have just ended, inserted by the statement that ends them
-- (a CTE: `SELECT * FROM jobqueue_insert_callbacks(...)`): `ended` is a JSON array of the ended
-- rows, each with its id, status, callback (the jobs.callback column) and final_view (built in
-- that statement's RETURNING, so that it shows the row as written); each becomes a pending,
-- signed webhook.deliver job to the callback's URL, created by the job it reports on. Returns
-- what the push to Redis needs.
CREATE OR REPLACE FUNCTION jobqueue_insert_callbacks(ended jsonb, at timestamptz)
RETURNS TABLE (id bigint, queue text, priority smallint, status text, created_at timestamptz,
               run_at timestamptz, limiter text)
LANGUAGE sql VOLATILE AS $$
INSERT INTO jobs (queue, type, payload, status, priority, max_attempts, backoff, timeout_ms, run_at, created_at,
                  group_key, limiter, created_by)
SELECT e.callback ->> 'queue', 'webhook.deliver',
       jsonb_build_object('url', e.callback ->> 'url', 'event', 'job.' || e.status, 'data', e.final_view),
       'pending', 5, (e.callback ->> 'max_attempts')::int, e.callback -> 'backoff',
       (e.callback ->> 'timeout_ms')::int, at, at, e.callback ->> 'group_key', e.callback ->> 'limiter', e.id
FROM jsonb_to_recordset(COALESCE(ended, '[]'::jsonb)) AS e(id bigint, status text, callback jsonb, final_view jsonb)
ORDER BY e.id
RETURNING jobs.id, jobs.queue, jobs.priority, jobs.status, jobs.created_at, jobs.run_at, jobs.limiter
$$;
