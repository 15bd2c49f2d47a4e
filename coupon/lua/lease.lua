-- Lease the next block of serials to a worker (its local queue).
-- KEYS[1] - campaign meta hash: total, cursor, status, opens_at, closes_at (epoch ms), epoch
-- KEYS[2] - leases zset: lease id -> expiry (epoch ms)
-- KEYS[3] - lease serials hash: lease id -> "start-end[,serial...][,t]" (t: a lease of the tail)
-- KEYS[4] - returned serials list (handed out again before the cursor moves)
-- KEYS[5] - bids zset: "<bidder>|<bid id>" -> arrival (in arrival order only)
-- KEYS[6] - bidders hash: bidder -> "<frontier> <when it said so (epoch ms)>" (frontier.lua too)
-- ARGV[1] - new lease id
-- ARGV[2] - most serials to lease (BLOCK_SIZE)
-- ARGV[3] - lease time to live (ms)
-- ARGV[4] - the last this many serials are leased only as requests wait for them (SINGLE_LEASE_TAIL;
--           in arrival order, supply.ORDERED_TAIL, and never in blocks)
-- ARGV[5] - requests of this worker waiting for a serial now
-- ARGV[6] - the campaign's epoch as the caller loaded it (meta's; new after a recovery)
-- ARGV[7] - in arrival order (ARRIVAL_ORDER, coupon/arrival.py): this worker's frontier, the
--           earliest arrival (epoch ms, Redis's clock) of its requests of the campaign that have
--           not bid, but for those bidding now ("-": none); "" (or absent): not in arrival order,
--           and ARGV[8..] are not sent
-- ARGV[8] - the bidder: this worker's id
-- ARGV[9] - ms after which a bidder not heard from (here or by frontier.lua) is gone: its frontier
--           holds no one back, its bids are dropped
-- ARGV[10] - ms a worker not listed in the bidders hash may take to read its first request of the
--           campaign and list itself, with the roll unknown (ARGV[13] 0): during the opening
--           (ARGV[11]) the watermark is never later than now minus this
-- ARGV[11] - ms from the campaign's opens_at during which workers may still be listing themselves
--           (the opening: its flood comes at once, and a worker it swamps may take hundreds of ms
--           to read its first request of the campaign and list itself)
-- ARGV[12] - ms a bidder's frontier may be behind now for it to count as caught up: it holds no
--           one back (what it has not bid yet arrived at most this before now, however the time
--           splits between its own lag and the age of its word); a bidder further behind (a queue,
--           or silent) holds the watermark at its frontier
-- ARGV[13] - the web workers serving, of every host (arrival.WorkerRoll; 0: unknown): during the
--           opening no bid is answered until as many bidders are listed (none is left that may hold
--           an earlier request unlisted)
-- ARGV[14] - most serials to grant ahead (0: none): with every bid of the campaign answered, none
--           held back by a bidder with a queue, and the opening over, the worker whose bids got
--           serials is granted this many more, for its requests that arrive within ARGV[15] ms of
--           now (they take one without bidding: no round trip before their claim). A request that
--           takes one passes a request at another worker by ARGV[12] + ARGV[15] ms at most
-- ARGV[16..] - pairs: bid id, arrival (epoch ms, Redis's clock) of requests of this worker waiting
--           for a serial: those that bid for the first time (a bid stays until answered, withdrawn or
--           its bidder is gone; sent again, it is the same bid); arrival "": the bid is withdrawn
--           (the request went without a serial)
-- Returns {1, start, end, tail, serial...}: serials start..end (none if start > end) and the listed
--   ones; tail is 1 if they are of the last ARGV[4] (the worker hands them to the requests waiting,
--   and gives back what is unused as soon as they have answered);
--   {0, 0} sold out; {0, 1} none left here but other workers hold some (they are asked for them);
--   {-1} unknown campaign (or of another epoch); {-2} not open yet; {-3} closed;
--   {-4} this lease id was leased before and has expired since: ask under a new one;
--   in arrival order, of the tail: {5, start, end, {granted bid ids}, until, serial...}: serials
--   as above, one for each granted bid of this worker in turn (its earliest, as many as there are
--   serials), then those granted ahead (ARGV[14]) for its requests that arrive before `until`
--   (epoch ms; 0: none ahead); its other bids wait. The tail goes to the bids in arrival order up
--   to the watermark, whichever worker made them: a serial kept for another worker's earlier bid is
--   leased to that worker when it asks. With none left but some in flight elsewhere (leased), the
--   bids wait ({6}; the holders are asked for them, as for {0, 1}): a serial that comes back
--   unused goes to the next of them. So a bid is refused only once none is left or in flight
--   ({0, 0}), never while a serial may still come back.
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
local ordered = (ARGV[7] or '') ~= ''
-- the watermark, bids up to which are answered: now, but for the earliest frontier of the live
-- bidders that lag (a queue), and for the floor at the opening (upto: as it was written, since a
-- Lua number passed to Redis keeps only 14 digits, ~0.1 ms)
local watermark, upto, opening
local alive = {}  -- bidder -> true: the live ones (a gone one's bids keep nothing)
if ordered then
  redis.call('HSET', KEYS[6], ARGV[8], ARGV[7] .. ' ' .. now)
  local bidders = redis.call('HGETALL', KEYS[6])
  local caught_up, listed = tonumber(ARGV[12]), 0
  watermark = now
  for i = 1, #bidders, 2 do
    local frontier, said = string.match(bidders[i + 1], '^(%S+) (%d+)$')
    if not said or tonumber(said) < now - tonumber(ARGV[9]) then
      redis.call('HDEL', KEYS[6], bidders[i])  -- gone: holds no one back, its bids keep nothing
    else
      alive[bidders[i]] = true
      listed = listed + 1
      said = tonumber(said)
      local at = frontier ~= '-' and tonumber(frontier)
      if at and now - at > caught_up and at < watermark then
        watermark, upto = at, frontier
      end
    end
  end
  local roll = tonumber(ARGV[13])
  opening = opens_at and now - opens_at < tonumber(ARGV[11])
  if opening then
    if roll == 0 then  -- who else serves is unknown: time for them to list themselves
      watermark = math.min(watermark, now - tonumber(ARGV[10]))
    elseif listed < roll then  -- a worker on the roll may hold the earliest requests, unlisted
      watermark = 0
    end
  end
  if not upto or tonumber(upto) > watermark then upto = tostring(watermark) end
  for i = 16, #ARGV, 2 do
    if ARGV[i + 1] == '' then  -- withdrawn: that request went without a serial
      redis.call('ZREM', KEYS[5], ARGV[8] .. '|' .. ARGV[i])
    else
      redis.call('ZADD', KEYS[5], ARGV[i + 1], ARGV[8] .. '|' .. ARGV[i])
    end
  end
  -- in flight elsewhere: a serial that comes back unused goes to the next bid; until then, wait
  if remaining <= 0 and live > 0 then
    redis.call('HSET', KEYS[1], 'wanted', now)  -- workers holding serials unused: give them back
    return {6}
  end
end
if remaining <= 0 then
  if live == 0 then return {0, 0} end
  -- other workers hold serials: ask them (through meta, which they read as requests come, and
  -- the idle ones when the caller says so: Scripts.ask_holders) to give back the ones they have
  -- not handed out, so no one sits on the tail while this one is dry
  redis.call('HSET', KEYS[1], 'wanted', now)
  return {0, 1}
end
local want = math.min(tonumber(ARGV[2]), math.max(1, math.ceil(remaining / (4 * (live + 1)))))
-- the tail: exactly what the worker's waiting requests take at once, so none of it sits idle
local tail = remaining <= tonumber(ARGV[4])
local reply = {1, 0, -1, tail and 1 or 0}
if tail and not ordered then want = math.max(1, math.min(remaining, tonumber(ARGV[5]))) end
if ordered and not tail then want = math.min(want, remaining - tonumber(ARGV[4])) end
if ordered and tail then
  local bidder = ARGV[8] .. '|'
  local available, granted = remaining, {}
  -- in arrival order up to the watermark, until the serials left are spoken for: a serial kept
  -- for another worker's earlier bid, or ours (the walk stops there: a page is enough)
  for _, bid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', upto,
                                  'LIMIT', 0, remaining + 256)) do
    local owner = string.match(bid, '^(.*)|')
    if not alive[owner] then
      redis.call('ZREM', KEYS[5], bid)  -- a gone worker's bid keeps nothing
    elseif available == 0 then
      break
    else
      available = available - 1
      if owner .. '|' == bidder then
        granted[#granted + 1] = string.sub(bid, #bidder + 1)
        redis.call('ZREM', KEYS[5], bid)
      end
    end
  end
  reply = {5, 0, -1, granted, 0}
  if #granted == 0 then return reply end
  want = #granted
  -- no queue anywhere, no bid left waiting: the next few requests of this worker need not bid
  local ahead = math.min(tonumber(ARGV[14]), available)
  if ahead > 0 and watermark == now and not opening and redis.call('ZCARD', KEYS[5]) == 0 then
    want = want + ahead
    reply[5] = now + tonumber(ARGV[15])
  end
end
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
