-- Forget titles learned from hits once the flusher has them in Postgres: each field only if
-- it still holds the title that was moved. Atomic per field, so a title learned after the
-- flusher read the hash stays for its next pass (the last one learned wins in Postgres).
-- KEYS[1]  the unit's learned titles ({vc:UNIT}:pend:titles, page -> title)
-- ARGV     page 1, title 1, page 2, title 2, ... as moved
-- Returns how many fields were removed.
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
