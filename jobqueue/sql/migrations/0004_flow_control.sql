-- 0004: flow control. Per-queue settings (default job options, concurrency and rate limits for the
-- queue and per group, retention, priority aging) live here, the durable copy that reconcile
-- restores Redis' from; jobs carry their group and the flow-control suffix of their Redis member
-- (`limiter`: "{type tag}:{group hash}", see keys.py), so reconcile rebuilds exactly the members
-- (and the limiters' counts) the claims and acknowledgements expect. `last_started_at` (the latest
-- attempt's start, where started_at keeps the first) lets reconcile rebuild the rates' state after
-- Redis lost it without ever admitting more than a rate allows.
ALTER TABLE queues ADD COLUMN IF NOT EXISTS settings jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS group_key text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS limiter text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS last_started_at timestamptz;
