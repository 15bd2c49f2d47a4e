-- Claim serials for users: one batch of one claim shard, in one round trip.
-- KEYS[1] - claimed-serials bitmap of the shard
-- KEYS[2] - outbox stream of the shard (read by the flush job): one entry a call with its new
--           claims (up to ARGV[5] an entry), its one field e "<user id> <serial> [<user id>
--           <serial> ...] <issued at, epoch ms>" (scripts.OutboxEntry; an entry a claim cost ~1.6
--           us more of Redis CPU a claim, and the flush ~1 us)
-- KEYS[3] - shard state hash: issued (count), closes_at (epoch ms; 0: closed), epoch, time_base
--           (epoch ms; see below), flushed (count: ack_outbox.lua); gone once the campaign is
--           released after close (or lost with Redis): every claim is stale
-- KEYS[4] - rate hash of the current window: user id -> requests (see keys.ShardKeys.rate); a
--           request that claims a new ticket is not counted: a user gets one, and counting it
--           cost every coupon a write to a hash of every user (~2.5 us of Redis CPU: BENCHMARKS.md,
--           "A new claim as one write, an outbox entry a call"); counted by the rule of
--           lib/rate_limit.lua, which scripts.py puts before this script
-- KEYS[5] - the shard's outbox news set, shared by all campaigns: gets the campaign id with a
--           new claim, so the flush job finds the streams that hold entries without polling all
-- KEYS[6] - the shard's new tickets per second: hash epoch second -> count (the operators'
--           page draws the sale from it while Redis holds the campaign)
-- KEYS[6 + i] - the claims bucket of the i-th pair's user (keys.CampaignKeys.claims_of):
--           hash user id -> issued_at_ms - time_base, then the serial in 8 digits, as decimal
--           digits (scripts.StoredClaim; the code is derived from the serial, never stored)
-- ARGV[1] - campaign id
-- ARGV[2] - requests a user may make per window; 0: no limit
-- ARGV[3] - seconds of the window (the rate hash expires that long after its last write)
-- ARGV[4] - the campaign's epoch the caller's serials were leased in (its meta hash's, see
--           lease.lua): a new one after `flask campaign recover`, so that serials leased before
--           Redis lost the campaign are never claimed after
-- ARGV[5] - claims an outbox entry holds at most (scripts.OUTBOX_ENTRY_MOST)
-- ARGV[6..] - pairs: user id, serial; serial 0 only asks whether the user holds a ticket
-- Returns one reply per pair, in order:
--   {1, serial, issued_at_ms}  new ticket (claim and outbox entry written together)
--   {2, serial, issued_at_ms}  the user already held this ticket; the offered serial is unused
--   {3}                        the offered serial was claimed before; offer another
--   {4}                        the campaign is closed
--   {5}                        the user is over the rate limit; the offered serial is unused
--   {6}                        (serial 0) the user holds no ticket: claim with a serial
--   {7}                        stale: the shard is gone or of another epoch; load the
--                              campaign again (from the database if Redis lacks it)
-- Sent again with the same arguments (an answer lost, or short of replica acknowledgements), it
-- claims nothing twice: the user who got the ticket gets it back ({2, the same serial, ...});
-- only the rate limit counts the request again (the ticket held).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local shard = redis.call('HMGET', KEYS[3], 'issued', 'closes_at', 'epoch', 'time_base')
local closes_at = tonumber(shard[2])
local replies = {}
if not shard[1] or (shard[3] or '') ~= ARGV[4] then
  for i = 6, #ARGV, 2 do replies[#replies + 1] = {7} end
  return replies
end
local time_base = tonumber(shard[4])
local limit = tonumber(ARGV[2])
local new = 0
local entry, most = {}, 2 * tonumber(ARGV[5])  -- the new claims not yet in an entry: user, serial, ...
local function append()
  entry[#entry + 1] = now
  redis.call('XADD', KEYS[2], '*', 'e', table.concat(entry, ' '))
  entry = {}
end
for i = 6, #ARGV, 2 do
  local user, serial = ARGV[i], ARGV[i + 1]
  local bucket = KEYS[6 + (i - 4) / 2]
  -- a new claim first (HSETNX writes nothing when the user holds a ticket: then the branches below)
  if serial ~= '0' and not (closes_at and now >= closes_at)
      and redis.call('HSETNX', bucket, user, string.format('%d%08d', now - time_base, serial)) == 1 then
    if redis.call('SETBIT', KEYS[1], serial, 1) == 1 then
      redis.call('HDEL', bucket, user)  -- the serial was not free: the claim is undone
      replies[#replies + 1] = {3}
    else
      entry[#entry + 1] = user
      entry[#entry + 1] = serial
      if #entry == most then append() end
      replies[#replies + 1] = {1, tonumber(serial), now}
      new = new + 1
    end
  elseif rate_over(KEYS[4], user, limit) then
    -- the limit before the answer: a user who holds a ticket may not hammer
    replies[#replies + 1] = {5}
  else
    local held = redis.call('HGET', bucket, user)
    if held then
      -- split as text: the whole can pass 2^53, where Lua's numbers (doubles) stop being exact
      local at = tonumber(string.sub(held, 1, -9)) + time_base
      replies[#replies + 1] = {2, tonumber(string.sub(held, -8)), at}
    elseif closes_at and now >= closes_at then
      replies[#replies + 1] = {4}
    else  -- serial 0, open: the user holds no ticket
      -- the caller comes again with a serial: that is the same request, not a new one
      rate_uncount(KEYS[4], user, limit)
      replies[#replies + 1] = {6}
    end
  end
end
if #entry > 0 then append() end
if new > 0 then  -- once a call, not a claim: each redis.call costs about a microsecond
  redis.call('HINCRBY', KEYS[3], 'issued', new)
  redis.call('SADD', KEYS[5], ARGV[1])
  redis.call('HINCRBY', KEYS[6], string.format('%d', math.floor(now / 1000)), new)  -- one now a call
end
rate_expire(KEYS[4], ARGV[3])
return replies
