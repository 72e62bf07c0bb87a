-- 0003: recurring jobs. A schedule fires a job per tick; Postgres decides whether a tick fires:
-- the drain that fires it moves `next_run_at` on with a compare-and-set in the same statement as
-- the insert, and (schedule_id, scheduled_for) is unique among jobs (sql/queries.sql
-- `fire_schedules`). Redis only says when to look (the `schedules` sorted set, rebuilt from here).
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

ALTER TABLE jobs ADD COLUMN IF NOT EXISTS schedule_id text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS scheduled_for timestamptz;
-- one job per schedule and tick, whatever fires it (the second line of defence)
CREATE UNIQUE INDEX IF NOT EXISTS jobs_schedule_tick ON jobs (schedule_id, scheduled_for)
    WHERE schedule_id IS NOT NULL;
-- a schedule's jobs, newest first (GET /api/jobs?schedule_id=, its last job), and its unfinished
-- ones (overlap: skip)
CREATE INDEX IF NOT EXISTS jobs_by_schedule ON jobs (schedule_id, id DESC) WHERE schedule_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_schedule_unfinished ON jobs (schedule_id)
    WHERE schedule_id IS NOT NULL AND status IN ('pending', 'scheduled', 'processing');
