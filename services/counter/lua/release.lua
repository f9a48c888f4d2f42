-- Give up flush leases this flusher holds (on shutdown), so others need not wait them out.
-- KEYS  lease keys (on a Cluster all of one slot), ARGV[1] owner token. Only a lease still held by that token is deleted.
-- Returns how many were released.
local released = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released
