-- Write claims back into one shard's claims buckets (`flask campaign recover`), many a call: at
-- 10M coupons the rows of a chunk hold about one claim per bucket, and an HSET each from the
-- client cost more than the writes.
-- KEYS[i] - the claims bucket of the i-th pair's user (keys.CampaignKeys.claims_of)
-- ARGV[2i - 1], ARGV[2i] - user id, the claim as claim.lua stores it (scripts.StoredClaim)
-- Returns the claims written.
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
end
return #KEYS
