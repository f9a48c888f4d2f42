-- Take page views of one site: every hit the api took while its previous call was out, in
-- one call. Atomic so that each page's live total, the site's live total, the pending deltas
-- (what the flusher will move to Postgres), the dedupe marks and the rate counters can never
-- disagree; one call per site per batch keeps a round trip's fixed cost off each hit.
-- KEYS[1]      site hash   ({vc:SITE}:site)   fields: gen, views, tz
-- KEYS[2]      pages hash  ({vc:SITE}:pages)  page -> live total
-- KEYS[3..10]  pending shards 0..7 ({vc:SITE}:pend:k), day..page -> delta not yet in Postgres
-- then for hit j (1-based): KEYS[9 + 2j] its dedupe mark ({vc:SITE}:seen:TOKEN),
--                           KEYS[10 + 2j] its client's rate counter ({vc:SITE}:rate:TOKEN:MIN)
-- ARGV  per hit, 6 values: pending shard index (0-based), page id, local day,
--       dedupe window in seconds (0: off), hits allowed per client per minute (0: off),
--       distinct pages the site may have (0: no bound)
-- Returns {1, outcome_1, page_views_1, site_views_1, ...} in hit order, where outcome is
-- 1 counted, 2 duplicate (same visitor and page inside the window), 3 rate limited,
-- 4 page limit (a new page on a site that has its maximum of pages); or {0}
-- when the site's live totals are not loaded (unknown site, or Redis lost its data): then
-- nothing was written, and the caller loads the totals from Postgres first so that counts
-- shown never go backwards.
-- Keys that expire are only dedupe marks and rate counters: never anything unflushed.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  return {0}
end
local out = {1}
local shards = 8
for j = 1, #ARGV / 6 do
  local a = (j - 1) * 6
  local page = ARGV[a + 2]
  local window = tonumber(ARGV[a + 4])
  local limit = tonumber(ARGV[a + 5])
  local max_pages = tonumber(ARGV[a + 6])
  local seen = KEYS[2 + shards + 2 * j - 1]
  local rate = KEYS[2 + shards + 2 * j]
  local outcome = 1
  if limit > 0 then
    local n = redis.call('INCR', rate)
    if n == 1 then
      redis.call('EXPIRE', rate, 120)
    end
    if n > limit then
      outcome = 3
    end
  end
  if outcome == 1 and max_pages > 0 and redis.call('HEXISTS', KEYS[2], page) == 0
      and redis.call('HLEN', KEYS[2]) >= max_pages then
    outcome = 4
  end
  if outcome == 1 and window > 0 and not redis.call('SET', seen, '1', 'NX', 'EX', window) then
    outcome = 2
  end
  if outcome == 1 then
    out[#out + 1] = 1
    out[#out + 1] = redis.call('HINCRBY', KEYS[2], page, 1)
    out[#out + 1] = redis.call('HINCRBY', KEYS[1], 'views', 1)
    redis.call('HINCRBY', KEYS[3 + tonumber(ARGV[a + 1])], ARGV[a + 3] .. page, 1)
  else
    out[#out + 1] = outcome
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[2], page) or '0')
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[1], 'views') or '0')
  end
end
return out
