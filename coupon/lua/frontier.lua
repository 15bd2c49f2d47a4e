-- Publish a worker's frontier of a campaign (first come, first served across workers and hosts:
-- arrival.ArrivalGate): the earliest arrival it holds of the campaign that has not bid yet.
-- KEYS[1] - the campaign's bidders hash: worker id -> "<frontier ms> <published ms>" (Redis's
--           clock; frontier "-": it holds none that has not bid), read by lease.lua
-- ARGV[1] - the worker's id
-- ARGV[2] - its frontier (epoch ms, a decimal fraction allowed); "": it holds no request of the
--           campaign any more (its field is removed)
-- Returns 1. Sent again, it publishes the same again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. now)
end
return 1
