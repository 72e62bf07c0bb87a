-- restore_leases.lua: index the leases of rows Postgres says are processing (reconcile), each
-- counted in its flow-control scopes when it was not there already, as ack.lua and claim.lua
-- count every lease that comes and goes. After a flush this rebuilds the counts from scratch.
--
-- KEYS: per queue, 2 keys: processing ZSET, inflight HASH.
-- ARGV: per queue, n then n pairs (deadline ms, lease member).
-- Returns the number of leases added. Commands: per queue 1 ZMSCORE, 1 ZADD, 1 HINCRBY per scope.

local a = 1
local added = 0
for b = 1, #KEYS, 2 do
  local processing, inflight = KEYS[b], KEYS[b + 1]
  local n = tonumber(ARGV[a]); a = a + 1
  local pairs_ = {}
  for j = 1, 2 * n do pairs_[j] = ARGV[a]; a = a + 1 end
  local leases = {}
  for j = 2, #pairs_, 2 do table.insert(leases, pairs_[j]) end
  if #leases > 0 then
    local scores = redis.call("ZMSCORE", processing, unpack(leases))
    local add, delta = {}, {}
    for j, lease in ipairs(leases) do
      if not scores[j] then
        table.insert(add, pairs_[2 * j - 1]); table.insert(add, lease)
        local tt, gh = string.match(lease, "^%d+:%d+:%d+:([^:|]*):([^:|]*)|")
        if tt ~= nil then
          if tt ~= "" then delta["t:" .. tt] = (delta["t:" .. tt] or 0) + 1 end
          if gh ~= "" then delta["g:" .. gh] = (delta["g:" .. gh] or 0) + 1 end
          if tt ~= "" and gh ~= "" then
            local s = "t:" .. tt .. ":g:" .. gh
            delta[s] = (delta[s] or 0) + 1
          end
        end
      end
    end
    if #add > 0 then
      redis.call("ZADD", processing, unpack(add))
      added = added + #add / 2
    end
    for s, d in pairs(delta) do redis.call("HINCRBY", inflight, s, d) end
  end
end
return added
