-- Give unused serials of a lease back for re-issue and end the lease, if it still stands.
-- Used by a worker that shuts down cleanly and by the reclaim job for expired leases.
-- KEYS[1] - leases zset: lease id -> expiry (epoch ms)
-- KEYS[2] - lease serials hash: lease id -> encoded serials
-- KEYS[3] - returned serials list
-- ARGV[1] - lease id
-- ARGV[2..] - the serials to give back (never claimed)
-- Returns the number of serials given back, or -1 if the lease was already settled by someone else.
-- Sent again, it finds the lease settled (-1): serials are never returned twice.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if #ARGV > 1 then
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 2))
end
return #ARGV - 1
