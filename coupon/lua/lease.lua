-- Lease the next block of serials to a worker (its local queue).
-- KEYS[1] - campaign meta hash: total, cursor, status, opens_at, closes_at (epoch ms), epoch
-- KEYS[2] - leases zset: lease id -> expiry (epoch ms)
-- KEYS[3] - lease serials hash: lease id -> "start-end[,serial...][,t]" (t: a lease of the tail)
-- KEYS[4] - returned serials list (handed out again before the cursor moves)
-- ARGV[1] - new lease id
-- ARGV[2] - most serials to lease (BLOCK_SIZE)
-- ARGV[3] - lease time to live (ms)
-- ARGV[4] - the last this many serials are leased only as requests wait for them (SINGLE_LEASE_TAIL)
-- ARGV[5] - requests of this worker waiting for a serial now
-- ARGV[6] - the campaign's epoch as the caller loaded it (meta's; new after a recovery)
-- Returns {1, start, end, tail, serial...}: serials start..end (none if start > end) and the listed
--   ones; tail is 1 if they are of the last ARGV[4] (the worker hands them to the requests waiting,
--   and gives back what is unused as soon as they have answered);
--   {0, 0} sold out; {0, 1} none left here but other workers hold some (they are asked for them);
--   {-1} unknown campaign (or of another epoch); {-2} not open yet; {-3} closed;
--   {-4} this lease id was leased before and has expired since: ask under a new one.
-- Asked again under the same lease id (its answer was lost, or replicas had not acknowledged
-- it), it leases nothing more: it answers the same serials and extends the lease.
-- As stock runs low a lease takes only a fair share of what is left, and of the very last serials
-- as many as the worker's requests waiting for one, so no worker sits on the tail.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = redis.call('HMGET', KEYS[1], 'status', 'total', 'cursor', 'opens_at', 'closes_at', 'epoch')
local status, total, cursor = m[1], tonumber(m[2]), tonumber(m[3])
local opens_at, closes_at = tonumber(m[4]), tonumber(m[5])
if not status or (m[6] or '') ~= ARGV[6] then return {-1} end
if status == 'closed' or (closes_at and closes_at > 0 and now >= closes_at) then return {-3} end
if status == 'pending' or (opens_at and now < opens_at) then return {-2} end
local recorded = redis.call('HGET', KEYS[3], ARGV[1])
if recorded then
  local expiry = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
  -- expired, its serials may be reclaimed any moment (reclaim settles any lease it listed)
  if not expiry or expiry < now then return {-4} end
  redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[3]), ARGV[1])
  local reply = {1, 0, -1, 0}
  for part in string.gmatch(recorded, '[^,]+') do
    local first, last = string.match(part, '^(%d+)-(%d+)$')
    if first then
      reply[2], reply[3] = tonumber(first), tonumber(last)
    elseif part == 't' then
      reply[4] = 1
    else
      reply[#reply + 1] = tonumber(part)
    end
  end
  return reply
end
local returned = redis.call('LLEN', KEYS[4])
local remaining = total - cursor + returned
local live = redis.call('ZCOUNT', KEYS[2], now, '+inf')
if remaining <= 0 then
  if live == 0 then return {0, 0} end
  -- other workers hold serials: ask them (through meta, read every STATE_REFRESH) to give back
  -- the ones they have not handed out, so no one sits on the tail while this one is dry
  redis.call('HSET', KEYS[1], 'wanted', now)
  return {0, 1}
end
local want = math.min(tonumber(ARGV[2]), math.max(1, math.ceil(remaining / (4 * (live + 1)))))
-- the tail: exactly what the worker's waiting requests take at once, so none of it sits idle
local tail = remaining <= tonumber(ARGV[4])
if tail then want = math.max(1, math.min(remaining, tonumber(ARGV[5]))) end
local reply = {1, 0, -1, tail and 1 or 0}
local parts = {}
if returned > 0 then
  local back = redis.call('LPOP', KEYS[4], want)
  for _, s in ipairs(back) do
    reply[#reply + 1] = tonumber(s)
    parts[#parts + 1] = s
  end
  want = want - #back
end
local n = math.min(want, total - cursor)
if n > 0 then
  reply[2], reply[3] = cursor + 1, cursor + n
  redis.call('HINCRBY', KEYS[1], 'cursor', n)
  table.insert(parts, 1, (cursor + 1) .. '-' .. (cursor + n))
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
if tail then parts[#parts + 1] = 't' end
redis.call('HSET', KEYS[3], ARGV[1], table.concat(parts, ','))
return reply
