-- Finish loading a site: set its live total, time zone and settings and its days hash, then
-- mark it loaded with a fresh generation. Atomic with the "loaded" check so two loaders
-- cannot both finish.
-- KEYS[1] site hash, KEYS[2] days hash ({vc:UNIT}:days)
-- ARGV[1] generation token, ARGV[2] site total (views + baseline), ARGV[3] time zone,
-- ARGV[4] settings (JSON), ARGV[5] the days hash's "filled" marker field, then day, views
-- pairs: the unit's part of the recent days' views in Postgres (nothing is pending in a unit
-- that is not loaded)
-- Returns 1 when this call loaded the site, 0 when it was loaded already.
if redis.call('HEXISTS', KEYS[1], 'gen') == 1 then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], ARGV[5], 1, unpack(ARGV, 6))
redis.call('HSET', KEYS[1], 'views', ARGV[2], 'tz', ARGV[3], 'cfg', ARGV[4], 'gen', ARGV[1])
return 1
