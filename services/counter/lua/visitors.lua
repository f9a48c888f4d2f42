-- Read distinct-visitor estimates of several sketches of one site (one Cluster slot).
-- KEYS  visitor HyperLogLogs; returns their estimates in order (0 for a missing sketch).
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('PFCOUNT', key)
end
return out
