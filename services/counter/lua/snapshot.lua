-- Freeze a site's pending shards under a batch id (the reliable-queue move): after this, new
-- hits go to fresh pending hashes, and the frozen ones stay until their batch is committed
-- in Postgres. Atomic so the generation returned is the one the deltas were counted under.
-- KEYS[1]         site hash
-- KEYS[2k], KEYS[2k+1]  pending shard k, its snapshot key (unique per batch)
-- Returns {gen or false, i1, i2, ...}: the 0-based indexes of the shard pairs that were moved.
local out = {redis.call('HGET', KEYS[1], 'gen')}
for k = 2, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    if redis.call('EXISTS', KEYS[k + 1]) == 1 then
      return redis.error_reply('snapshot key exists: ' .. KEYS[k + 1])
    end
    redis.call('RENAME', KEYS[k], KEYS[k + 1])
    out[#out + 1] = (k - 2) / 2
  end
end
return out
