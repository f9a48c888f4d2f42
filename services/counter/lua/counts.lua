-- Read live totals and today's unique visitors without counting. A script (not a pipeline)
-- so the answer is one consistent moment, and so the "loaded" check and the reads cannot
-- interleave with a load.
-- KEYS[1] site hash, KEYS[2] pages hash, KEYS[3] the site's visitors sketch of the day,
-- KEYS[3 + i] the visitors sketch of page i of the day
-- ARGV    page ids
-- Returns {0} when the site is not loaded, else
-- {1, site_views, site_visitors, views of ARGV[1], visitors of ARGV[1], ...}.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  return {0}
end
local out = {1, tonumber(redis.call('HGET', KEYS[1], 'views') or '0'),
             redis.call('PFCOUNT', KEYS[3])}
if #ARGV > 0 then
  local values = redis.call('HMGET', KEYS[2], unpack(ARGV))
  for i = 1, #values do
    out[#out + 1] = tonumber(values[i] or '0')
    out[#out + 1] = redis.call('PFCOUNT', KEYS[3 + i])
  end
end
return out
