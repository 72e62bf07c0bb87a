-- ack.lua: the Redis side of recorded outcomes (and of what a grant refused), one request for a
-- whole group. Per queue: remove leases, put retries into `delayed`, release jobs to the front of
-- their ready lists, hand leases back to the drain that holds them, and park the jobs whose
-- handler said "slow down" (RateLimited) with their scope held until a time. It keeps the
-- flow-control counts exact: a lease that really leaves the processing set (ZMSCORE first: an
-- acknowledgement replayed, or of a lease already taken over, changes nothing) frees its slot in
-- each of its scopes, and wakes those scopes if jobs wait on them for a slot (see claim.lua).
--
-- KEYS: per queue i (0-based), 17 keys at 1 + 17*i: processing ZSET, delayed ZSET, inflight HASH,
--   parked ZSET, parked_keys ZSET, limits HASH, tat HASH (where a scope's hold is kept, as
--   "h:{scope}"), ready lists for priority 9 down to 0.
-- ARGV[1]  now in ms; then per queue, five counted sections:
--   n, then n lease members to remove ("member|token")
--   n, then n pairs (due ms, member) to retry
--   n, then n members to release (to the popping end of their priority's list, in the order given:
--      the caller sends the oldest last)
--   n, then n pairs (deadline ms, lease member) to hand back to their holder
--   n, then n pairs (until ms, member) to park, their scope (or the whole queue) held until then
-- Optionally one more key after the queues' (KEYS has 17*n + 1): the done ZSET of jobs that ended
-- lately, and after the queues' sections: the cutoff ms (older entries are dropped), n, then n job
-- ids that ended, scored now (waiters poll it). Commands: ZADD + ZREMRANGEBYSCORE.
-- Returns the number of leases removed. Commands: 1 ZMSCORE + 1 ZREM for the removals, 1 per
-- section used, 1 HMGET + 1 HSET + 1 HDEL for the scopes whose counts changed, 1 ZADD to wake
-- them.

local now = tonumber(ARGV[1])
local a = 2
local removed = 0

local function scopes_of(m)
  local tt, gh = string.match(m, "^%d+:%d+:%d+:([^:]*):([^:]*)$")
  if tt == nil then return nil end
  local s = {}
  if tt ~= "" then table.insert(s, "t:" .. tt) end
  if gh ~= "" then table.insert(s, "g:" .. gh) end
  if tt ~= "" and gh ~= "" then table.insert(s, "t:" .. tt .. ":g:" .. gh) end
  return s
end

-- A parked entry: "scope|order|member", all scored 0 so that lex order within a scope is the
-- order the jobs would run in: priority, then enqueue time, then id, zero-padded (a bare id would
-- sort "10" before "9").
local function parked_entry(s, m)
  local p, ms, id = string.match(m, "^(%d+):(%d+):(%d+)")
  return s .. "|" .. p .. ":" .. string.format("%015d:%019d", tonumber(ms), tonumber(id)) .. "|" .. m
end

local function member_of(lease)
  return string.match(lease, "^([^|]+)")
end

-- The next counted section of ARGV: its count, then that many items.
local function section(width)
  local n = tonumber(ARGV[a]); a = a + 1
  local items = {}
  for j = 1, n * width do items[j] = ARGV[a]; a = a + 1 end
  return items
end

local nqueues = math.floor(#KEYS / 17)
for b = 1, 17 * nqueues, 17 do
  local processing, delayed, inflight = KEYS[b], KEYS[b + 1], KEYS[b + 2]
  local parked, parked_keys, limits, tat = KEYS[b + 3], KEYS[b + 4], KEYS[b + 5], KEYS[b + 6]
  local delta = {}

  -- Leases that end: only those still in the set free their slots.
  local leases = section(1)
  if #leases > 0 then
    local scores = redis.call("ZMSCORE", processing, unpack(leases))
    local present = {}
    for j, lease in ipairs(leases) do
      if scores[j] then
        table.insert(present, lease)
        for _, s in ipairs(scopes_of(member_of(lease)) or {}) do delta[s] = (delta[s] or 0) - 1 end
      end
    end
    if #present > 0 then
      removed = removed + redis.call("ZREM", processing, unpack(present))
    end
  end

  local retries = section(2)
  if #retries > 0 then redis.call("ZADD", delayed, unpack(retries)) end

  -- Released (claimed, never started): back to the popping end of their priority's list.
  local releases = section(1)
  local byp = {}
  for _, m in ipairs(releases) do
    local p = 999999 - tonumber(string.sub(m, 1, 6))
    if byp[p] == nil then byp[p] = {} end
    table.insert(byp[p], m)
  end
  for p, ms in pairs(byp) do redis.call("RPUSH", KEYS[b + 7 + (9 - p)], unpack(ms)) end

  -- Hand a lease back to the drain that holds it; an entry that comes back takes its slots again.
  local handbacks = section(2)
  if #handbacks > 0 then
    local back = {}
    for j = 2, #handbacks, 2 do table.insert(back, handbacks[j]) end
    local scores = redis.call("ZMSCORE", processing, unpack(back))
    local add = {}
    for j, lease in ipairs(back) do
      if not scores[j] then
        table.insert(add, handbacks[2 * j - 1]); table.insert(add, lease)
        for _, s in ipairs(scopes_of(member_of(lease)) or {}) do delta[s] = (delta[s] or 0) + 1 end
      end
    end
    if #add > 0 then redis.call("ZADD", processing, unpack(add)) end
  end

  -- RateLimited: the job waits in its most specific scope, held until `until`; a job with no
  -- scope holds its whole queue.
  local parks = section(2)
  if #parks > 0 then
    local members, keys, held = {}, {}, {}
    local hold = nil
    for j = 1, #parks, 2 do
      local until_ms, m = tonumber(parks[j]), parks[j + 1]
      local scopes = scopes_of(m)
      if scopes then
        local s = scopes[#scopes]
        table.insert(members, 0); table.insert(members, parked_entry(s, m))
        table.insert(keys, until_ms); table.insert(keys, s)
        if held[s] == nil or until_ms > held[s] then held[s] = until_ms end
      else
        hold = math.max(hold or 0, until_ms)
        redis.call("RPUSH", KEYS[b + 7 + (9 - (999999 - tonumber(string.sub(m, 1, 6))))], m)
      end
    end
    if #members > 0 then
      redis.call("ZADD", parked, unpack(members))
      redis.call("ZADD", parked_keys, "GT", unpack(keys))
      redis.call("HSET", limits, "p", 1)
      -- The hold itself, which claims check for every member of the scope (a slot freeing
      -- wakes the scope early; the hold still stands).
      local names = {}
      for s, _ in pairs(held) do table.insert(names, "h:" .. s) end
      local old = redis.call("HMGET", tat, unpack(names))
      local set = {}
      for j, name in ipairs(names) do
        local until_ms = held[string.sub(name, 3)]
        if not old[j] or tonumber(old[j]) < until_ms then
          table.insert(set, name); table.insert(set, until_ms)
        end
      end
      if #set > 0 then redis.call("HSET", tat, unpack(set)) end
    end
    if hold then
      local old = tonumber(redis.call("HGET", limits, "hold") or "0")
      if hold > old then redis.call("HSET", limits, "hold", hold) end
    end
  end

  -- The counts, and the scopes whose jobs wait for a slot: due now (ZADD XX LT).
  -- One HMGET, one HSET and one HDEL however many scopes changed (the script is atomic, so a
  -- read-modify-write is as exact as HINCRBY): with thousands of active groups, a command per
  -- scope would cost more than the jobs' own acknowledgements.
  local changed, woken = {}, {}
  for s, d in pairs(delta) do
    if d ~= 0 then
      table.insert(changed, s)
      if d < 0 then table.insert(woken, now); table.insert(woken, s) end
    end
  end
  if #changed > 0 then
    local old = redis.call("HMGET", inflight, unpack(changed))
    local set, gone = {}, {}
    for j, s in ipairs(changed) do
      local v = (tonumber(old[j]) or 0) + delta[s]
      if v > 0 then table.insert(set, s); table.insert(set, v) else table.insert(gone, s) end
    end
    if #set > 0 then redis.call("HSET", inflight, unpack(set)) end
    if #gone > 0 then redis.call("HDEL", inflight, unpack(gone)) end
  end
  if #woken > 0 then redis.call("ZADD", parked_keys, "XX", "LT", unpack(woken)) end
end
if #KEYS > 17 * nqueues then
  local done = KEYS[#KEYS]
  local cutoff = ARGV[a]; a = a + 1
  local ended = section(1)
  if #ended > 0 then
    local add = {}
    for _, id in ipairs(ended) do table.insert(add, now); table.insert(add, id) end
    redis.call("ZADD", done, unpack(add))
  end
  redis.call("ZREMRANGEBYSCORE", done, "-inf", cutoff)
end
return removed
