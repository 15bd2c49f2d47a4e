-- Count a ticket lookup against the user's rate limit (claim.lua counts issue calls, in the same
-- window hash; the rule: lib/rate_limit.lua).
-- KEYS[1] - rate hash of the current window: user id -> requests (keys.ShardKeys.rate)
-- ARGV[1] - user id
-- ARGV[2] - requests a user may make per window; 0: no limit
-- ARGV[3] - seconds of the window (the rate hash expires that long after its last write)
-- Returns 1 if the user is over the limit, else 0.
-- Sent again, it counts the lookup again.
local over = rate_over(KEYS[1], ARGV[1], tonumber(ARGV[2]))
rate_expire(KEYS[1], ARGV[3])
return over and 1 or 0
