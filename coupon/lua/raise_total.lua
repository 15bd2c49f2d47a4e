-- Raise a campaign's stock to the total the database committed (add-stock, the stock sync job).
-- The total here is never lowered and only ever takes a value the database holds, so it never
-- exceeds the database's: serials up to it are issued after the ones there were.
-- KEYS[1] - campaign meta hash: total, cursor, status, ...
-- ARGV[1] - the campaign's total in the database
-- Returns the total Redis holds now, or -1 if it does not hold the campaign.
-- Sent again, or with an older total (a later addition raised it further): it changes nothing.
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if not total then return -1 end
if tonumber(ARGV[1]) > total then
  total = tonumber(ARGV[1])
  redis.call('HSET', KEYS[1], 'total', total)
end
return total
