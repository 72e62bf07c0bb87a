-- 0005: dependencies. A job may wait for other jobs (`depends_on`): it has the status `waiting`,
-- is never indexed in Redis, and counts its unfinished dependencies in `pending_deps`; each edge
-- is a row of job_deps whose `state` records its dependency's outcome ('pending' until then,
-- 'ok' when it completed, 'failed' when it failed or was cancelled). The statement that records
-- a dependency's outcome on its edges also moves the dependents whose count reaches zero to
-- `pending` (or cancels them under the default failure policy), see queries.sql
-- `resolve_dependencies`. `has_dependents` tells the statement that records a completion that it
-- has edges to resolve; `on_dependency_failure` is NULL for a job without dependencies.
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('waiting', 'pending', 'scheduled', 'processing', 'completed', 'failed', 'cancelled'));
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS pending_deps integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS has_dependents boolean NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS on_dependency_failure text
    CHECK (on_dependency_failure IN ('fail', 'ignore', 'continue'));
CREATE TABLE IF NOT EXISTS job_deps (
    job_id     bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    depends_on bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    state      text   NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'ok', 'failed')),
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX IF NOT EXISTS job_deps_upstream ON job_deps (depends_on);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (id) WHERE status = 'waiting';
