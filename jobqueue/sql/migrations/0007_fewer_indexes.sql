-- 0007: one partial index over the unfinished jobs instead of two. jobs_active (queue, status,
-- created_at) served reconcile and the unfinished counts, jobs_due (queue, run_at) the earliest due
-- time per queue; every enqueued row went into both. jobs_unfinished (queue, status, run_at) serves
-- all three (the earliest due time is now one probe per status: metrics_counts, alert_checks), so
-- an insert maintains four indexes instead of five (primary key, jobs_status_id, this one, and the
-- idempotency and undispatched ones only for the rows they cover). The new index is built before
-- the old ones go, so no query is left without one meanwhile.
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (queue, status, run_at)
    WHERE status IN ('pending', 'scheduled', 'processing');
DROP INDEX IF EXISTS jobs_active;
DROP INDEX IF EXISTS jobs_due;
