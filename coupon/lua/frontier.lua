-- Publish a worker's arrival frontier and read the other workers' (first come, first served
-- across workers and hosts: arrival.ArrivalGate).
-- KEYS[1] - frontiers hash, shared by every worker: worker id -> "<frontier ms> <published ms>"
--           (Redis's clock; the frontier is the arrival of the worker's oldest waiting request)
-- ARGV[1] - this worker's id
-- ARGV[2] - its frontier (epoch ms, a decimal fraction allowed); "": it holds nobody back (removed)
-- ARGV[3] - ms after which a frontier not published again counts no more (its worker died or
--           stalled), and is removed
-- Returns the earliest frontier of the other workers as a string, or "" if none.
-- Sent again, it publishes the same frontier again: nothing else changes.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. now)
end
local earliest = nil
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if entries[i] ~= ARGV[1] then
    local frontier, published = string.match(entries[i + 1], '^(%S+) (%d+)$')
    if not published or tonumber(published) < now - tonumber(ARGV[3]) then
      redis.call('HDEL', KEYS[1], entries[i])
    elseif not earliest or tonumber(frontier) < tonumber(earliest) then
      earliest = frontier
    end
  end
end
return earliest or ''
