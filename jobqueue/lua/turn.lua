-- turn.lua: take turns on clock-based markers (debounces, "due every N ms" tasks), atomically, so
-- racing drains cannot both win. A marker holds the next due time in ms of the caller's clock
-- rather than relying on a PX expiry, so intervals follow the injected clock like every other time
-- in the engine (tests move a FakeClock instead of sleeping); the PX only lets Redis forget
-- markers nobody asks about any more.
--
-- KEYS[i]  a marker; missing means due now
-- ARGV[1]  now in ms
-- ARGV[2]  interval in ms: a key that is due is moved to now + interval
-- ARGV[3]  expiry (PX) in real ms for the markers set
--
-- Returns one 1 (turn taken) or 0 (not due yet) per key. Commands: 1 GET per key, 1 SET per turn.
local now = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  if now < tonumber(redis.call("GET", key) or "0") then
    out[i] = 0
  else
    redis.call("SET", key, now + tonumber(ARGV[2]), "PX", ARGV[3])
    out[i] = 1
  end
end
return out
