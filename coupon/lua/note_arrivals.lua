-- Note what one worker saw of a sale's order (coupon/fairness.py): the latest arrival it issued
-- a new ticket to, and when the requests it refused SOLD_OUT arrived.
-- KEYS[1] - campaign meta hash: only a campaign Redis holds is noted (never one released since)
-- KEYS[2] - arrivals hash: "w:<worker id>" -> the latest arrival (epoch ms, Redis's clock, a
--           decimal fraction) the worker issued a new ticket to; "r:<ms>" -> requests refused
--           SOLD_OUT that arrived in that epoch ms
-- ARGV[1] - worker id
-- ARGV[2] - the worker's latest winning arrival; "": no new ticket since its last call
-- ARGV[3..] - pairs: epoch ms, requests refused SOLD_OUT that arrived in it
-- Returns 1; 0 if Redis does not hold the campaign (nothing noted).
-- Sent again, its refusals count twice: a figure for people, not one any invariant rests on.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] ~= '' then
  local field = 'w:' .. ARGV[1]
  local before = tonumber(redis.call('HGET', KEYS[2], field) or '0')
  if tonumber(ARGV[2]) > before then redis.call('HSET', KEYS[2], field, ARGV[2]) end
end
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], 'r:' .. ARGV[i], ARGV[i + 1])
end
return 1
