-- Record changed settings of a loaded unit (an unloaded one gets them when it is loaded),
-- and add newly registered pages to its live totals.
-- KEYS[1] unit hash, KEYS[1 + i] the bucket of new page i
-- ARGV[1] time zone, ARGV[2] settings (JSON), ARGV[2 + i] new page i's field (a digest)
-- Returns 1 when the unit is loaded (and was updated), 0 when it is not.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'tz', ARGV[1], 'cfg', ARGV[2])
local added = 0
for i = 2, #KEYS do
  added = added + redis.call('HSETNX', KEYS[i], ARGV[i + 1], 0)
end
if added > 0 then
  redis.call('HINCRBY', KEYS[1], 'npages', added)
end
return 1
