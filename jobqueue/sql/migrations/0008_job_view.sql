-- 0008: a job's view as JSON, in SQL, for what Postgres writes without Python: the completion
-- callback that the statement recording an outcome (or a cancel, or a cascade of cancels)
-- inserts carries its job's final view. One definition instead of one per statement. Times are
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
