-- 0006: progress, completion callbacks and follow-up links (issue 12). `progress` is the last value
-- a handler reported ({"percent", "message", "data", "updated_at"}), written with the outcome (while
-- the job runs it lives in Redis only); `callback` is the completion callback as resolved at
-- enqueue ({"url", "queue", "max_attempts", "backoff", "timeout_ms", "group_key", "limiter"}: the
-- `webhook.deliver` job the outcome's statement inserts); `created_by` is the job whose handler
-- enqueued this one (ctx.enqueue), or the job a callback reports on.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS progress jsonb;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS callback jsonb;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS created_by bigint;
