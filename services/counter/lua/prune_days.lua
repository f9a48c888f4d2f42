-- Keep a unit's days hash bounded: drop the days before the oldest one kept (the hash has no
-- TTL, being live counting state). Run by the flusher after a pass; a few dozen fields.
-- KEYS[1] days hash ({vc:UNIT}:days)
-- ARGV[1] the oldest day kept (YYYY-MM-DD), ARGV[2] the name of the "filled" marker field
-- Returns 1 when the hash is exact (the marker is there), 0 when it still needs filling.
local old = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if #field == 10 and field < ARGV[1] then
    old[#old + 1] = field
  end
end
if #old > 0 then
  redis.call('HDEL', KEYS[1], unpack(old))
end
return redis.call('HEXISTS', KEYS[1], ARGV[2])
