-- claim.lua: one request per batch. For each queue that is not paused: promote due delayed
-- members to their ready lists, take expired leases back (recovery), then take up to that
-- queue's limit of jobs, admitting each only within its flow-control limits, and record a lease
-- for every member taken.
--
-- Flow control (issue 11). A member may carry a suffix ":{tt}:{gh}" after its id: tt names its
-- job type's limiter (when the type has limits), gh its group (a hash). Such a member occupies a
-- slot in each of its scopes: "t:{tt}" (its type), "g:{gh}" (its group in this queue) and
-- "t:{tt}:g:{gh}" (its group within its type); `inflight` counts the live leases per scope, kept
-- exact by this script and ack.lua (every lease added or removed is counted, whatever the limits
-- are). Limits: the queue's own (`limits` HASH: c = concurrency, r = rate "limit/period/burst",
-- gc/gr the same per group, aging = ms per priority level, p = something is parked, hold = no
-- start before this time, after a RateLimited of a job that has no scope; gs/gt = gated since,
-- gated in total, for the metrics) and the
-- types' (ARGV). Queue concurrency is the live leases in `processing` (ZCOUNT past now), queue
-- and scope rates are GCRA (`tat` HASH: the theoretical arrival time per scope, and "h:" .. scope
-- a RateLimited hold on it, until when). A member over a
-- scope's limit is parked under that scope (`parked` ZSET, member "scope|order|member", all scores 0,
-- so lex order = priority then age: FIFO per scope) and its scope is listed in `parked_keys`
-- (score: when it may be admissible again, or 9e15 while it waits for a slot; ack.lua lowers it
-- when a slot frees). A scope in `parked_keys` parks every new member behind the waiting ones.
-- Parked members are admitted first, oldest first, as capacity returns; a fair type's members
-- are always parked per group and admitted round robin across groups.
--
-- KEYS[1]  SET of queue names (returned so the caller can discover queues it does not know)
-- KEYS[2]  SET of paused queue names
-- KEYS[3]  epoch marker; missing means Redis lost its data and a full reconcile is needed
-- KEYS[4]  when the next periodic reconcile is due (ms); missing means now
-- KEYS[5]  the dispatch sweep marker "due_ms:until_ms" (keys.py); missing means no sweep
-- KEYS[6]  ZSET of schedule ids scored by their next tick (ms)
-- KEYS[7]  the hash of the code-declared schedules last synced to Postgres
-- KEYS[8]  the due time a delayed kick was last published for
-- then, per queue i (0-based), 17 keys at 9 + 17*i:
--   +0 delayed ZSET (score = due ms), +1 processing ZSET (score = lease deadline ms),
--   +2 limits HASH, +3 inflight HASH, +4 tat HASH, +5 parked ZSET, +6 parked_keys ZSET,
--   +7 .. +16 ready lists for priority 9 down to 0
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
--          a delayed job, a retry, a gated queue's reopening) when it falls within now + horizon
--          and no kick was published for it yet
-- ARGV[11] the types' limits: "tt=spec;tt=spec" (spec: c=N,r=L/P/B,gc=N,gr=L/P/B,fair=1), or ""
-- ARGV[12 ..] pairs: queue name, the most this queue may give (its free share of the drain's
--          slots), one pair per 17-key group
--
-- Returns {flags, known_queues, {due schedule ids}, kick_at_ms or false,
--          q1, {members...}, {recovered...}, gated_until_ms or false, q2, ...}
--   flags: "E" when the epoch marker is missing (then nothing is taken), "R" when a periodic
--   reconcile is due, "S" when a dispatch sweep is due, "Y" when the code's schedules differ from
--   those last synced. gated_until: the queue had work it could not take for its limits; the
--   earliest time that may change (9e15: when a slot frees).
-- Commands: 7 fixed (+1 ZADD when schedules are due, +1 ZRANGEBYSCORE and +1 GET with a horizon)
-- + per queue 3 (ZRANGEBYSCORE x2, HGETALL) + promotions + pops + 1 ZADD when any taken; a queue
-- with limits or grouped members adds a few per claim (HMGET x2, HSET x2, ZMSCORE, parking),
-- not per job.

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
local BLOCKED = 9e15
local UNPARK_KEYS = 50

local flags = ""
if redis.call("EXISTS", KEYS[3]) == 0 then
  -- Redis lost its data (or was never indexed): pop nothing until reconcile has rebuilt the
  -- index from Postgres (the limiters' counts included), so nothing taken now is pushed a second
  -- time by that rebuild and no limit is exceeded for want of its counts.
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
local function soonest(t)
  if t ~= nil and t > now and t < BLOCKED and (next_due == nil or t < next_due) then next_due = t end
end
if horizon > 0 then
  local head = redis.call("ZRANGEBYSCORE", KEYS[6], "(" .. now, "+inf", "WITHSCORES", "LIMIT", 0, 1)
  if #head > 0 then soonest(tonumber(head[2])) end
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

-- --- limits -------------------------------------------------------------------------------

local function parse_rate(s)
  -- "limit/period_ms/burst" -> GCRA's emission interval T and tolerance tau: at most `limit`
  -- starts per period on average, `burst` at once, and never more than limit + burst in any
  -- window of one period.
  if s == nil or s == "" then return nil end
  local l, p, b = string.match(s, "^([%d.]+)/([%d.]+)/([%d.]+)$")
  l, p, b = tonumber(l), tonumber(p), tonumber(b)
  if l == nil or l <= 0 or p == nil or p <= 0 then return nil end
  local T = p / l
  return {T = T, tau = (math.max(b or 1, 1) - 1) * T}
end

local function parse_spec(spec)
  local out = {}
  for k, v in string.gmatch(spec, "([%a]+)=([^,]+)") do out[k] = v end
  return {c = tonumber(out.c), r = parse_rate(out.r), gc = tonumber(out.gc), gr = parse_rate(out.gr),
          fair = out.fair == "1"}
end

local types = {}
local any_type_limits = false
for tt, spec in string.gmatch(ARGV[11], "([^=;]+)=([^;]*)") do
  types[tt] = parse_spec(spec)
  any_type_limits = true
end

local function suffix(m)
  local tt, gh = string.match(m, "^%d+:%d+:%d+:([^:]*):([^:]*)$")
  return tt, gh
end

-- A parked entry: "scope|order|member", all scored 0 so that lex order within a scope is the
-- order the jobs would run in: priority, then enqueue time, then id, zero-padded (a bare id would
-- sort "10" before "9").
local function order_key(m)
  local p, ms, id = string.match(m, "^(%d+):(%d+):(%d+)")
  return p .. ":" .. string.format("%015d:%019d", tonumber(ms), tonumber(id))
end

local function parked_entry(s, m)
  return s .. "|" .. order_key(m) .. "|" .. m
end

local function scopes_of(m)
  local tt, gh = suffix(m)
  if tt == nil then return nil end
  local s = {}
  if tt ~= "" then table.insert(s, "t:" .. tt) end
  if gh ~= "" then table.insert(s, "g:" .. gh) end
  if tt ~= "" and gh ~= "" then table.insert(s, "t:" .. tt .. ":g:" .. gh) end
  return s, tt, gh
end

-- GCRA: how many starts are admissible now given a scope's TAT, and the TAT to start from.
local function room(tat, rate)
  local t = math.max(tat or 0, now)
  local n = math.floor((rate.tau - (t - now)) / rate.T) + 1
  if n < 0 then n = 0 end
  return n, t
end

local paused = {}
for _, q in ipairs(redis.call("SMEMBERS", KEYS[2])) do paused[q] = true end
local out = {flags, redis.call("SMEMBERS", KEYS[1]), due_schedules, false}

local nqueues = (#ARGV - 11) / 2
for i = 0, nqueues - 1 do
  local queue = ARGV[12 + 2 * i]
  local qlimit = math.min(tonumber(ARGV[13 + 2 * i]), limit)
  local offered = qlimit
  local base = 9 + 17 * i
  local delayed, processing = KEYS[base], KEYS[base + 1]
  local K_limits, K_inflight, K_tat = KEYS[base + 2], KEYS[base + 3], KEYS[base + 4]
  local K_parked, K_parked_keys = KEYS[base + 5], KEYS[base + 6]
  local taken, recovered, gated = {}, {}, false
  if not paused[queue] then
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
        redis.call("RPUSH", KEYS[base + 7 + (9 - p)], unpack(ms))
      end
    end
    local lim = {}
    local raw = redis.call("HGETALL", K_limits)
    for j = 1, #raw, 2 do lim[raw[j]] = raw[j + 1] end
    local qconc, qrate = tonumber(lim.c), parse_rate(lim.r)
    local gconc, grate = tonumber(lim.gc), parse_rate(lim.gr)
    local aging = tonumber(lim.aging)
    local hold = tonumber(lim.hold)
    if hold and hold <= now then hold = nil end
    local limited = qconc or qrate or gconc or grate or any_type_limits or lim.p

    -- Counts and TATs of the scopes this claim touches, read once (HMGET) and written once.
    local inflight, tats, parked_at, holds = {}, {}, {}, {}
    local dirty_inflight, dirty_tat, stale_holds = {}, {}, {}
    local qtat = nil
    if qrate then qtat = tonumber(redis.call("HGET", K_tat, "q")) end
    local function load(scopes)
      local need = {}
      for s, _ in pairs(scopes) do
        if inflight[s] == nil then table.insert(need, s) end
      end
      if #need == 0 then return end
      local counts = redis.call("HMGET", K_inflight, unpack(need))
      -- Each scope's TAT and its hold ("h:" .. scope: a RateLimited until then), in one read.
      local fields = {}
      for _, s in ipairs(need) do table.insert(fields, s); table.insert(fields, "h:" .. s) end
      local times = redis.call("HMGET", K_tat, unpack(fields))
      local waits = redis.call("ZMSCORE", K_parked_keys, unpack(need))
      for j, s in ipairs(need) do
        inflight[s] = tonumber(counts[j]) or 0
        tats[s] = tonumber(times[2 * j - 1])
        local hold_until = tonumber(times[2 * j])
        if hold_until and hold_until > now then
          holds[s] = hold_until
        elseif hold_until then
          table.insert(stale_holds, "h:" .. s)
        end
        parked_at[s] = waits[j] and tonumber(waits[j]) or nil
      end
    end
    local function limits_of(s)
      local tt, rest = string.match(s, "^t:([^:]+)(.*)$")
      if tt then
        local ty = types[tt] or {}
        if rest == "" then return ty.c, ty.r end
        return ty.gc, ty.gr
      end
      return gconc, grate
    end
    -- A start in each of these scopes: every rated one's TAT moves on by one emission interval.
    local function charge_rates(scopes)
      for _, s in ipairs(scopes) do
        local _, r = limits_of(s)
        if r then
          local _, t = room(tats[s], r)
          tats[s] = t + r.T
          dirty_tat[s] = true
        end
      end
    end

    -- Recover expired leases: the worker that held them is gone or late (Postgres decides: a
    -- lease still valid there is handed back to its holder by the caller). A recovered job keeps
    -- its slot in its scopes (it never left them), but running it again is a start: where a rate
    -- (or a RateLimited hold) has no room for it now, its entry waits in the processing set until
    -- the rate reopens, its slot still held.
    local expired = {}
    if qlimit > 0 then
      expired = redis.call("ZRANGEBYSCORE", processing, "-inf", now, "LIMIT", 0, qlimit)
    end
    if #expired > 0 then
      local sc = {}
      for _, m in ipairs(expired) do
        for _, s in ipairs(scopes_of(string.match(m, "^([^|]+)")) or {}) do sc[s] = true end
      end
      load(sc)
      local later, retaken = {}, {}
      for _, m in ipairs(expired) do
        local reopen = hold
        if qrate and room(qtat, qrate) < 1 then
          local _, t = room(qtat, qrate)
          reopen = math.max(reopen or 0, t - qrate.tau)
        end
        local scopes = scopes_of(string.match(m, "^([^|]+)")) or {}
        for _, s in ipairs(scopes) do
          local _, r = limits_of(s)
          if holds[s] then reopen = math.max(reopen or 0, holds[s]) end
          if r and room(tats[s], r) < 1 then
            local _, t = room(tats[s], r)
            reopen = math.max(reopen or 0, t - r.tau)
          end
        end
        if reopen then
          table.insert(later, reopen); table.insert(later, m)
        else
          if qrate then
            local _, t = room(qtat, qrate)
            qtat = t + qrate.T
          end
          charge_rates(scopes)
          local bar = string.find(m, "|", 1, true)
          table.insert(recovered, bar and string.sub(m, 1, bar - 1) or m)
          table.insert(retaken, m)
        end
      end
      if #retaken > 0 then redis.call("ZREM", processing, unpack(retaken)) end
      if #later > 0 then
        redis.call("ZADD", processing, unpack(later))
        for j = 1, #later, 2 do
          if not gated or later[j] < gated then gated = later[j] end
        end
      end
      qlimit = qlimit - #recovered
    end

    -- The queue's own limits bound the budget before anything is popped: nothing is taken only
    -- to be put back.
    local budget = qlimit
    if hold then
      -- A handler said "slow down" (RateLimited) for a job of no scope: the queue waits.
      budget = 0
      gated = hold
    end
    if qconc then
      -- Live leases (the deferred recoveries included: their jobs will run) plus the recovered.
      local live = redis.call("ZCOUNT", processing, "(" .. now, "+inf") + #recovered
      if qconc - live < budget then
        budget = qconc - live
        if budget <= 0 then gated = BLOCKED end
      end
    end
    if qrate then
      local n, t = room(qtat, qrate)
      qtat = t
      if n < budget then
        budget = n
        if budget <= 0 then
          local reopen = t - qrate.tau
          if not gated or reopen < gated then gated = reopen end
        end
      end
    end

    local admitted = 0
    local park_members, park_keys = {}, {}
    local offset = {}  -- per scope, its members an unpark pass took (removed at the pass's end)
    local heads = {}  -- per scope, the order key of its oldest member in Redis (false: none)
    local pending = {}  -- per scope, the oldest order key parked by this claim (written at its end)
    local served = {}  -- the scopes an unpark pass served
    local function park(s, m, eligible)
      local key = order_key(m)
      table.insert(park_members, 0); table.insert(park_members, s .. "|" .. key .. "|" .. m)
      if parked_at[s] == nil or eligible < parked_at[s] then
        parked_at[s] = eligible
        park_keys[s] = eligible
      end
      if pending[s] == nil or key < pending[s] then pending[s] = key end
    end
    -- Whether a scope has a member waiting that was enqueued before `m`, which `m` must then wait
    -- behind (FIFO per scope). Read once per scope and pass, past what the pass took from it.
    local function older_waiting(s, m)
      if heads[s] == nil then
        local first = redis.call(
          "ZRANGEBYLEX", K_parked, "[" .. s .. "|", "[" .. s .. "|\255", "LIMIT", offset[s] or 0, 1)
        heads[s] = first[1] and string.match(first[1], "^[^|]*|([^|]*)|") or false
      end
      local key = order_key(m)
      return (heads[s] and heads[s] < key) or (pending[s] ~= nil and pending[s] < key)
    end
    -- Admit a member (from the ready lists, or `from` the parked scope it waited in) or park it.
    local function consider(m, from)
      local scopes, tt = scopes_of(m)
      if scopes == nil then
        admitted = admitted + 1
        table.insert(taken, m)
        return true
      end
      if from == nil and tt ~= "" and types[tt] and types[tt].fair and #scopes > 1 then
        park(scopes[#scopes], m, now)  -- a fair type's members queue per group, served in turns
        return false
      end
      for _, s in ipairs(scopes) do
        -- A scope being served in this claim still counts: the members its pass has not reached
        -- yet are older than `m` may be.
        if s ~= from and (parked_at[s] ~= nil or served[s]) and older_waiting(s, m) then
          park(s, m, parked_at[s])  -- behind the members already waiting there: FIFO per scope
          return false
        end
        if holds[s] then
          park(s, m, holds[s])  -- a handler said "slow down" for this scope
          return false
        end
        local c, r = limits_of(s)
        if c and inflight[s] >= c then
          park(s, m, BLOCKED)
          return false
        end
        if r and room(tats[s], r) < 1 then
          local _, t = room(tats[s], r)
          park(s, m, t - r.tau)
          return false
        end
      end
      for _, s in ipairs(scopes) do
        inflight[s] = inflight[s] + 1
        dirty_inflight[s] = true
      end
      charge_rates(scopes)
      admitted = admitted + 1
      table.insert(taken, m)
      return true
    end

    -- Write the members parked so far, and their scopes' times (a scope being served gets its
    -- new time as is; another keeps an earlier one: LT).
    local parked_any = false
    local function write_parks()
      if #park_members == 0 then return end
      redis.call("ZADD", K_parked, unpack(park_members))
      local lower, set = {}, {}
      for s, at in pairs(park_keys) do
        local into = served[s] ~= nil and set or lower
        table.insert(into, at); table.insert(into, s)
      end
      if #lower > 0 then redis.call("ZADD", K_parked_keys, "LT", unpack(lower)) end
      if #set > 0 then redis.call("ZADD", K_parked_keys, unpack(set)) end
      if not lim.p then
        redis.call("HSET", K_limits, "p", 1)
        lim.p = "1"
      end
      park_members, park_keys, pending, heads = {}, {}, {}, {}
      parked_any = true
    end

    -- Parked members first (they are older): the scopes whose wait is over, least recently
    -- served first, each up to what its limits allow now; fair scopes in turns, a share each.
    local function unpark()
      if not limited or admitted >= budget then return end
      local ready_keys = redis.call("ZRANGEBYSCORE", K_parked_keys, "-inf", now, "LIMIT", 0, UNPARK_KEYS)
      if #ready_keys == 0 then return end
      local want = {}
      for _, s in ipairs(ready_keys) do want[s] = true end
      load(want)
      local unparked, rescore, gone = {}, {}, {}
      local open = ready_keys
      while #open > 0 and admitted < budget do
        local quantum = math.max(1, math.floor((budget - admitted) / #open))
        local still = {}
        for _, s in ipairs(open) do
          if admitted >= budget then break end
          local take = math.min(quantum, budget - admitted)
          local members = redis.call(
            "ZRANGEBYLEX", K_parked, "[" .. s .. "|", "[" .. s .. "|\255", "LIMIT", offset[s] or 0, take)
          local sc = {}
          for _, pm in ipairs(members) do
            for _, x in ipairs(scopes_of(string.match(pm, "|([^|]*)$")) or {}) do sc[x] = true end
          end
          load(sc)
          parked_at[s] = nil  -- being served: its own members are not parked behind it
          served[s] = true
          local blocked = false
          for _, pm in ipairs(members) do
            table.insert(unparked, pm)  -- it leaves here either way: admitted, or parked again
            offset[s] = (offset[s] or 0) + 1
            if not consider(string.match(pm, "|([^|]*)$"), s) then
              blocked = true
              break
            end
          end
          heads[s] = nil  -- its oldest is further on now
          if not blocked and #members == take then
            table.insert(still, s)  -- may hold more: another turn if the budget allows
          elseif not blocked then
            gone[s] = true  -- nothing left waiting under it
          end
        end
        open = still
      end
      for s, _ in pairs(offset) do
        if park_keys[s] == nil and not gone[s] then
          -- Served for now, with members left: eligible again, behind the scopes not yet served.
          table.insert(rescore, now); table.insert(rescore, s)
          parked_at[s] = now
        end
      end
      local gone_list = {}
      for s, _ in pairs(gone) do
        -- Unlisted only if nothing was parked under it by this claim either (those entries are
        -- written at its end, and a scope listed already keeps its time rather than get one).
        if park_keys[s] == nil and pending[s] == nil then table.insert(gone_list, s) end
      end
      if #unparked > 0 then redis.call("ZREM", K_parked, unpack(unparked)) end
      if #rescore > 0 then redis.call("ZADD", K_parked_keys, unpack(rescore)) end
      if #gone_list > 0 then redis.call("ZREM", K_parked_keys, unpack(gone_list)) end
      offset, heads = {}, {}  -- what this pass took is gone from Redis now
    end

    if budget > 0 then
      unpark()
      -- Then the ready lists, highest (or, with aging, effectively highest) priority first.
      local scanned = 0
      while admitted < budget and scanned < 4 * math.max(budget, 1) do
        local want = budget - admitted
        local r
        if aging and aging > 0 then
          -- Aging: a member gains a priority level per `aging` ms waited (members carry their
          -- enqueue time); pop from the list whose oldest member is effectively highest.
          local best, best_eff, best_ms = nil, -1, nil
          for p = 9, 0, -1 do
            local head = redis.call("LINDEX", KEYS[base + 7 + (9 - p)], -1)
            if head then
              local ms = tonumber(string.match(head, "^%d+:(%d+):"))
              local eff = math.min(9, p + math.floor((now - ms) / aging))
              if eff > best_eff or (eff == best_eff and ms < best_ms) then
                best, best_eff, best_ms = p, eff, ms
              end
            end
          end
          if best == nil then break end
          local popped = redis.call("RPOP", KEYS[base + 7 + (9 - best)], want)
          r = popped and {KEYS[base + 7 + (9 - best)], popped} or nil
        else
          -- LMPOP takes up to COUNT from the first non-empty list only. (Lua expands unpack()
          -- only as the last argument, so the call's arguments are built whole.)
          local lmpop = {"LMPOP", 10}
          for p = 0, 9 do lmpop[3 + p] = KEYS[base + 7 + p] end
          lmpop[13] = "RIGHT"; lmpop[14] = "COUNT"; lmpop[15] = want
          r = redis.call(unpack(lmpop))
        end
        if not r then break end
        scanned = scanned + #r[2]
        local sc = {}
        for _, m in ipairs(r[2]) do
          for _, s in ipairs(scopes_of(m) or {}) do sc[s] = true end
        end
        load(sc)  -- no Redis call unless grouped or limited members were popped
        for _, m in ipairs(r[2]) do consider(m, nil) end
      end
      if #park_members > 0 then
        write_parks()  -- so that the members parked just now (a fair type's) get their turns too
        unpark()
      end
    end

    -- Write back what changed: counts, TATs, parked members and scopes, the lease of each taken.
    local hs = {}
    for s, _ in pairs(dirty_inflight) do table.insert(hs, s); table.insert(hs, inflight[s]) end
    if #hs > 0 then redis.call("HSET", K_inflight, unpack(hs)) end
    local ts = {}
    for s, _ in pairs(dirty_tat) do table.insert(ts, s); table.insert(ts, tats[s]) end
    if qrate and admitted + #recovered > 0 then
      table.insert(ts, "q"); table.insert(ts, qtat + math.max(0, admitted) * qrate.T)
    end
    if #ts > 0 then redis.call("HSET", K_tat, unpack(ts)) end
    if #stale_holds > 0 then redis.call("HDEL", K_tat, unpack(stale_holds)) end
    write_parks()
    if not parked_any and lim.p and redis.call("ZCARD", K_parked_keys) == 0 then
      redis.call("HDEL", K_limits, "p")
      lim.p = nil
    end
    if (lim.p or parked_any) and admitted < budget then
      -- Gated: work waits on a limit while there was room. The earliest a parked scope may
      -- open (BLOCKED: when a slot frees).
      local head = redis.call("ZRANGEBYSCORE", K_parked_keys, "(" .. now, "+inf", "WITHSCORES", "LIMIT", 0, 1)
      if #head > 0 then
        local at = tonumber(head[2])
        if not gated or at < gated then gated = at end
      end
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
    -- Time spent gated (metrics): since when this queue is (`gs`), and the total of the periods
    -- that ended (`gt`), in ms. Written only when the state changes. A claim that could take
    -- nothing from this queue (no free slot in this drain) says nothing either way.
    if offered > 0 then
      if gated and not lim.gs then
        redis.call("HSET", K_limits, "gs", now)
      elseif not gated and lim.gs then
        redis.call("HINCRBY", K_limits, "gt", math.max(0, now - tonumber(lim.gs)))
        redis.call("HDEL", K_limits, "gs")
      end
    end
    if horizon > 0 then
      local head = redis.call("ZRANGE", delayed, 0, 0, "WITHSCORES")
      if #head > 0 then soonest(tonumber(head[2])) end
      if gated then soonest(gated) end
    end
    table.insert(out, queue)
    table.insert(out, taken)
    table.insert(out, recovered)
    table.insert(out, gated)
  end
end
-- One delayed kick per due time: only when it comes before the next regular tick would.
if next_due ~= nil and next_due <= now + horizon then
  if tonumber(redis.call("GET", KEYS[8]) or "0") ~= next_due then
    redis.call("SET", KEYS[8], next_due, "PX", horizon + 60000)
    out[4] = next_due
  end
end
return out
