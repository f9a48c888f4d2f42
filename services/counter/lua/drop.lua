-- Drop snapshots whose batch is committed in Postgres (or was discarded), with their entries
-- in the snapshots index, atomically: the index never names a snapshot that is gone, nor
-- misses one that is there.
-- KEYS[1]     the snapshots index of the unit's slot ({vc~w:N}:snaps)
-- KEYS[2..]   snapshot keys, all of one unit ({vc:UNIT}:snap:K:BATCH)
-- Returns how many snapshot keys were deleted.
local deleted = 0
for i = 2, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[i])
  redis.call('ZREM', KEYS[1], KEYS[i])
end
return deleted
