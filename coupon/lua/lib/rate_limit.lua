-- The rate limit's window hash (keys.ShardKeys.rate, coupon/rate_limit.py): user id -> requests.
-- Not a script: scripts.py puts it before the scripts that count (claim.lua, count_lookup.lua),
-- so that the rule is written once: a script counts each request with rate_over, then calls
-- rate_expire once.
local rate_counted = false

-- Count a request of `user` in the window hash `key`; true if it is over `limit` (0: no limit,
-- nothing counted).
local function rate_over(key, user, limit)
  if limit <= 0 then return false end
  rate_counted = true
  return redis.call('HINCRBY', key, user, 1) > limit
end

-- Take back a request rate_over counted (the same request, come again).
local function rate_uncount(key, user, limit)
  if limit > 0 then redis.call('HINCRBY', key, user, -1) end
end

-- The hash expires `seconds` after its last write: once a call, if it counted anything (not once a
-- request: each redis.call costs about a microsecond).
local function rate_expire(key, seconds)
  if rate_counted then redis.call('EXPIRE', key, seconds) end
end

