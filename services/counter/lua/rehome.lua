-- Move a snapshot that its batch did not include to a new batch id, so it is applied later
-- instead of being deleted with the batch that skipped it; its entry in the snapshots index
-- moves with it (same score).
-- KEYS[1] old snapshot key, KEYS[2] new snapshot key, KEYS[3] the snapshots index of their
-- slot ({vc~w:N}:snaps)
-- Returns 1 when moved, 0 when the old key is gone (its index entry, if any, is dropped).
local since = redis.call('ZSCORE', KEYS[3], KEYS[1])
redis.call('ZREM', KEYS[3], KEYS[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if not since then
  local now = redis.call('TIME')
  since = now[1] * 1000 + math.floor(now[2] / 1000)
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('ZADD', KEYS[3], since, KEYS[2])
return 1
