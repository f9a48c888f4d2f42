-- Refill part of a site's page totals from Postgres after Redis lost them (or for a new site).
-- Only while the site is not loaded: hits are refused then, so writing absolute values is
-- safe and a second loader racing this one writes the same numbers.
-- KEYS[1] site hash, KEYS[2] pages hash
-- ARGV    page1, total1, page2, total2, ...
-- Returns 1 when written, 0 when the site was already loaded (nothing written).
if redis.call('HEXISTS', KEYS[1], 'gen') == 1 then
  return 0
end
if #ARGV > 0 then
  redis.call('HSET', KEYS[2], unpack(ARGV))
end
return 1
