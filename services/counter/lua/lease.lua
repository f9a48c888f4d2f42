-- Take or renew flush leases: a site's pending data is flushed by one flusher at a time.
-- A lease is the flusher's token with a time to live; a flusher that dies simply stops
-- renewing, and its sites are free once the lease runs out.
-- KEYS  lease keys ({vc:UNIT}:lease): on a Cluster all of one slot; on a single Redis, of
--       any units
-- ARGV[1] owner token, ARGV[2] lease in milliseconds
-- Returns, per key, 1 when the caller holds the lease now, 0 when another flusher does.
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  elseif not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
