-- Extend the leases of a live worker.
-- KEYS[1] - leases zset: lease id -> expiry (epoch ms)
-- ARGV[1] - lease time to live (ms)
-- ARGV[2..] - lease ids
-- Returns one integer per lease: 1 renewed; 0 already expired or reclaimed (drop its serials).
-- Sent again, it only extends again from now: never an expired lease back to life.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local replies = {}
for i = 2, #ARGV do
  local expiry = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
  if expiry and expiry >= now then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
    replies[#replies + 1] = 1
  else
    replies[#replies + 1] = 0
  end
end
return replies
