-- Read live totals and today's unique visitors without counting. A script (not a pipeline)
-- so the answer is one consistent moment, and so the "loaded" check and the reads cannot
-- interleave with a load.
-- KEYS[1] unit hash, KEYS[2] the unit's visitors sketch of the day,
-- then for page i (1-based): KEYS[1 + 2i] its bucket, KEYS[2 + 2i] its visitors sketch of
-- the day
-- ARGV    the pages' fields in their buckets (digests of the page ids), in page order
-- Returns {0} when the unit is not loaded, else
-- {1, unit_views, unit_visitors, views of page 1, visitors of page 1, ...}.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  return {0}
end
local out = {1, tonumber(redis.call('HGET', KEYS[1], 'views') or '0'),
             redis.call('PFCOUNT', KEYS[2])}
for i = 1, #ARGV do
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[1 + 2 * i], ARGV[i]) or '0')
  out[#out + 1] = redis.call('PFCOUNT', KEYS[2 + 2 * i])
end
return out
