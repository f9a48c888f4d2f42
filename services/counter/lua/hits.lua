-- Count page views of one site: every hit the api took in one event-loop turn, in one call.
-- Atomic so that each page's live total, the site's live total and the pending deltas (what
-- the flusher will move to Postgres) can never disagree; one call per site per batch keeps a
-- round trip's fixed cost off each hit.
-- KEYS[1]      site hash   ({vc:SITE}:site)   fields: gen, views, tz
-- KEYS[2]      pages hash  ({vc:SITE}:pages)  page -> live total
-- KEYS[3 + k]  pending shard k ({vc:SITE}:pend:k), day..page -> delta not yet in Postgres
-- ARGV         triples: pending shard index k (0-based), page id (normalised), local day
-- Returns {1, page_views_1, site_views_1, page_views_2, site_views_2, ...} in ARGV order,
-- or {0} when the site's live totals are not loaded (unknown site, or Redis lost its data):
-- then nothing was written, and the caller loads the totals from Postgres first so that
-- counts shown never go backwards.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  return {0}
end
local n = #ARGV / 3
local site_views = redis.call('HINCRBY', KEYS[1], 'views', n) - n
local out = {1}
for i = 1, #ARGV, 3 do
  local page = ARGV[i + 1]
  site_views = site_views + 1
  out[#out + 1] = redis.call('HINCRBY', KEYS[2], page, 1)
  out[#out + 1] = site_views
  redis.call('HINCRBY', KEYS[3 + tonumber(ARGV[i])], ARGV[i + 2] .. page, 1)
end
return out
