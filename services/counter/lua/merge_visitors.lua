-- Distinct visitors of a site split over several units: the union of the units' sketches.
-- Each unit's sketch lives in its own slot, so the caller reads them (GET, as raw bytes) and
-- sends them here, where they are merged in scratch keys of this unit's slot and counted.
-- A script so the scratch keys are written, counted and deleted in one step.
-- KEYS[1] the union being built, KEYS[2] the sketch being added (both deleted at the end)
-- ARGV    the units' sketches (raw HyperLogLog strings)
-- Returns the estimated number of distinct visitors in the union.
redis.call('DEL', KEYS[1])
for i = 1, #ARGV do
  redis.call('SET', KEYS[2], ARGV[i])
  redis.call('PFMERGE', KEYS[1], KEYS[1], KEYS[2])
end
local count = redis.call('PFCOUNT', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return count
