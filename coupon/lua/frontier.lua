-- Publish a worker's frontier of a campaign (first come, first served across workers and hosts:
-- arrival.ArrivalGate): the earliest arrival it may hold of the campaign that has not bid yet.
-- KEYS[1] - campaign meta hash: only a campaign Redis holds is published to (no key is made for
--           an unknown campaign, or one released since)
-- KEYS[2] - the campaign's bidders hash: worker id -> "<frontier ms> <published ms>" (Redis's
--           clock; frontier "-": none that has not bid), read by lease.lua
-- ARGV[1] - the worker's id
-- ARGV[2] - its frontier (epoch ms, a decimal fraction allowed); "": it lists itself no more (its
--           field is removed)
-- Returns 1; 0 if Redis does not hold the campaign. Sent again, it publishes the same again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. now)
return 1
