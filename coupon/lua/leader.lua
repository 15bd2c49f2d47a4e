-- Take or keep the scheduler's leader lease.
-- KEYS[1] - leader key
-- ARGV[1] - this scheduler's id
-- ARGV[2] - lease time to live (ms)
-- Returns 1 if this scheduler leads now (taken or renewed), 0 if another one does.
-- Sent again, it renews what it took.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
