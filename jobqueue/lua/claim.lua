-- claim.lua: one request per batch. For each queue that is not paused: promote due delayed
-- members to their ready lists, take expired leases back (recovery), pop up to that queue's limit
-- across priorities (highest first, FIFO within one), and record a lease for every member taken.
--
-- KEYS[1]  SET of queue names (returned so the caller can discover queues it does not know)
-- KEYS[2]  SET of paused queue names
-- KEYS[3]  epoch marker; missing means Redis lost its data and a full reconcile is needed
-- KEYS[4]  when the next periodic reconcile is due (ms); missing means now
-- KEYS[5]  the dispatch sweep marker "due_ms:until_ms" (keys.py); missing means no sweep
-- then, per queue i (0-based), 12 keys at 6 + 12*i:
--   +0 delayed ZSET (score = due ms), +1 processing ZSET (score = lease deadline ms),
--   +2 .. +11 ready lists for priority 9 down to 0
-- ARGV[1]  now in ms
-- ARGV[2]  maximum number of members to take in all
-- ARGV[3]  lease deadline in ms for the members taken (provisional: the drain moves it to each
--          job's own lease once Postgres has granted it, see drain/leases.py)
-- ARGV[4]  lease token (appended to members in the processing set as "|token")
-- ARGV[5]  periodic reconcile interval in ms (0 = never)
-- ARGV[6]  dispatch sweep interval in ms
-- ARGV[7 ..] pairs: queue name, the most this queue may give (its free share of the drain's
--          slots), one pair per 12-key group
--
-- Returns {flags, known_queues, q1, {members...}, {recovered...}, q2, ...}
--   flags: "E" when the epoch marker is missing (then nothing is taken), "R" when a periodic
--   reconcile is due, "S" when a dispatch sweep is due.
-- Recovered members are expired leases (token stripped); members are fresh pops.
-- Commands: 5 fixed + per queue 2 (ZRANGEBYSCORE x2) + promotions + pops + 1 ZADD when any taken.

local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local deadline = ARGV[3]
local token = ARGV[4]
local interval = tonumber(ARGV[5])
local sweep_every = tonumber(ARGV[6])

local flags = ""
if redis.call("EXISTS", KEYS[3]) == 0 then
  -- Redis lost its data (or was never indexed): pop nothing until reconcile has rebuilt the
  -- index from Postgres, so nothing taken now is pushed a second time by that rebuild.
  return {"E", redis.call("SMEMBERS", KEYS[1])}
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

local paused = {}
for _, q in ipairs(redis.call("SMEMBERS", KEYS[2])) do paused[q] = true end
local out = {flags, redis.call("SMEMBERS", KEYS[1])}

local nqueues = (#ARGV - 6) / 2
for i = 0, nqueues - 1 do
  local queue = ARGV[7 + 2 * i]
  local qlimit = math.min(tonumber(ARGV[8 + 2 * i]), limit)
  local base = 6 + 12 * i
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
    table.insert(out, queue)
    table.insert(out, taken)
    table.insert(out, recovered)
  end
end
return out
