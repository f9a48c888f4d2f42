-- Move page totals from the single pages hash of releases before page buckets
-- ({vc:UNIT}:pages, page id -> live total) into the unit's page buckets. Each page is added
-- to its bucket (hits counted there since the upgrade stay) and removed from the old hash in
-- the same step, so a migration cut short and run again, or run by two processes at once,
-- moves every page exactly once.
-- KEYS[1] the old pages hash, KEYS[2] unit hash, KEYS[2 + i] the bucket of page i
-- ARGV    page id 1, field 1, page id 2, field 2, ... (fields: digests of the page ids)
-- Returns how many of the pages were moved.
local moved = 0
local added = 0
for i = 3, #KEYS do
  local page = ARGV[2 * i - 5]
  local field = ARGV[2 * i - 4]
  local total = redis.call('HGET', KEYS[1], page)
  if total then
    if redis.call('HEXISTS', KEYS[i], field) == 0 then
      added = added + 1
    end
    redis.call('HINCRBY', KEYS[i], field, total)
    redis.call('HDEL', KEYS[1], page)
    moved = moved + 1
  end
end
if added > 0 then
  redis.call('HINCRBY', KEYS[2], 'npages', added)
end
return moved
