-- Put work of an older release's layout (found by the upgrade's one SCAN) into the work index:
-- a unit whose pending shards or learned titles exist, and its snapshots that exist. Existing
-- index entries keep their scores (NX).
-- KEYS[1] the work index of the unit's slot, KEYS[2] its snapshots index, KEYS[3] the unit's
-- learned titles, KEYS[4..11] its pending shards 0..7, KEYS[12..] snapshot keys of the unit
-- ARGV[1] the unit id
-- Returns how many entries were added.
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local added = 0
for i = 3, 11 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    added = added + redis.call('ZADD', KEYS[1], 'NX', now_ms, ARGV[1])
    break
  end
end
for i = 12, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    added = added + redis.call('ZADD', KEYS[2], 'NX', now_ms, KEYS[i])
  end
end
return added
