-- Freeze a unit's pending shards under a batch id (the reliable-queue move): after this, new
-- hits go to fresh pending hashes, and the frozen ones stay until their batch is committed
-- in Postgres. Atomic so the generation returned is the one the deltas were counted under,
-- and so the work index (keys.py) always names what is pending: each snapshot enters the
-- snapshots index (scored by when the unit first had work) as its shard leaves, and the unit
-- leaves the work index unless learned titles still wait (then its score starts again now).
-- KEYS[1]         unit hash ({vc:UNIT}:site)
-- KEYS[2]         the work index of the unit's slot ({vc~w:N}:work, unit -> first-dirty ms)
-- KEYS[3]         the snapshots index of that slot ({vc~w:N}:snaps, snapshot key -> ms)
-- KEYS[4]         the unit's learned titles ({vc:UNIT}:pend:titles)
-- KEYS[3+2k], KEYS[4+2k]  pending shard k (k = 1..), its snapshot key (unique per batch)
-- ARGV[1]         the unit id (its member in the work index)
-- Returns {gen or false, 1 when learned titles wait else 0, i1, i2, ...}: then the 0-based
-- indexes of the shard pairs that were moved.
local out = {redis.call('HGET', KEYS[1], 'gen'), 0}
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local since = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or now_ms)
for k = 5, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    if redis.call('EXISTS', KEYS[k + 1]) == 1 then
      return redis.error_reply('snapshot key exists: ' .. KEYS[k + 1])
    end
    redis.call('RENAME', KEYS[k], KEYS[k + 1])
    redis.call('ZADD', KEYS[3], since, KEYS[k + 1])
    out[#out + 1] = (k - 5) / 2
  end
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  out[2] = 1
  redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return out
