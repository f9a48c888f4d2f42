-- Record changed settings of a loaded site (an unloaded one gets them when it is loaded),
-- and add newly registered pages to its live totals.
-- KEYS[1] site hash, KEYS[2] pages hash
-- ARGV[1] time zone, ARGV[2] settings (JSON), ARGV[3..] pages to add with no views yet
-- Returns 1 when the site is loaded (and was updated), 0 when it is not.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'tz', ARGV[1], 'cfg', ARGV[2])
for i = 3, #ARGV do
  redis.call('HSETNX', KEYS[2], ARGV[i], 0)
end
return 1
