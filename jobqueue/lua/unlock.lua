-- unlock.lua: release a lock only if this caller still owns it (a holder that overran the lock's
-- expiry must not delete the lock a later holder took).
--
-- KEYS[1]  the lock key
-- ARGV[1]  the owner token the lock was taken with (SET key token NX PX ttl)
--
-- Returns 1 when released, 0 when the lock is gone or held by someone else. Commands: 1-2.
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
