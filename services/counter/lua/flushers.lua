-- Say that a flusher is alive, and list the flushers alive: the units to flush are shared
-- out among them (rendezvous hashing, in the flusher). A flusher that stops saying so drops
-- out when its own lease time has passed, as its leases run out. Atomic so the sweep of the
-- silent ones and the list agree; Redis' clock, not the flushers', decides who is silent.
-- KEYS[1] the flushers' heartbeats (vc:flushers, sorted set owner -> when it drops out, ms)
-- ARGV[1] this flusher's owner token, ARGV[2] lease in milliseconds ("-1": it is leaving)
-- Returns the owner tokens of the flushers alive (this one included unless it is leaving).
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease = tonumber(ARGV[2])
if lease < 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  -- Scored by when this flusher's own lease would run out, so each drops out with its leases.
  redis.call('ZADD', KEYS[1], now_ms + lease, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
return redis.call('ZRANGE', KEYS[1], 0, -1)
