-- Give up the scheduler's leader lease, if this scheduler still holds it.
-- KEYS[1] - leader key
-- ARGV[1] - this scheduler's id
-- Returns 1 if the lease was given up, 0 if another scheduler held it.
-- Sent again, it finds the lease gone (0).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
