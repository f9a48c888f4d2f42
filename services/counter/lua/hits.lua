-- Take page views of one unit of a site (keys.py): every hit the api took while its previous
-- call was out, in one call. Atomic so that each page's live total, the site's live total,
-- the pending deltas (what the flusher will move to Postgres), the unique-visitor sketches,
-- the dedupe marks and the rate counters can never disagree; one call per unit per batch
-- keeps a round trip's fixed cost off each hit.
-- KEYS[1]      unit hash   ({vc:UNIT}:site)   fields: gen, views, npages, tz, cfg
-- KEYS[2..9]   pending shards 0..7 ({vc:UNIT}:pend:k), day..page -> delta not yet in Postgres
-- KEYS[10]     this call's idempotency record ({vc:UNIT}:idem:...), used when ARGV[1] > 0
-- KEYS[11]     the unit's days hash ({vc:UNIT}:days), local day -> views counted that day
-- KEYS[12]     titles learned from hits, not yet in Postgres ({vc:UNIT}:pend:titles, page -> title)
-- then for hit j (1-based), at b = 12 + 7(j-1):
--   KEYS[b+1] its dedupe marks of this generation ({vc:UNIT}:seen:W:G:SHARD, keys.py)
--   KEYS[b+2] its client's rate counter  ({vc:UNIT}:rate:TOKEN:MIN)
--   KEYS[b+3] the unit's visitors of the day  ({vc:UNIT}:uv:DAY, HyperLogLog)
--   KEYS[b+4] the page's visitors of the day  ({vc:UNIT}:uvp:DAY:PAGE, HyperLogLog)
--   KEYS[b+5] the page's bucket          ({vc:UNIT}:pages:N, page digest -> live total)
--   KEYS[b+6] the visitors online in the hit's clock minute ({vc:UNIT}:on:MIN, HyperLogLog)
--   KEYS[b+7] its dedupe marks of the generation before ({vc:UNIT}:seen:W:G-1:SHARD)
-- KEYS[#KEYS]  the work index of the unit's slot ({vc~w:N}:work, unit -> first-dirty ms): last,
--              after the hits' keys
-- ARGV[1] seconds to keep this call's record under KEYS[10] (0: not idempotent): a call
--         sent again with the same record answers the tallies of what the first one did
--         (below), counting nothing. The record is those tallies (a few bytes a call), not
--         the per-hit answer: a retry needs no more.
-- ARGV[2] seconds an online sketch lives after its first visitor (the online window + 2 min)
-- ARGV  then per hit, 11 values: pending shard index (0-based), page id, local day,
--       dedupe window in seconds (0: off), hits allowed per client per minute (0: off),
--       page rule (0: any page; n > 0: at most n distinct pages in the unit; -1: only pages
--       the unit has already), visitor token (what the visitor sketches count), the page's
--       field in its bucket (a digest of the page id), the page's title to learn ("": none;
--       kept for a counted or duplicate hit only: never a rate-limited one's, nor one of a
--       page the site does not count), the visitor+page's dedupe mark (a fingerprint: the
--       field in KEYS[b+1] and KEYS[b+7]), the second of its generation the hit came in
--       (0 .. window-1; a generation is `window` seconds, keys.seen_generation)
-- Returns {1, outcome_1, page_views_1, unit_views_1, ...} in hit order, where outcome is
-- 1 counted, 2 duplicate (same visitor and page inside the window), 3 rate limited,
-- 4 page limit (a new page on a unit that has its maximum of pages), 5 unknown page (a new
-- page on a site that counts only its registered pages); or {2, n_1, ..., n_5}, a call
-- recorded under KEYS[10] before: how many of its hits had each outcome 1..5; or {0}
-- when the unit's live totals are not loaded (unknown site, or Redis lost its data): then
-- nothing was written, and the caller loads the totals from Postgres first so that counts
-- shown never go backwards.
-- Every hit that gets here (counted or not: the person is on the site) marks its visitor
-- online; a counted one also adds one to its day in the days hash, in the same atomic call as
-- its pending delta, so the days hash is always Postgres' daily views plus what is pending.
-- Keys that expire are only dedupe marks, rate counters and visitor sketches: never anything
-- unflushed (the flusher reads a sketch's estimate when it moves that day's views).
-- Dedupe is exact to the second: a mark of this generation was counted less than a window
-- ago; one of the generation before at second s was counted `window + at - s` seconds ago,
-- a repeat while at < s. A counted hit writes its mark with its second into this
-- generation's hash, which expires once the next generation is over (2 windows after this
-- one began, plus a second): no mark is needed after that.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  return {0}
end
local idempotent_for = tonumber(ARGV[1])
if idempotent_for > 0 then
  local done = redis.call('GET', KEYS[10])
  if done then
    return cjson.decode(done)
  end
end
local out = {1}
local visitors_ttl = 259200
-- Gathered per call and written once each at the end: a call's hits share a day and a minute.
local days, online, online_keys = {}, {}, {}
for j = 1, (#ARGV - 2) / 11 do
  local a = 2 + (j - 1) * 11
  local b = 12 + (j - 1) * 7
  local page = ARGV[a + 2]
  local field = ARGV[a + 8]
  local window = tonumber(ARGV[a + 4])
  local limit = tonumber(ARGV[a + 5])
  local rule = tonumber(ARGV[a + 6])
  local outcome = 1
  local known = nil
  if limit > 0 then
    local n = redis.call('INCR', KEYS[b + 2])
    if n == 1 then
      redis.call('EXPIRE', KEYS[b + 2], 120)
    end
    if n > limit then
      outcome = 3
    end
  end
  if outcome == 1 and rule ~= 0 then
    known = redis.call('HEXISTS', KEYS[b + 5], field) == 1
    if not known then
      if rule < 0 then
        outcome = 5
      elseif tonumber(redis.call('HGET', KEYS[1], 'npages') or '0') >= rule then
        outcome = 4
      end
    end
  end
  if outcome == 1 and window > 0 then
    local mark, at = ARGV[a + 10], tonumber(ARGV[a + 11])
    if redis.call('HEXISTS', KEYS[b + 1], mark) == 1 then
      outcome = 2
    else
      local before = redis.call('HGET', KEYS[b + 7], mark)
      if before and at < tonumber(before) then
        outcome = 2
      else
        redis.call('HSET', KEYS[b + 1], mark, at)
        redis.call('EXPIRE', KEYS[b + 1], 2 * window - at + 1, 'NX')
      end
    end
  end
  local on_key = KEYS[b + 6]
  local tokens = online[on_key]
  if tokens == nil then
    tokens = {}
    online[on_key] = tokens
    online_keys[#online_keys + 1] = on_key
  end
  tokens[#tokens + 1] = ARGV[a + 7]
  if outcome == 1 then
    days[ARGV[a + 3]] = (days[ARGV[a + 3]] or 0) + 1
    if known == nil then
      known = redis.call('HEXISTS', KEYS[b + 5], field) == 1
    end
    if not known then
      redis.call('HINCRBY', KEYS[1], 'npages', 1)
    end
    out[#out + 1] = 1
    out[#out + 1] = redis.call('HINCRBY', KEYS[b + 5], field, 1)
    out[#out + 1] = redis.call('HINCRBY', KEYS[1], 'views', 1)
    redis.call('HINCRBY', KEYS[2 + tonumber(ARGV[a + 1])], ARGV[a + 3] .. page, 1)
    if ARGV[a + 9] ~= '' then
      redis.call('HSET', KEYS[12], page, ARGV[a + 9])
    end
    for k = b + 3, b + 4 do
      if redis.call('PFADD', KEYS[k], ARGV[a + 7]) == 1 then
        redis.call('EXPIRE', KEYS[k], visitors_ttl, 'NX')
      end
    end
  else
    if outcome == 2 and ARGV[a + 9] ~= '' then
      redis.call('HSET', KEYS[12], page, ARGV[a + 9])
    end
    out[#out + 1] = outcome
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[b + 5], field) or '0')
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[1], 'views') or '0')
  end
end
for day, n in pairs(days) do
  redis.call('HINCRBY', KEYS[11], day, n)
end
local online_ttl = tonumber(ARGV[2])
for _, key in ipairs(online_keys) do
  if redis.call('PFADD', key, unpack(online[key])) == 1 then
    redis.call('EXPIRE', key, online_ttl, 'NX')
  end
end
-- Work index: the unit now has pending deltas (or learned titles) for the flusher, recorded
-- in this same atomic call; NX keeps the first-dirty time until the flusher's snapshot takes
-- the unit out. The member is the unit id, read from its hash's name ({vc:UNIT}:site).
if next(days) ~= nil or redis.call('EXISTS', KEYS[12]) == 1 then
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[#KEYS], 'NX', now[1] * 1000 + math.floor(now[2] / 1000),
    string.sub(KEYS[1], 5, -7))
end
if idempotent_for > 0 then
  local tally = {2, 0, 0, 0, 0, 0}
  for i = 2, #out, 3 do
    tally[1 + out[i]] = tally[1 + out[i]] + 1
  end
  redis.call('SET', KEYS[10], cjson.encode(tally), 'EX', idempotent_for)
end
return out
