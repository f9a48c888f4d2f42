-- Read a unit's part of the statistics block: its part of the site total, its visitors
-- online and its views on the days asked for. A script (not a pipeline) so the "loaded"
-- check and the reads are one moment and cannot interleave with a load.
-- KEYS[1] unit hash ({vc:UNIT}:site), KEYS[2] days hash ({vc:UNIT}:days),
-- KEYS[3..] the online sketches of the window's minutes ({vc:UNIT}:on:MIN)
-- ARGV    local days (YYYY-MM-DD)
-- Returns {0} when the unit is not loaded, else
-- {1, unit_views, online (PFCOUNT of the union of KEYS[3..]), views of day 1, ...}.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  return {0}
end
local out = {1, tonumber(redis.call('HGET', KEYS[1], 'views') or '0'), 0}
if #KEYS > 2 then
  out[3] = redis.call('PFCOUNT', unpack(KEYS, 3))
end
if #ARGV > 0 then
  local values = redis.call('HMGET', KEYS[2], unpack(ARGV))
  for i = 1, #ARGV do
    out[#out + 1] = tonumber(values[i] or '0')
  end
end
return out
