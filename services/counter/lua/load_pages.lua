-- Refill part of a unit's page totals from Postgres after Redis lost them (or for a new site).
-- Only while the unit is not loaded: hits are refused then, so writing absolute values is
-- safe and a second loader racing this one writes the same numbers (and counts no page twice).
-- KEYS[1] unit hash, KEYS[1 + i] the bucket of page i
-- ARGV    field1, total1, field2, total2, ... (fields: digests of the page ids)
-- Returns 1 when written, 0 when the unit was already loaded (nothing written).
if redis.call('HEXISTS', KEYS[1], 'gen') == 1 then
  return 0
end
local added = 0
for i = 2, #KEYS do
  added = added + redis.call('HSET', KEYS[i], ARGV[2 * i - 3], ARGV[2 * i - 2])
end
if added > 0 then
  redis.call('HINCRBY', KEYS[1], 'npages', added)
end
return 1
