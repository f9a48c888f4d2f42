-- Move a snapshot that its batch did not include to a new batch id, so it is applied later
-- instead of being deleted with the batch that skipped it.
-- KEYS[1] old snapshot key, KEYS[2] new snapshot key
-- Returns 1 when moved, 0 when the old key is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
