-- Acknowledge and delete flushed entries of one outbox stream; once the stream holds none, take
-- the campaign off the shard's outbox news set. Atomic with claim.lua (same slot), so a claim
-- written after the last entry was read keeps the campaign on the set.
-- KEYS[1] - outbox stream of a campaign's claim shard
-- KEYS[2] - the shard's outbox news set (keys.ShardKeys.news)
-- ARGV[1] - consumer group; ARGV[2] - campaign id; ARGV[3..] - entry ids (none: only the check)
-- Returns the entries left in the stream.
if #ARGV > 2 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3))
  redis.call('XDEL', KEYS[1], unpack(ARGV, 3))
end
local left = redis.call('XLEN', KEYS[1])
if left == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return left
