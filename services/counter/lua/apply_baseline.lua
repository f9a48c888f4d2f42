-- Add one chunk of a baseline change (legacy counts carried over) to a site's live totals.
-- Postgres committed the change with the load generation that was current under the site's
-- row lock; a load since then (a new or missing generation) already includes it, so the
-- chunk is applied only under that same generation. Redis remembers the last chunk applied
-- ("change:chunk" in the site hash), and chunks are applied in order, so a chunk sent again
-- (a retry after a timeout, two processes settling at once) changes nothing. Atomic so the
-- check, the deltas and the mark cannot be separated.
-- KEYS[1] unit hash ({vc:UNIT}:site), KEYS[1 + i] the bucket of page i
-- ARGV[1] generation, ARGV[2] change id, ARGV[3] chunk, ARGV[4] the unit's part of the site
-- delta, ARGV[5..] field, delta, field, delta, ... (fields: digests of the page ids)
-- Returns 1 applied, 2 applied before (nothing done), 0 not for this generation (nothing done).
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then
  return 0
end
local change = tonumber(ARGV[2])
local chunk = tonumber(ARGV[3])
local mark = redis.call('HGET', KEYS[1], 'blmark')
if mark then
  local sep = string.find(mark, ':', 1, true)
  local done_change = tonumber(string.sub(mark, 1, sep - 1))
  local done_chunk = tonumber(string.sub(mark, sep + 1))
  if done_change > change or (done_change == change and done_chunk >= chunk) then
    return 2
  end
end
if ARGV[4] ~= '0' then
  redis.call('HINCRBY', KEYS[1], 'views', ARGV[4])
end
local added = 0
for i = 2, #KEYS do
  local field = ARGV[2 * i + 1]
  if redis.call('HEXISTS', KEYS[i], field) == 0 then
    added = added + 1
  end
  redis.call('HINCRBY', KEYS[i], field, ARGV[2 * i + 2])
end
if added > 0 then
  redis.call('HINCRBY', KEYS[1], 'npages', added)
end
redis.call('HSET', KEYS[1], 'blmark', ARGV[2] .. ':' .. ARGV[3])
return 1
