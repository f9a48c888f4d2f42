-- Make the days hash of a unit loaded by an earlier release exact, once. The flusher calls
-- it right after its batch of the unit committed, holding the unit's lease, so no snapshot
-- of the unit is in flight: each day's views are then Postgres' part of it plus the unit's
-- pending deltas of that day, read here in the same atomic step as the write.
-- KEYS[1] unit hash, KEYS[2] days hash, KEYS[3..10] the unit's pending shards 0..7
-- ARGV[1] the unit's generation when Postgres was read, ARGV[2] the marker field name,
-- then day, views pairs: the unit's part of site_views_daily for the recent days
-- Returns 1 when filled, 0 when nothing was written (already exact, or the unit was lost or
-- refilled meanwhile: a load fills the hash itself).
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return 0
end
local days = {}
for i = 3, #ARGV, 2 do
  days[ARGV[i]] = tonumber(ARGV[i + 1])
end
for k = 3, #KEYS do
  local pending = redis.call('HGETALL', KEYS[k])
  for i = 1, #pending, 2 do
    local day = string.sub(pending[i], 1, 10)
    days[day] = (days[day] or 0) + tonumber(pending[i + 1])
  end
end
redis.call('DEL', KEYS[2])
local fields = {ARGV[2], 1}
for day, views in pairs(days) do
  fields[#fields + 1] = day
  fields[#fields + 1] = views
end
redis.call('HSET', KEYS[2], unpack(fields))
return 1
