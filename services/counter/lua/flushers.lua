-- Say that a flusher is alive, and list the flushers alive: the units to flush are shared
-- out among them (rendezvous hashing, in the flusher). A flusher that stops saying so drops
-- out after the lease time, as its leases run out. Atomic so the sweep of the silent ones and
-- the list agree; Redis' clock, not the flushers', decides who is silent.
-- KEYS[1] the flushers' heartbeats (vc:flushers, sorted set owner -> last beat in ms)
-- ARGV[1] this flusher's owner token, ARGV[2] lease in milliseconds ("-1": it is leaving)
-- Returns the owner tokens of the flushers alive (this one included unless it is leaving).
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease = tonumber(ARGV[2])
if lease < 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - lease)
  redis.call('PEXPIRE', KEYS[1], lease * 2)
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
