#!lua flags=no-writes,allow-cross-slot-keys
-- Read the work index of one Redis (on a Cluster: of one node, every index slot it holds;
-- those are different Cluster slots on the same node, hence the flag): the flusher's only
-- way of finding work, and the watch on the age of the oldest unflushed unit.
-- No KEYS: a Cluster refuses declared keys of several slots even with the flag, so the index
-- keys come as ARGV (all on the node the call is sent to: the flusher sends it to each node
-- with that node's own index slots).
-- ARGV[1]  "list": every entry; "oldest": only the oldest score
-- ARGV[2i], ARGV[2i+1]  the work index and the snapshots index of index slot i
--                       ({vc~w:N}:work, {vc~w:N}:snaps)
-- Returns {Redis time in ms, ...}: with "list", then {unit, first-dirty ms, ...} of the work
-- indexes and {snapshot key, ms, ...} of the snapshots indexes; with "oldest", then the
-- oldest first-dirty ms of either (false when both are empty everywhere).
local now = redis.call('TIME')
local out = {now[1] * 1000 + math.floor(now[2] / 1000)}
if ARGV[1] == 'oldest' then
  local oldest = false
  for i = 2, #ARGV do
    local first = redis.call('ZRANGE', ARGV[i], 0, 0, 'WITHSCORES')
    if first[2] and (not oldest or tonumber(first[2]) < oldest) then
      oldest = tonumber(first[2])
    end
  end
  out[2] = oldest
  return out
end
local work, snaps = {}, {}
for i = 2, #ARGV, 2 do
  for _, kind in ipairs({{ARGV[i], work}, {ARGV[i + 1], snaps}}) do
    if redis.call('EXISTS', kind[1]) == 1 then
      local entries = redis.call('ZRANGE', kind[1], 0, -1, 'WITHSCORES')
      for j = 1, #entries do
        kind[2][#kind[2] + 1] = entries[j]
      end
    end
  end
end
out[2] = work
out[3] = snaps
return out
