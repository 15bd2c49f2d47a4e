-- Acknowledge and delete flushed entries of one outbox stream, and count their claims as flushed;
-- once the stream holds none, move the campaign from the shard's outbox news set to its drained
-- set (for the stock sync). Atomic with claim.lua (same slot), so a claim written after the last
-- entry was read keeps the campaign on the news set. Sent again (or by two flushers for the same
-- entries): acknowledges and counts nothing more.
-- KEYS[1] - outbox stream of a campaign's claim shard
-- KEYS[2] - the shard's outbox news set (keys.ShardKeys.news)
-- KEYS[3] - the shard's outbox drained set (keys.ShardKeys.drained)
-- KEYS[4] - the shard's state hash: flushed counts the claims acknowledged (issued less flushed:
--           the backlog, outbox.outbox_stats); left alone once gone (the campaign released)
-- ARGV[1] - consumer group; ARGV[2] - campaign id; ARGV[3..] - pairs: entry id, its claims (none:
--           only the check)
-- Returns {claims this call acknowledged (pending till now), entries left in the stream}.
local acked = 0
if #ARGV > 2 then
  for i = 3, #ARGV, 2 do
    if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then acked = acked + tonumber(ARGV[i + 1]) end
  end
  if acked > 0 and redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('HINCRBY', KEYS[4], 'flushed', acked)
  end
  -- delete every entry acknowledged, this call's and earlier ones': those before the first still
  -- pending (another flusher's batch in flight), or with none pending, before the first not
  -- delivered yet. A trim drops whole nodes of entries, where XDEL looked each id up
  local keep = redis.call('XPENDING', KEYS[1], ARGV[1])[2]
  if not keep then
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      local info = {}
      for k = 1, #group, 2 do info[group[k]] = group[k + 1] end
      if info['name'] == ARGV[1] then
        local ms, seq = string.match(info['last-delivered-id'], '^(%d+)-(%d+)$')
        keep = ms .. '-' .. (tonumber(seq) + 1)
      end
    end
  end
  redis.call('XTRIM', KEYS[1], 'MINID', keep)
end
local left = redis.call('XLEN', KEYS[1])
if left == 0 and redis.call('SREM', KEYS[2], ARGV[2]) == 1 then
  redis.call('SADD', KEYS[3], ARGV[2])
end
return {acked, left}
