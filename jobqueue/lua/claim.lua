-- claim.lua: one request per batch. For each queue that is not paused: promote due delayed
-- members to their ready lists, take expired leases back (recovery), pop up to that queue's limit
-- across priorities (highest first, FIFO within one), and record a lease for every member taken.
--
-- KEYS[1]  SET of queue names (returned so the caller can discover queues it does not know)
-- KEYS[2]  SET of paused queue names
-- KEYS[3]  epoch marker; missing means Redis lost its data and a full reconcile is needed
-- KEYS[4]  when the next periodic reconcile is due (ms); missing means now
-- KEYS[5]  the dispatch sweep marker "due_ms:until_ms" (keys.py); missing means no sweep
-- KEYS[6]  ZSET of schedule ids scored by their next tick (ms)
-- KEYS[7]  the hash of the code-declared schedules last synced to Postgres
-- KEYS[8]  the due time a delayed kick was last published for
-- then, per queue i (0-based), 12 keys at 9 + 12*i:
--   +0 delayed ZSET (score = due ms), +1 processing ZSET (score = lease deadline ms),
--   +2 .. +11 ready lists for priority 9 down to 0
-- ARGV[1]  now in ms
-- ARGV[2]  maximum number of members to take in all
-- ARGV[3]  lease deadline in ms for the members taken (provisional: the drain moves it to each
--          job's own lease once Postgres has granted it, see drain/leases.py)
-- ARGV[4]  lease token (appended to members in the processing set as "|token")
-- ARGV[5]  periodic reconcile interval in ms (0 = never)
-- ARGV[6]  dispatch sweep interval in ms
-- ARGV[7]  how long a due schedule taken here stays out of other claims' sight (ms)
-- ARGV[8]  the most due schedules to take
-- ARGV[9]  the hash of this process's code-declared schedules ("" when it declares none)
-- ARGV[10] delayed-kick horizon in ms (0: off): report the earliest due time (a schedule's tick,
--          a delayed job or a retry) when it falls within now + horizon and no kick was
--          published for it yet
-- ARGV[11 ..] pairs: queue name, the most this queue may give (its free share of the drain's
--          slots), one pair per 12-key group
--
-- Returns {flags, known_queues, {due schedule ids}, kick_at_ms or false, q1, {members...},
--          {recovered...}, q2, ...}
--   flags: "E" when the epoch marker is missing (then nothing is taken), "R" when a periodic
--   reconcile is due, "S" when a dispatch sweep is due, "Y" when the code's schedules differ from
--   those last synced.
-- Recovered members are expired leases (token stripped); members are fresh pops.
-- Commands: 7 fixed (EXISTS, GET x3, ZRANGEBYSCORE, SMEMBERS x2; +1 ZADD when schedules are due,
-- +1 ZRANGE and +1 GET with a horizon) + per queue 2 (ZRANGEBYSCORE x2; +1 ZRANGE with a horizon)
-- + promotions + pops + 1 ZADD when any taken.

local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local deadline = ARGV[3]
local token = ARGV[4]
local interval = tonumber(ARGV[5])
local sweep_every = tonumber(ARGV[6])
local sched_lease = tonumber(ARGV[7])
local sched_max = tonumber(ARGV[8])
local code_hash = ARGV[9]
local horizon = tonumber(ARGV[10])

local flags = ""
if redis.call("EXISTS", KEYS[3]) == 0 then
  -- Redis lost its data (or was never indexed): pop nothing until reconcile has rebuilt the
  -- index from Postgres, so nothing taken now is pushed a second time by that rebuild.
  return {"E", redis.call("SMEMBERS", KEYS[1]), {}, false}
end
-- The marker holds the next due time in the caller's clock (not a PX expiry), so the interval
-- follows the injected clock like every other time in the engine.
if interval > 0 and now >= tonumber(redis.call("GET", KEYS[4]) or "0") then
  redis.call("SET", KEYS[4], now + interval)
  flags = flags .. "R"
end
local sweep = redis.call("GET", KEYS[5])
if sweep then
  local colon = string.find(sweep, ":", 1, true)
  local due, untill = tonumber(string.sub(sweep, 1, colon - 1)), tonumber(string.sub(sweep, colon + 1))
  if now >= due then
    flags = flags .. "S"
    if now < untill then
      redis.call("SET", KEYS[5], (now + sweep_every) .. ":" .. untill, "KEEPTTL")
    else
      redis.call("DEL", KEYS[5])
    end
  end
end

if code_hash ~= "" and redis.call("GET", KEYS[7]) ~= code_hash then
  flags = flags .. "Y"
end
-- The earliest schedule tick still to come (read before the due ones are leased: their real next
-- tick is known once the drain has fired them, and the claim that follows looks again).
local next_due = nil
if horizon > 0 then
  local head = redis.call("ZRANGEBYSCORE", KEYS[6], "(" .. now, "+inf", "WITHSCORES", "LIMIT", 0, 1)
  if #head > 0 then next_due = tonumber(head[2]) end
end
-- Due schedules: taken out of sight for a short lease; Postgres decides whether each fires.
local due_schedules = redis.call("ZRANGEBYSCORE", KEYS[6], "-inf", now, "LIMIT", 0, sched_max)
if #due_schedules > 0 then
  local lease = {}
  for _, id in ipairs(due_schedules) do
    table.insert(lease, now + sched_lease); table.insert(lease, id)
  end
  redis.call("ZADD", KEYS[6], "XX", unpack(lease))
end

local paused = {}
for _, q in ipairs(redis.call("SMEMBERS", KEYS[2])) do paused[q] = true end
local out = {flags, redis.call("SMEMBERS", KEYS[1]), due_schedules, false}

local nqueues = (#ARGV - 10) / 2
for i = 0, nqueues - 1 do
  local queue = ARGV[11 + 2 * i]
  local qlimit = math.min(tonumber(ARGV[12 + 2 * i]), limit)
  local base = 9 + 12 * i
  if not paused[queue] then
    local delayed, processing = KEYS[base], KEYS[base + 1]
    -- Promote due delayed members: they have waited, so they go to the popping end (RPUSH).
    local due = redis.call("ZRANGEBYSCORE", delayed, "-inf", now, "LIMIT", 0, 1000)
    if #due > 0 then
      redis.call("ZREM", delayed, unpack(due))
      local byp = {}
      for _, m in ipairs(due) do
        local p = 999999 - tonumber(string.sub(m, 1, 6))
        if byp[p] == nil then byp[p] = {} end
        table.insert(byp[p], m)
      end
      for p, ms in pairs(byp) do
        redis.call("RPUSH", KEYS[base + 2 + (9 - p)], unpack(ms))
      end
    end
    -- Recover expired leases: the worker that held them is gone or late (Postgres decides: a
    -- lease still valid there is handed back to its holder by the caller). Promotion above runs
    -- whatever the limit, so due jobs reach their lists even while this queue has no room.
    local recovered = {}
    local expired = {}
    if qlimit > 0 then
      expired = redis.call("ZRANGEBYSCORE", processing, "-inf", now, "LIMIT", 0, qlimit)
    end
    if #expired > 0 then
      redis.call("ZREM", processing, unpack(expired))
      for _, m in ipairs(expired) do
        local bar = string.find(m, "|", 1, true)
        table.insert(recovered, bar and string.sub(m, 1, bar - 1) or m)
      end
      qlimit = qlimit - #expired
    end
    -- Pop across priorities: LMPOP takes up to COUNT from the first non-empty list only.
    local taken = {}
    -- (Lua expands unpack() only as the last argument, so the call's arguments are built whole.)
    local lmpop = {"LMPOP", 10}
    for p = 0, 9 do lmpop[3 + p] = KEYS[base + 2 + p] end
    lmpop[13] = "RIGHT"; lmpop[14] = "COUNT"
    while qlimit > 0 do
      lmpop[15] = qlimit
      local r = redis.call(unpack(lmpop))
      if not r then break end
      for _, m in ipairs(r[2]) do table.insert(taken, m) end
      qlimit = qlimit - #r[2]
    end
    limit = limit - #taken - #recovered
    if #taken + #recovered > 0 then
      local args = {}
      for _, m in ipairs(taken) do
        table.insert(args, deadline); table.insert(args, m .. "|" .. token)
      end
      for _, m in ipairs(recovered) do
        table.insert(args, deadline); table.insert(args, m .. "|" .. token)
      end
      redis.call("ZADD", processing, unpack(args))
    end
    if horizon > 0 then
      local head = redis.call("ZRANGE", delayed, 0, 0, "WITHSCORES")
      if #head > 0 and (next_due == nil or tonumber(head[2]) < next_due) then next_due = tonumber(head[2]) end
    end
    table.insert(out, queue)
    table.insert(out, taken)
    table.insert(out, recovered)
  end
end
-- One delayed kick per due time: only when it comes before the next regular tick would.
if next_due ~= nil and next_due > now and next_due <= now + horizon then
  if tonumber(redis.call("GET", KEYS[8]) or "0") ~= next_due then
    redis.call("SET", KEYS[8], next_due, "PX", horizon + 60000)
    out[4] = next_due
  end
end
return out
