-- 0008: completion callbacks in SQL, defined once for the four statements that end jobs (finish,
-- cancel, the claim's lost last attempts, a cascade of cancels): a job's view as JSON, and the
-- insert of the callback jobs that carry it. Times are
-- ISO-8601 UTC text, as the API renders them; `run_at` is null (a final view has no next run).
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
