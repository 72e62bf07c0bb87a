-- Named queries for the store. Each block opens with "-- name: NAME" and a one-line description.
-- Times are parameters, never now(): the engine injects its clock so tests can move time.

-- name: ping
-- Is Postgres there (the health route)?
SELECT 1;

-- name: migrate_lock
-- Serialises concurrent migrations (deploys) for the length of the transaction.
SELECT pg_advisory_xact_lock(7428190331);

-- name: migrations_table
-- The record of applied migrations (created by the first `jobqueue migrate`).
CREATE TABLE IF NOT EXISTS jobqueue_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
-- The versions already applied.
SELECT version FROM jobqueue_migrations ORDER BY version;

-- name: migration_record
-- Record one applied migration.
INSERT INTO jobqueue_migrations (version, name) VALUES ($1, $2);

-- name: insert_jobs
-- Insert many jobs in one statement from one JSON array ($1, text), in array order ("n"); a
-- repeated (queue, idempotency_key) inserts nothing. Times are microseconds since the epoch; a
-- key left out is null. `json`, not `jsonb`: the document is read once, and jsonb's input would
-- build a tree of it first (at plan time, since the planner folds the constant).
-- $2 dispatched: false for jobs enqueued inside an application's transaction (pushed after it).
-- An option the document leaves null takes the queue's default (queues.settings.defaults), else
-- the engine's ($3 max_attempts, $4 timeout_ms, $5 backoff); the row's values are returned.
-- `callback` (a completion callback as resolved at enqueue) and `created_by` (the job whose
-- handler enqueued this one) are in the document only for the jobs that have them.
INSERT INTO jobs (queue, type, payload, status, priority, max_attempts, backoff, timeout_ms,
                  idempotency_key, run_at, created_at, dispatched, group_key, limiter, callback, created_by)
SELECT x.queue, x.type, x.payload, x.status, x.priority,
       COALESCE(x.max_attempts, (q.settings #>> '{defaults,max_attempts}')::int, $3::int),
       COALESCE(x.backoff, q.settings #> '{defaults,backoff}', $5::text::jsonb),
       COALESCE(x.timeout_ms, (q.settings #>> '{defaults,timeout_ms}')::int, $4::int),
       x.idempotency_key,
       'epoch'::timestamptz + x.run_at_us * interval '1 microsecond',
       'epoch'::timestamptz + x.created_us * interval '1 microsecond',
       $2::boolean, x.group_key, x.limiter, x.callback, x.created_by
FROM json_to_recordset($1::text::json)
    AS x(n int, queue text, type text, payload jsonb, status text, priority smallint, max_attempts int,
         backoff jsonb, timeout_ms int, idempotency_key text, run_at_us bigint, created_us bigint,
         group_key text, limiter text, callback jsonb, created_by bigint)
LEFT JOIN queues q ON q.name = x.queue
ORDER BY x.n
ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, queue, idempotency_key, max_attempts, timeout_ms, backoff::text AS backoff_text;

-- name: jobs_by_keys
-- The existing jobs for (queue, idempotency_key) pairs, for enqueues that hit a known key.
SELECT j.* FROM jobs j
JOIN unnest($1::text[], $2::text[]) AS k(queue, key) ON j.queue = k.queue AND j.idempotency_key = k.key;

-- name: get_job
-- One job by id.
SELECT * FROM jobs WHERE id = $1;

-- name: get_job_graph
-- One job by id with the graph around it ($2 caps each side): the jobs it depends on and its
-- dependents, each as id, type and status (index lookups on job_deps; empty lists for a job
-- outside any graph), so a job's view is one statement.
SELECT j.*,
    (SELECT COALESCE(jsonb_agg(jsonb_build_object('id', x.id, 'type', x.type, 'status', x.status) ORDER BY x.id),
                     '[]'::jsonb)
     FROM (SELECT u.id, u.type, u.status FROM job_deps d JOIN jobs u ON u.id = d.depends_on
           WHERE d.job_id = j.id ORDER BY u.id LIMIT $2) x) AS depends_on,
    (SELECT COALESCE(jsonb_agg(jsonb_build_object('id', x.id, 'type', x.type, 'status', x.status) ORDER BY x.id),
                     '[]'::jsonb)
     FROM (SELECT u.id, u.type, u.status FROM job_deps d JOIN jobs u ON u.id = d.job_id
           WHERE d.depends_on = j.id ORDER BY u.id LIMIT $2) x) AS dependents
FROM jobs j WHERE j.id = $1;

-- name: list_jobs
-- A page of jobs, newest first, keyset-paged on id: optional $1 queue, $2 type, $3 cursor (ids
-- below it), $4 search term, which matches an idempotency key or a type exactly, the id $5
-- (the term when it is a number), or payload text through $6 (an ILIKE pattern with the term's
-- wildcards escaped); $7 limit; $8 schedule id. The status filter has its own query (its index
-- leads with status).
SELECT * FROM jobs
WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR type = $2) AND ($3::bigint IS NULL OR id < $3)
  AND ($4::text IS NULL OR id = $5::bigint OR idempotency_key = $4 OR type = $4
       OR payload::text ILIKE $6::text ESCAPE '\')
  AND ($8::text IS NULL OR schedule_id = $8)
ORDER BY id DESC LIMIT $7;

-- name: list_jobs_by_status
-- As list_jobs, for one status ($9), through the index on (status, id).
SELECT * FROM jobs
WHERE status = $9::text
  AND ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR type = $2) AND ($3::bigint IS NULL OR id < $3)
  AND ($4::text IS NULL OR id = $5::bigint OR idempotency_key = $4 OR type = $4
       OR payload::text ILIKE $6::text ESCAPE '\')
  AND ($8::text IS NULL OR schedule_id = $8)
ORDER BY id DESC LIMIT $7;

-- name: claim
-- Grant the claims for popped ids: count the attempt and set each job's own lease; fail rows whose
-- lease expired on their last attempt; report scheduled rows that are not due ('defer') and rows
-- another drain still holds ('held', with its token and deadline, so the caller hands the lease
-- entry back). Ids not returned are dropped from Redis (gone, cancelled, finished, or being
-- granted by a concurrent claim of a duplicate entry).
-- $2 now, $3 lease token, $4 the drain's deadline, $5 grace ms, $6 now as ISO-8601 UTC text.
-- A lease runs to the job's own timeout plus the grace, capped by the drain's deadline plus the
-- grace (no job runs past the drain's deadline); the drain's heartbeat extends the leases of the
-- jobs it still holds, so a live drain's jobs are never recovered and a dead drain's come back
-- within their timeout plus the grace. Kind 'callback' rows are completion callbacks of the dead
-- rows (type holds the callback's limiter, lease_token its status): the caller pushes them.
WITH cand AS (
    SELECT id, status, attempts, max_attempts, run_at
    FROM jobs
    WHERE id = ANY($1::bigint[])
      AND (status IN ('pending', 'scheduled') OR (status = 'processing' AND lease_expires_at <= $2::timestamptz))
    ORDER BY id
    -- NO KEY UPDATE (the claim changes no key): an edge of job_deps being inserted holds a KEY
    -- SHARE lock on the job it depends on, which must not make the claim skip (and drop) it.
    FOR NO KEY UPDATE SKIP LOCKED
),
held AS (
    SELECT id, lease_token, lease_expires_at FROM jobs
    WHERE id = ANY($1::bigint[]) AND status = 'processing' AND lease_expires_at > $2::timestamptz
),
dead AS (
    UPDATE jobs j SET
        status = 'failed', finished_at = $2, lease_token = NULL, lease_expires_at = NULL,
        error = 'lease expired: the worker running attempt ' || j.attempts || ' stopped before it finished',
        history = jsonb_set(j.history, ARRAY[(jsonb_array_length(j.history) - 1)::text],
                            (j.history -> -1) || jsonb_build_object('ended_at', $6::text, 'outcome', 'lost',
                                                                   'error', 'lease expired'))
    FROM cand c
    WHERE j.id = c.id AND c.status = 'processing' AND c.attempts >= c.max_attempts
    RETURNING j.id, j.queue, j.type, j.attempts, j.error, j.status, j.callback,
       CASE WHEN j.callback IS NOT NULL AND j.status IN ('completed', 'failed', 'cancelled')
            THEN jobqueue_job_view(j) END AS final_view  -- its callback's body (migration 0008)
),
callbacks AS (
    -- The completion callbacks of the jobs that ended here, in this same statement: an outcome
    -- never lacks its callback (migration 0008).
    SELECT * FROM jobqueue_insert_callbacks(
        (SELECT jsonb_agg(f) FROM dead f WHERE f.final_view IS NOT NULL), $2::timestamptz)
),
run AS (
    UPDATE jobs j SET
        status = 'processing',
        attempts = j.attempts + 1,
        lease_token = $3::text,
        lease_expires_at = LEAST($2::timestamptz + make_interval(secs => j.timeout_ms / 1000.0), $4::timestamptz)
                           + make_interval(secs => $5::int / 1000.0),
        started_at = COALESCE(j.started_at, $2),
        last_started_at = $2,
        history = (CASE WHEN c.status = 'processing' AND jsonb_array_length(j.history) > 0
                        THEN jsonb_set(j.history, ARRAY[(jsonb_array_length(j.history) - 1)::text],
                                       (j.history -> -1) || jsonb_build_object('ended_at', $6::text, 'outcome', 'lost',
                                                                              'error', 'lease expired'))
                        ELSE j.history END)
                  || jsonb_build_array(jsonb_build_object('attempt', j.attempts + 1, 'started_at', $6::text))
    FROM cand c
    WHERE j.id = c.id
      AND NOT (c.status = 'processing' AND c.attempts >= c.max_attempts)
      AND NOT (c.status = 'scheduled' AND c.run_at > $2)
    RETURNING j.id, j.queue, j.type, j.payload, j.attempts, j.max_attempts, j.timeout_ms,
              j.backoff::text AS backoff, j.priority, j.created_at, (c.status = 'processing') AS recovered,
              j.lease_expires_at, jsonb_array_length(j.history) AS history_len
)
SELECT 'run' AS kind, id, queue, type, payload, attempts, max_attempts, timeout_ms, backoff,
       priority, created_at, recovered, NULL::timestamptz AS run_at, NULL::text AS error,
       NULL::text AS lease_token, lease_expires_at, history_len FROM run
UNION ALL
SELECT 'dead', id, queue, type, NULL, attempts, NULL, NULL, NULL::text, NULL, NULL, true, NULL, error, NULL, NULL,
       NULL
FROM dead
UNION ALL
SELECT 'defer', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL::text, NULL, NULL, false, run_at, NULL, NULL, NULL,
       NULL
FROM cand WHERE status = 'scheduled' AND run_at > $2
UNION ALL
SELECT 'held', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL::text, NULL, NULL, false, NULL, NULL, lease_token,
       lease_expires_at, NULL
FROM held
UNION ALL
SELECT 'callback', id, queue, limiter, NULL, NULL, NULL, NULL, NULL::text, priority, created_at, false, run_at, NULL,
       status, NULL, NULL
FROM callbacks;

-- name: extend_leases
-- Heartbeat: move the leases a drain still holds to later deadlines (never earlier); only the
-- holder of each lease (its token) may. Returns the ids that are still held, with their deadline.
UPDATE jobs j SET lease_expires_at = GREATEST(j.lease_expires_at, l.until)
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS l(id, token, until)
WHERE j.id = l.id AND j.status = 'processing' AND j.lease_token = l.token
RETURNING j.id, j.lease_expires_at;

-- name: finish
-- Record a group of outcomes in one statement; only each lease's holder (its token in $8) may write.
-- $9 now, $10 now as ISO-8601 UTC text (history times do not depend on the session's TimeZone).
-- outcome "released" (claimed, never started) gives the attempt back and drops its history entry;
-- "rate_limited" (the handler said slow down) gives the attempt back and keeps its entry.
-- $11 each job's last progress report (JSON text; null keeps what the row has). Rows of kind 'job'
-- are the outcomes written; rows of kind 'callback' the completion callbacks inserted (to push).
WITH o AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                         $6::text[], $7::int[], $8::text[], $11::text[])
        AS o(id, status, result, error, run_at, outcome, duration_ms, token, progress)
),
fin AS (
UPDATE jobs j SET
    status = o.status,
    progress = COALESCE(o.progress::jsonb, j.progress),
    result = CASE WHEN o.status = 'completed' THEN o.result::jsonb ELSE j.result END,
    error = CASE WHEN o.outcome IN ('released', 'rate_limited') THEN j.error WHEN o.status = 'completed' THEN NULL
                 ELSE o.error END,
    run_at = COALESCE(o.run_at, j.run_at),
    attempts = CASE WHEN o.outcome IN ('released', 'rate_limited') THEN j.attempts - 1 ELSE j.attempts END,
    started_at = CASE WHEN o.outcome = 'released' AND j.attempts = 1 THEN NULL ELSE j.started_at END,
    finished_at = CASE WHEN o.status IN ('completed', 'failed') THEN $9::timestamptz ELSE NULL END,
    lease_token = NULL,
    lease_expires_at = NULL,
    history = CASE WHEN o.outcome = 'released' THEN j.history - (-1)
                   ELSE jsonb_set(j.history, ARRAY[(jsonb_array_length(j.history) - 1)::text],
                                  (j.history -> -1) || jsonb_build_object('ended_at', $10::text, 'outcome', o.outcome,
                                                                         'error', o.error,
                                                                         'duration_ms', o.duration_ms))
              END
FROM o
WHERE j.id = o.id AND j.status = 'processing' AND j.lease_token = o.token
-- The final view only for a job with a callback: the others return what they always did.
-- has_dependents: edges to resolve (resolve_dependencies) once this is committed; the flag is read
-- from the row as updated, the EXISTS covers edges committed before this statement began.
RETURNING j.id, j.status, j.callback,
       (j.has_dependents OR EXISTS (SELECT 1 FROM job_deps d WHERE d.depends_on = j.id AND d.state = 'pending'))
           AS has_dependents,
       CASE WHEN j.callback IS NOT NULL AND j.status IN ('completed', 'failed', 'cancelled')
            THEN jobqueue_job_view(j) END AS final_view  -- its callback's body (migration 0008)
),
callbacks AS (
    -- The completion callbacks of the jobs that ended here, in this same statement: an outcome
    -- never lacks its callback (migration 0008).
    SELECT * FROM jobqueue_insert_callbacks(
        (SELECT jsonb_agg(f) FROM fin f WHERE f.final_view IS NOT NULL), $9::timestamptz)
)
SELECT 'job' AS kind, id, NULL::text AS queue, NULL::smallint AS priority, NULL::text AS status,
       NULL::timestamptz AS created_at, NULL::timestamptz AS run_at, NULL::text AS limiter, has_dependents FROM fin
UNION ALL
SELECT 'callback', id, queue, priority, status, created_at, run_at, limiter, false FROM callbacks;

-- name: cancel
-- Cancel a job that has not started (a waiting one too); a cancelled job's id may stay in Redis:
-- the claim drops it. Its completion callback, if it asked for one, is inserted here too (cb_*
-- columns: to push).
WITH c AS (
    UPDATE jobs j SET status = 'cancelled', finished_at = $2::timestamptz, run_at = $2::timestamptz
    WHERE j.id = $1 AND j.status IN ('pending', 'scheduled', 'waiting')
    RETURNING j.*,
       CASE WHEN j.callback IS NOT NULL AND j.status IN ('completed', 'failed', 'cancelled')
            THEN jobqueue_job_view(j) END AS final_view  -- its callback's body (migration 0008)
),
callbacks AS (
    -- The completion callbacks of the jobs that ended here, in this same statement: an outcome
    -- never lacks its callback (migration 0008).
    SELECT * FROM jobqueue_insert_callbacks(
        (SELECT jsonb_agg(f) FROM c f WHERE f.final_view IS NOT NULL), $2::timestamptz)
)
SELECT c.*, cb.id AS cb_id, cb.queue AS cb_queue, cb.priority AS cb_priority, cb.status AS cb_status,
       cb.created_at AS cb_created_at, cb.run_at AS cb_run_at, cb.limiter AS cb_limiter
FROM c LEFT JOIN callbacks cb ON true;

-- name: rerun
-- Re-run failed or cancelled jobs with a fresh set of attempts; the history keeps the old ones.
UPDATE jobs SET status = 'pending', attempts = 0, run_at = $2::timestamptz, finished_at = NULL, result = NULL,
                lease_token = NULL, lease_expires_at = NULL,
                history = history || jsonb_build_array(jsonb_build_object('requeued_at', $3::text,
                                                                          'previous_status', status))
WHERE id = ANY($1::bigint[]) AND status IN ('failed', 'cancelled')
RETURNING *;

-- name: failed_ids_by_filter
-- A chunk of dead-lettered ids matching an optional queue and type, for replay by filter.
SELECT id FROM jobs
WHERE status = 'failed' AND ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR type = $2)
  AND id > $3
ORDER BY id LIMIT $4;

-- name: purge_failed
-- Delete a bounded chunk of dead-lettered jobs that finished before the cutoff.
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE status = 'failed' AND finished_at < $1
      AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs w ON w.id = d.job_id
                      WHERE d.depends_on = jobs.id AND w.status IN ('waiting', 'pending', 'scheduled', 'processing'))
    ORDER BY finished_at LIMIT $2
) RETURNING id;

-- name: retention
-- Delete a bounded chunk ($4) of finished jobs of one status older than the cutoff, outside the
-- queues that have an age rule of their own ($3) (housekeeping). Like every retention rule, it
-- keeps a finished job that an unfinished one depends on (its result is that job's input).
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE finished_at < $2 AND status = $1 AND queue <> ALL($3::text[])
      AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs w ON w.id = d.job_id
                      WHERE d.depends_on = jobs.id AND w.status IN ('waiting', 'pending', 'scheduled', 'processing'))
    ORDER BY finished_at LIMIT $4
) RETURNING id;

-- name: retention_queue_age
-- A queue's own age rule: a bounded chunk ($4) of its finished jobs of one status older than $3.
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE finished_at < $3 AND status = $2 AND queue = $1
      AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs w ON w.id = d.job_id
                      WHERE d.depends_on = jobs.id AND w.status IN ('waiting', 'pending', 'scheduled', 'processing'))
    ORDER BY finished_at LIMIT $4
) RETURNING id;

-- name: retention_queue_count
-- A queue's count rule: keep its newest $3 finished jobs of one status (by id), delete a bounded
-- chunk ($4) of the rest.
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE queue = $1 AND status = $2 AND id NOT IN (
        SELECT id FROM jobs WHERE queue = $1 AND status = $2 ORDER BY id DESC LIMIT $3)
      AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs w ON w.id = d.job_id
                      WHERE d.depends_on = jobs.id AND w.status IN ('waiting', 'pending', 'scheduled', 'processing'))
    ORDER BY id DESC LIMIT $4
) RETURNING id;

-- name: dispatch_jobs
-- Take the dispatch of committed jobs enqueued inside an application's transaction ($1 ids): only
-- the caller whose update flips `dispatched` pushes them, so the after-commit push and the sweep
-- never both do. Returns what reconcile's push needs.
UPDATE jobs SET dispatched = true
WHERE id = ANY($1::bigint[]) AND NOT dispatched
RETURNING id, queue, priority, status, created_at, run_at, lease_expires_at, limiter;

-- name: dispatch_sweep
-- The dispatch sweep: up to $1 committed jobs that were never pushed (their process died between
-- the application's commit and the push, or the application managed its transaction itself).
UPDATE jobs SET dispatched = true
WHERE id IN (SELECT id FROM jobs WHERE NOT dispatched ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id, queue, priority, status, created_at, run_at, lease_expires_at, limiter;

-- name: active_jobs
-- Unfinished jobs for reconcile (all queues when $1 is null), keyset-paged on id.
SELECT id, queue, priority, status, created_at, run_at, lease_expires_at, lease_token, limiter FROM jobs
WHERE status IN ('pending', 'scheduled', 'processing') AND ($1::text IS NULL OR queue = $1) AND id > $2
ORDER BY id LIMIT $3;

-- name: active_queues
-- The queues that have unfinished jobs: a loose index scan of jobs_unfinished (one probe per queue).
WITH RECURSIVE q(queue) AS (
    (SELECT queue FROM jobs WHERE status IN ('pending', 'scheduled', 'processing') ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM jobs j
            WHERE j.status IN ('pending', 'scheduled', 'processing') AND j.queue > q.queue
            ORDER BY j.queue LIMIT 1)
    FROM q WHERE q.queue IS NOT NULL
)
SELECT queue FROM q WHERE queue IS NOT NULL;

-- name: queue_counts
-- Jobs per queue and status.
SELECT queue, status, count(*)::bigint AS n FROM jobs GROUP BY queue, status;

-- name: set_paused
-- Record a queue's pause flag durably.
INSERT INTO queues (name, paused, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = EXCLUDED.updated_at;

-- name: queues
-- Every queue with a row (paused once, or with settings): its pause flag and settings.
SELECT name, paused, settings FROM queues ORDER BY name;

-- name: queue_settings_put
-- Replace a queue's settings ($2, JSON without nulls), keeping its pause flag. Returns the row.
INSERT INTO queues (name, paused, updated_at, settings) VALUES ($1, false, $3, $2::text::jsonb)
ON CONFLICT (name) DO UPDATE SET settings = EXCLUDED.settings, updated_at = EXCLUDED.updated_at
RETURNING name, paused, settings;

-- name: recent_starts
-- The latest start per queue and flow-control suffix since $1 (jobs.last_started_at, any attempt's):
-- after Redis lost its limiters, each rate's state is rebuilt from these (reconcile.py).
SELECT queue, COALESCE(limiter, '') AS limiter, max(last_started_at) AS last_start
FROM jobs WHERE last_started_at > $1 AND queue = ANY($2::text[])
GROUP BY queue, limiter;

-- name: metrics_counts
-- Per queue: unfinished counts (jobs_unfinished; waiting ones through jobs_waiting), failed and
-- cancelled counts (jobs_dead), the earliest run_at among pending and scheduled jobs
-- (jobs_unfinished, one probe per status: kind 'due') and the queues
-- table's rows that are paused or have settings (kind 'queue': n is the pause flag as 0/1).
-- Index-only scans over those partial indexes; completed rows are never read.
WITH c AS (
    SELECT queue, status, count(*)::bigint AS n FROM jobs
    WHERE status IN ('pending', 'scheduled', 'processing') GROUP BY queue, status
    UNION ALL
    SELECT queue, status, count(*)::bigint FROM jobs
    WHERE status IN ('failed', 'cancelled') GROUP BY queue, status
    UNION ALL
    SELECT queue, status, count(*)::bigint FROM jobs WHERE status = 'waiting' GROUP BY queue, status
)
SELECT queue, status AS kind, n, NULL::timestamptz AS next_run_at, NULL::jsonb AS settings FROM c
UNION ALL
SELECT q.queue, 'due', NULL,
       LEAST((SELECT min(j.run_at) FROM jobs j WHERE j.queue = q.queue AND j.status = 'pending'),
             (SELECT min(j.run_at) FROM jobs j WHERE j.queue = q.queue AND j.status = 'scheduled')), NULL
FROM (SELECT DISTINCT queue FROM c WHERE status IN ('pending', 'scheduled')) q
UNION ALL
SELECT name, 'queue', paused::int::bigint, NULL, settings FROM queues WHERE paused OR settings <> '{}'::jsonb;

-- name: metrics_finished
-- Outcomes of finished jobs, through jobs_finished: kind 'attempts' counts the last day's
-- (finished_at > $1) per queue, status and attempts (k); over the last hour (finished_at > $2) kind
-- 'summary' has the counts and the execution and wait statistics per queue, and kind 'minute' the
-- completed jobs per whole minute (k) before $3 = now. Only the hour's rows are read twice.
WITH h AS MATERIALIZED (
    SELECT queue, status, finished_at, (history -> -1 ->> 'duration_ms')::float8 AS exec_ms,
           extract(epoch FROM started_at - created_at)::float8 * 1000 AS wait_ms
    FROM jobs
    WHERE finished_at > $2::timestamptz AND status IN ('completed', 'failed')
)
SELECT 'attempts' AS kind, queue, status, attempts AS k, count(*)::bigint AS n,
       NULL::bigint AS completed, NULL::bigint AS failed, NULL::bigint AS exec_n, NULL::float8 AS exec_mean,
       NULL::float8 AS exec_p50, NULL::float8 AS exec_p95, NULL::bigint AS wait_n, NULL::float8 AS wait_mean,
       NULL::float8 AS wait_p95
FROM jobs WHERE finished_at > $1::timestamptz AND status IN ('completed', 'failed')
GROUP BY queue, status, attempts
UNION ALL
SELECT 'summary', queue, NULL, NULL, count(*),
       count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
       count(exec_ms), avg(exec_ms),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY exec_ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY exec_ms),
       count(wait_ms), avg(wait_ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY wait_ms)
FROM h GROUP BY queue
UNION ALL
SELECT 'minute', queue, NULL, GREATEST(0, floor(extract(epoch FROM $3::timestamptz - finished_at) / 60))::int AS m,
       count(*), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM h WHERE status = 'completed' GROUP BY queue, m;

-- name: alert_checks
-- For alerts, every queue but '_alerts': kind 'dlq' with failed = min(failed count, $1), and kind
-- 'wait' with the earliest run_at of its pending and scheduled jobs (paused queues left out).
-- Queues are found by loose index scans of jobs_dead and jobs_unfinished (one probe per queue), and each
-- count stops at $1, so the cost follows the number of queues, not of jobs.
WITH RECURSIVE dq(queue) AS (
    (SELECT queue FROM jobs WHERE status = 'failed' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM jobs j WHERE j.status = 'failed' AND j.queue > dq.queue ORDER BY j.queue LIMIT 1)
    FROM dq WHERE dq.queue IS NOT NULL
), wq(queue) AS (
    (SELECT queue FROM jobs WHERE status IN ('pending', 'scheduled') ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM jobs j
            WHERE j.status IN ('pending', 'scheduled') AND j.queue > wq.queue ORDER BY j.queue LIMIT 1)
    FROM wq WHERE wq.queue IS NOT NULL
)
SELECT queue, 'dlq' AS kind,
       (SELECT count(*) FROM (SELECT 1 FROM jobs j WHERE j.queue = dq.queue AND j.status = 'failed' LIMIT $1) f)
           AS failed,
       NULL::timestamptz AS next_run_at
FROM dq WHERE queue IS NOT NULL AND queue <> '_alerts'
UNION ALL
SELECT queue, 'wait', NULL,
       LEAST((SELECT min(j.run_at) FROM jobs j WHERE j.queue = wq.queue AND j.status = 'pending'),
             (SELECT min(j.run_at) FROM jobs j WHERE j.queue = wq.queue AND j.status = 'scheduled'))
FROM wq WHERE queue IS NOT NULL AND queue <> '_alerts'
  AND NOT EXISTS (SELECT 1 FROM queues p WHERE p.name = wq.queue AND p.paused);

-- name: hourly_outcomes
-- Completed and failed jobs per queue and whole hour (h: hours before $2) in ($1, $2], for the
-- dashboard's charts.
SELECT queue, status, floor(extract(epoch FROM $2::timestamptz - finished_at) / 3600)::int AS h,
       count(*)::bigint AS n
FROM jobs
WHERE finished_at > $1::timestamptz AND finished_at <= $2::timestamptz AND status IN ('completed', 'failed')
GROUP BY queue, status, h;

-- name: failed_count
-- Dead-lettered jobs matching an optional $1 queue, $2 type and $3 cutoff (finished before it),
-- counted up to $4 (the dashboard says "N+" beyond).
SELECT count(*)::bigint AS n FROM (
    SELECT 1 FROM jobs
    WHERE status = 'failed' AND ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR type = $2)
      AND ($3::timestamptz IS NULL OR finished_at < $3)
    LIMIT $4
) f;

-- name: create_database
-- A database of its own for a test harness ({name} is a checked identifier).
CREATE DATABASE {name};

-- name: create_database_from
-- The same, copied from a migrated template database.
CREATE DATABASE {name} TEMPLATE {template};

-- name: drop_database
-- Remove a test harness's database, whoever is still connected.
DROP DATABASE IF EXISTS {name} WITH (FORCE);

-- name: schedule_put
-- Create or replace a schedule from the API ($1 JSON document of the definition). The watermark
-- ($2, the first tick after now) is taken only when the schedule is new or its timing (cron, tz,
-- every_ms) changed; otherwise the next tick stays what it was. A schedule made or changed here
-- is the API's (code_hash NULL) until the code that declares it changes. Returns it, and whether
-- it was created.
INSERT INTO schedules AS s (id, type, payload, queue, priority, max_attempts, backoff, timeout_ms, cron, tz,
                            every_ms, misfire, misfire_grace_ms, catch_up_limit, overlap, paused, next_run_at,
                            code_hash, created_at, updated_at)
SELECT x.id, x.type, x.payload, x.queue, x.priority, x.max_attempts, x.backoff, x.timeout_ms, x.cron, x.tz,
       x.every_ms, x.misfire, x.misfire_grace_ms, x.catch_up_limit, x.overlap, x.paused, $2, NULL, $3, $3
FROM jsonb_to_record($1::text::jsonb) AS x(id text, type text, payload jsonb, queue text, priority smallint,
     max_attempts int, backoff jsonb, timeout_ms int, cron text, tz text, every_ms bigint, misfire text,
     misfire_grace_ms bigint, catch_up_limit int, overlap text, paused boolean)
ON CONFLICT (id) DO UPDATE SET
    type = EXCLUDED.type, payload = EXCLUDED.payload, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
    max_attempts = EXCLUDED.max_attempts, backoff = EXCLUDED.backoff, timeout_ms = EXCLUDED.timeout_ms,
    cron = EXCLUDED.cron, tz = EXCLUDED.tz, every_ms = EXCLUDED.every_ms, misfire = EXCLUDED.misfire,
    misfire_grace_ms = EXCLUDED.misfire_grace_ms, catch_up_limit = EXCLUDED.catch_up_limit,
    overlap = EXCLUDED.overlap, paused = EXCLUDED.paused, code_hash = NULL, updated_at = EXCLUDED.updated_at,
    next_run_at = CASE WHEN (s.cron, s.tz, s.every_ms) IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.tz, EXCLUDED.every_ms)
                       THEN EXCLUDED.next_run_at ELSE s.next_run_at END
RETURNING s.*, (xmax = 0) AS created;

-- name: schedules_sync
-- Sync the schedules declared in code ($1 JSON array, each with its `code_hash` and `first`, the
-- first tick after now). Idempotent and safe from any number of cold starts at once: a row whose
-- code_hash is unchanged is not touched; the watermark moves only when the timing changed; the
-- paused flag is the operator's (kept). Never fires a job. Returns the rows written.
INSERT INTO schedules AS s (id, type, payload, queue, priority, max_attempts, backoff, timeout_ms, cron, tz,
                            every_ms, misfire, misfire_grace_ms, catch_up_limit, overlap, paused, next_run_at,
                            code_hash, created_at, updated_at)
SELECT x.id, x.type, x.payload, x.queue, x.priority, x.max_attempts, x.backoff, x.timeout_ms, x.cron, x.tz,
       x.every_ms, x.misfire, x.misfire_grace_ms, x.catch_up_limit, x.overlap, x.paused,
       'epoch'::timestamptz + x.first_us * interval '1 microsecond', x.code_hash, $2, $2
FROM json_to_recordset($1::text::json) AS x(id text, type text, payload jsonb, queue text, priority smallint,
     max_attempts int, backoff jsonb, timeout_ms int, cron text, tz text, every_ms bigint, misfire text,
     misfire_grace_ms bigint, catch_up_limit int, overlap text, paused boolean, first_us bigint, code_hash text)
ON CONFLICT (id) DO UPDATE SET
    type = EXCLUDED.type, payload = EXCLUDED.payload, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
    max_attempts = EXCLUDED.max_attempts, backoff = EXCLUDED.backoff, timeout_ms = EXCLUDED.timeout_ms,
    cron = EXCLUDED.cron, tz = EXCLUDED.tz, every_ms = EXCLUDED.every_ms, misfire = EXCLUDED.misfire,
    misfire_grace_ms = EXCLUDED.misfire_grace_ms, catch_up_limit = EXCLUDED.catch_up_limit,
    overlap = EXCLUDED.overlap, code_hash = EXCLUDED.code_hash, updated_at = EXCLUDED.updated_at,
    next_run_at = CASE WHEN (s.cron, s.tz, s.every_ms) IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.tz, EXCLUDED.every_ms)
                       THEN EXCLUDED.next_run_at ELSE s.next_run_at END
WHERE s.code_hash IS DISTINCT FROM EXCLUDED.code_hash
RETURNING s.id, s.next_run_at, s.paused;

-- name: schedules_by_ids
-- The schedules a claim found due ($1 ids).
SELECT * FROM schedules WHERE id = ANY($1::text[]);

-- name: fire_schedules
-- Fire due ticks, exactly once whatever runs: for each schedule ($1 ids), move the watermark
-- from what the caller read ($2, the compare-and-set) to $3 (and last_run_at to $4 when a tick
-- fires); only where that succeeded, insert the jobs for its ticks ($5 JSON array: schedule_id,
-- tick_us, queue, type, payload, priority, max_attempts, backoff, timeout_ms, n), skipping a
-- schedule with `overlap = skip` that has an unfinished job; (schedule_id, scheduled_for) is
-- unique among jobs, the second line of defence. $6 now. Returns the jobs made ('job') and the
-- schedules moved ('moved', with their next tick).
WITH adv AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[])
        AS a(id, expected, new_next, last_tick)
),
moved AS (
    UPDATE schedules s SET next_run_at = a.new_next, last_run_at = COALESCE(a.last_tick, s.last_run_at),
                           updated_at = $6
    FROM adv a
    WHERE s.id = a.id AND s.next_run_at = a.expected AND NOT s.paused
    RETURNING s.id, s.overlap, s.next_run_at
),
ins AS (
    INSERT INTO jobs (queue, type, payload, status, priority, max_attempts, backoff, timeout_ms, run_at,
                      created_at, schedule_id, scheduled_for, group_key, limiter)
    SELECT x.queue, x.type, x.payload, 'pending', x.priority, x.max_attempts, x.backoff, x.timeout_ms, $6, $6,
           x.schedule_id, 'epoch'::timestamptz + x.tick_us * interval '1 microsecond', x.group_key, x.limiter
    FROM jsonb_to_recordset($5::text::jsonb) AS x(n int, schedule_id text, tick_us bigint, queue text, type text,
         payload jsonb, priority smallint, max_attempts int, backoff jsonb, timeout_ms int, group_key text,
         limiter text)
    JOIN moved m ON m.id = x.schedule_id
    WHERE m.overlap = 'allow'
       OR NOT EXISTS (SELECT 1 FROM jobs j WHERE j.schedule_id = m.id AND j.status IN ('pending', 'scheduled', 'processing'))
    ORDER BY x.n
    ON CONFLICT (schedule_id, scheduled_for) WHERE schedule_id IS NOT NULL DO NOTHING
    RETURNING id, queue, priority, status, created_at, run_at, schedule_id, scheduled_for, limiter
)
SELECT 'job' AS kind, id, queue, priority, status, created_at, run_at, schedule_id, scheduled_for,
       NULL::timestamptz AS next_run_at, limiter
FROM ins
UNION ALL
SELECT 'moved', NULL, NULL, NULL, NULL, NULL, NULL, id, NULL, next_run_at, NULL FROM moved;

-- name: schedule_get
-- One schedule with its last job (by id: the latest a tick or a trigger made).
SELECT s.*, l.id AS last_job_id, l.status AS last_job_status
FROM schedules s
LEFT JOIN LATERAL (SELECT j.id, j.status FROM jobs j WHERE j.schedule_id = s.id ORDER BY j.id DESC LIMIT 1) l ON true
WHERE s.id = $1;

-- name: schedules_list
-- Every schedule, by id, with its last job.
SELECT s.*, l.id AS last_job_id, l.status AS last_job_status
FROM schedules s
LEFT JOIN LATERAL (SELECT j.id, j.status FROM jobs j WHERE j.schedule_id = s.id ORDER BY j.id DESC LIMIT 1) l ON true
ORDER BY s.id;

-- name: schedule_delete
-- Delete a schedule (its jobs stay); returns it when it existed.
DELETE FROM schedules WHERE id = $1 RETURNING id;

-- name: schedule_set_paused
-- Pause or resume a schedule ($2); a resumed one continues from its next tick (the policy decides
-- what becomes of the ticks missed meanwhile). Returns it.
UPDATE schedules SET paused = $2, updated_at = $3 WHERE id = $1 RETURNING id, paused, next_run_at;

-- name: schedule_trigger
-- Enqueue one job of a schedule now ($1 JSON document as in fire_schedules, for one job), outside
-- its ticks: the watermark does not move, and the job stands for no tick (scheduled_for NULL, so
-- it never takes a tick's place in the unique index). Returns the job.
INSERT INTO jobs (queue, type, payload, status, priority, max_attempts, backoff, timeout_ms, run_at, created_at,
                  schedule_id, group_key, limiter)
SELECT x.queue, x.type, x.payload, 'pending', x.priority, x.max_attempts, x.backoff, x.timeout_ms, $2, $2,
       x.schedule_id, x.group_key, x.limiter
FROM jsonb_to_record($1::text::jsonb) AS x(schedule_id text, queue text, type text, payload jsonb,
     priority smallint, max_attempts int, backoff jsonb, timeout_ms int, group_key text, limiter text)
RETURNING *;

-- name: schedules_due_index
-- What the schedules' due index in Redis holds: every schedule that is not paused, by next tick.
SELECT id, next_run_at FROM schedules WHERE NOT paused;

-- name: insert_dependent_jobs
-- Insert a batch in which jobs depend on others (insert_jobs is the path of jobs without any),
-- all or nothing, in one statement: $1 the JSON array of insert_jobs, each job also with
-- `policy` (on_dependency_failure, null for a job without dependencies) and `upstream` (whether
-- another job of the batch depends on it); $2-$4 the engine's defaults as in insert_jobs; the edges
-- as three arrays: $5 the dependent's index in the batch, $6 the id it depends on (an existing
-- job) or null, $7 the index of the batch's job it depends on, or null. When an id in $6 does not
-- exist, nothing is inserted and the missing ids come back (kind 'missing'). No row is locked:
-- an edge whose dependency has completed is recorded 'ok' at once, every other one 'pending'
-- (the caller then runs resolve_dependencies for the new jobs, whose fresh snapshot closes the
-- race with a dependency finishing meanwhile). Ids are taken in batch order before the insert, so
-- that edges can name the batch's own jobs; per-job values travel in arrays indexed by the batch
-- index (no join between two CTEs, which the planner, blind to their sizes, could make quadratic).
WITH x AS (
    SELECT * FROM jsonb_to_recordset($1::text::jsonb)
        AS x(n int, queue text, type text, payload jsonb, status text, priority smallint, max_attempts int,
             backoff jsonb, timeout_ms int, idempotency_key text, run_at_us bigint, created_us bigint,
             group_key text, limiter text, policy text, upstream boolean, callback jsonb, created_by bigint)
),
e AS (SELECT * FROM unnest($5::int[], $6::bigint[], $7::int[]) AS e(n, up_id, up_n)),
missing AS (
    SELECT DISTINCT e.up_id AS id FROM e LEFT JOIN jobs t ON t.id = e.up_id WHERE e.up_id IS NOT NULL AND t.id IS NULL
),
ids AS MATERIALIZED (
    SELECT array_agg(s.id ORDER BY s.n) AS id
    FROM (SELECT n, nextval(pg_get_serial_sequence('jobs', 'id')) AS id
          FROM (SELECT n FROM x WHERE NOT EXISTS (SELECT 1 FROM missing) ORDER BY n) o) s
),
edge AS MATERIALIZED (
    SELECT e.n, COALESCE(e.up_id, ids.id[e.up_n + 1]) AS up,
           CASE WHEN t.status = 'completed' THEN 'ok' ELSE 'pending' END AS state
    FROM e CROSS JOIN ids LEFT JOIN jobs t ON t.id = e.up_id
    WHERE ids.id IS NOT NULL
),
-- the count of pending edges per job, dense over the batch (every job contributes a row)
waits AS (
    SELECT array_agg(k ORDER BY n) AS k
    FROM (SELECT n, count(*) FILTER (WHERE state = 'pending') AS k
          FROM (SELECT n, state FROM edge UNION ALL SELECT n, NULL FROM x) u GROUP BY n) g
),
ins AS (
    INSERT INTO jobs (id, queue, type, payload, status, priority, max_attempts, backoff, timeout_ms,
                      idempotency_key, run_at, created_at, dispatched, group_key, limiter, pending_deps,
                      has_dependents, on_dependency_failure, callback, created_by)
    OVERRIDING SYSTEM VALUE
    SELECT ids.id[x.n + 1], x.queue, x.type, x.payload, CASE WHEN w.k[x.n + 1] > 0 THEN 'waiting' ELSE x.status END,
           x.priority,
           COALESCE(x.max_attempts, (q.settings #>> '{defaults,max_attempts}')::int, $2::int),
           COALESCE(x.backoff, q.settings #> '{defaults,backoff}', $4::text::jsonb),
           COALESCE(x.timeout_ms, (q.settings #>> '{defaults,timeout_ms}')::int, $3::int),
           x.idempotency_key,
           'epoch'::timestamptz + x.run_at_us * interval '1 microsecond',
           'epoch'::timestamptz + x.created_us * interval '1 microsecond',
           true, x.group_key, x.limiter, w.k[x.n + 1], COALESCE(x.upstream, false), x.policy, x.callback,
           x.created_by
    FROM x CROSS JOIN ids CROSS JOIN waits w LEFT JOIN queues q ON q.name = x.queue
    WHERE ids.id IS NOT NULL
    ORDER BY x.n
    RETURNING id, status, pending_deps, max_attempts, timeout_ms, backoff::text AS backoff_text
),
edges AS (
    INSERT INTO job_deps (job_id, depends_on, state)
    SELECT ids.id[edge.n + 1], edge.up, edge.state FROM edge CROSS JOIN ids
    ON CONFLICT DO NOTHING
)
SELECT 'job' AS kind, id, status, pending_deps, max_attempts, timeout_ms, backoff_text FROM ins
UNION ALL
SELECT 'missing', id, NULL, NULL, NULL, NULL, NULL FROM missing;

-- name: resolve_dependencies
-- Record finished jobs' outcomes on their dependents' edges, and move the dependents on, in one
-- statement: $1 ids of jobs that have just ended (completed, failed or cancelled; ids that have
-- not are ignored), $2 ids of dependents to settle (new ones: the edges they still wait on are
-- looked at too), $3 now. An edge becomes 'ok' (its dependency completed) or 'failed'; a waiting
-- dependent whose count of unfinished dependencies reaches zero becomes pending (scheduled while
-- its run_at is ahead); one with a failed dependency under the `fail` policy is cancelled with
-- an error naming it, and so on down its own fail-policy dependents (the cascade, in this same
-- statement); under `ignore` and `continue` the failure counts as finished. Each edge changes
-- once (`state = 'pending'` is re-checked on a concurrent update), and each dependent's count
-- drops by the edges this statement changed, so two statements resolving the same job never
-- count twice; edges and dependents are locked in id order, so two such statements cannot
-- deadlock. Settling ($2) also marks the running dependencies `has_dependents` (a row lock on
-- running rows only, which no claim wants): a completion recorded after it returns the flag and
-- resolves the edge itself; a row locked at that moment (a completion being recorded, a
-- heartbeat) is skipped, not waited for (which could deadlock with a group's record), and
-- `again` says to settle once more with a fresh snapshot. A CTE is only ever joined to a table
-- (by its index), never to another CTE: the planner cannot see their sizes, and a nested loop
-- over two of 10,000 rows each would take seconds. Returns the jobs changed (what the push to
-- Redis needs, whether they have dependents of their own, and the error of the cancelled), and
-- the completion callbacks of the cancelled (kind 'callback', pending: pushed with the released).
WITH RECURSIVE
up AS (
    SELECT unnest($1::bigint[]) AS id
    UNION
    SELECT d.depends_on FROM job_deps d WHERE d.job_id = ANY($2::bigint[]) AND d.state = 'pending'
),
running AS (
    SELECT j.id FROM jobs j WHERE j.id IN (SELECT id FROM up) AND j.status = 'processing'
      AND cardinality($2::bigint[]) > 0
),
held AS MATERIALIZED (
    SELECT j.id FROM jobs j WHERE j.id IN (SELECT id FROM running) FOR NO KEY UPDATE SKIP LOCKED
),
marked AS (
    UPDATE jobs j SET has_dependents = true FROM held h WHERE j.id = h.id AND j.status = 'processing'
    RETURNING j.id
),
fin AS (
    SELECT j.id, j.status FROM jobs j
    WHERE j.id IN (SELECT id FROM up) AND j.status IN ('completed', 'failed', 'cancelled')
),
doomed(id) AS (
    SELECT d.job_id FROM fin f
    JOIN job_deps d ON d.depends_on = f.id AND d.state = 'pending'
    JOIN jobs w ON w.id = d.job_id AND w.status = 'waiting' AND w.on_dependency_failure = 'fail'
    WHERE f.status <> 'completed'
    UNION
    SELECT d.job_id FROM doomed x
    JOIN job_deps d ON d.depends_on = x.id AND d.state = 'pending'
    JOIN jobs w ON w.id = d.job_id AND w.status = 'waiting' AND w.on_dependency_failure = 'fail'
),
-- what ends here: the finished jobs, and the dependents cancelled down the graph
gone AS (SELECT id, status FROM fin UNION ALL SELECT id, 'cancelled' FROM doomed),
edges AS MATERIALIZED (
    SELECT d.job_id, d.depends_on, g.status FROM job_deps d JOIN gone g ON d.depends_on = g.id
    WHERE d.state = 'pending' ORDER BY d.depends_on, d.job_id FOR NO KEY UPDATE OF d
),
e AS (
    UPDATE job_deps d SET state = CASE WHEN x.status = 'completed' THEN 'ok' ELSE 'failed' END
    FROM edges x WHERE d.job_id = x.job_id AND d.depends_on = x.depends_on AND d.state = 'pending'
    RETURNING d.job_id, d.depends_on, x.status
),
-- per dependent: the edges resolved here, and the first that failed (its cause, under `fail`)
a AS (
    SELECT job_id, count(*) AS n, min(depends_on) FILTER (WHERE status <> 'completed') AS cause,
           (array_agg(status ORDER BY depends_on) FILTER (WHERE status <> 'completed'))[1] AS cause_status
    FROM e GROUP BY job_id
),
dependents AS MATERIALIZED (
    SELECT j.id, a.n, CASE WHEN j.on_dependency_failure = 'fail' THEN a.cause END AS cause, a.cause_status
    FROM a JOIN jobs j ON j.id = a.job_id WHERE j.status = 'waiting' ORDER BY j.id FOR NO KEY UPDATE OF j
),
moved AS (
    UPDATE jobs j SET
        pending_deps = GREATEST(j.pending_deps - l.n, 0),
        status = CASE WHEN l.cause IS NOT NULL THEN 'cancelled'
                      WHEN j.pending_deps - l.n > 0 THEN 'waiting'
                      WHEN j.run_at > $3::timestamptz THEN 'scheduled' ELSE 'pending' END,
        error = CASE WHEN l.cause IS NOT NULL
                     THEN 'dependency ' || l.cause || ' ' || CASE WHEN l.cause_status = 'failed' THEN 'failed'
                                                                  ELSE 'was cancelled' END
                     ELSE j.error END,
        finished_at = CASE WHEN l.cause IS NOT NULL THEN $3::timestamptz ELSE j.finished_at END,
        run_at = CASE WHEN l.cause IS NOT NULL OR j.pending_deps - l.n <= 0 THEN GREATEST(j.run_at, $3::timestamptz)
                      ELSE j.run_at END
    FROM dependents l
    WHERE j.id = l.id AND j.status = 'waiting'
    RETURNING j.id, j.queue, j.priority, j.status, j.created_at, j.run_at, j.lease_expires_at, j.limiter,
              j.has_dependents, j.error, j.callback,
              CASE WHEN j.callback IS NOT NULL AND j.status IN ('completed', 'failed', 'cancelled')
                   THEN jobqueue_job_view(j) END AS final_view
),
callbacks AS (
    -- The completion callbacks of the jobs that ended here, in this same statement: an outcome
    -- never lacks its callback (migration 0008).
    SELECT * FROM jobqueue_insert_callbacks(
        (SELECT jsonb_agg(m) FROM moved m WHERE m.final_view IS NOT NULL), $3::timestamptz)
)
SELECT 'job' AS kind, id, queue, priority, status, created_at, run_at, lease_expires_at, limiter, has_dependents,
       error
FROM moved
UNION ALL
SELECT 'callback', id, queue, priority, status, created_at, run_at, NULL, limiter, false, NULL FROM callbacks
UNION ALL
SELECT 'again', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
WHERE (SELECT count(*) FROM running) <> (SELECT count(*) FROM marked);

-- name: job_dependencies
-- A job's dependencies as its handler sees them (ctx.dependencies()): id, type, status, result,
-- error, in id order.
SELECT j.id, j.type, j.status, j.result, j.error FROM job_deps d JOIN jobs j ON j.id = d.depends_on
WHERE d.job_id = $1 ORDER BY j.id;

-- name: stuck_dependencies
-- Reconcile's liveness net: up to $1 finished jobs that waiting jobs still wait on (an outcome
-- recorded by a drain that died before resolving its edges), for resolve_dependencies.
SELECT DISTINCT d.depends_on AS id
FROM jobs w JOIN job_deps d ON d.job_id = w.id AND d.state = 'pending' JOIN jobs u ON u.id = d.depends_on
WHERE w.status = 'waiting' AND u.status IN ('completed', 'failed', 'cancelled')
LIMIT $1;

-- name: release_orphans
-- Reconcile's liveness net: waiting jobs with no pending edge left (their dependencies were
-- deleted, or a count drifted) become pending (scheduled while run_at is ahead). $1 now, $2 cap.
UPDATE jobs j SET pending_deps = 0, run_at = GREATEST(j.run_at, $1::timestamptz),
                  status = CASE WHEN j.run_at > $1::timestamptz THEN 'scheduled' ELSE 'pending' END
WHERE j.id IN (SELECT w.id FROM jobs w WHERE w.status = 'waiting'
               AND NOT EXISTS (SELECT 1 FROM job_deps d WHERE d.job_id = w.id AND d.state = 'pending')
               ORDER BY w.id LIMIT $2)
  AND j.status = 'waiting'
RETURNING j.id, j.queue, j.priority, j.status, j.created_at, j.run_at, j.lease_expires_at, j.limiter;
