-- Read live totals without counting. A script (not a pipeline) so the answer is one
-- consistent moment, and so the "loaded" check and the reads cannot interleave with a load.
-- KEYS[1] site hash, KEYS[2] pages hash
-- ARGV    page ids
-- Returns {0} when the site is not loaded, else {1, site_views, views of ARGV[1], ...}.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  return {0}
end
local out = {1, tonumber(redis.call('HGET', KEYS[1], 'views') or '0')}
if #ARGV > 0 then
  local values = redis.call('HMGET', KEYS[2], unpack(ARGV))
  for i = 1, #values do
    out[i + 2] = tonumber(values[i] or '0')
  end
end
return out
