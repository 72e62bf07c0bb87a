-- 0002: jobs enqueued inside an application's own transaction are indexed in Redis only after that
-- transaction commits. Until then, or if the process dies between the commit and the push, they
-- are not dispatched; the dispatch sweep finds them (sql/queries.sql `dispatch_sweep`).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS dispatched boolean NOT NULL DEFAULT true;
CREATE INDEX IF NOT EXISTS jobs_undispatched ON jobs (id) WHERE NOT dispatched;
