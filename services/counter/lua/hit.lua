-- Count one page view. Atomic so that the page's live total, the site's live total and the
-- pending delta (what the flusher will move to Postgres) can never disagree.
-- KEYS[1] site hash   ({vc:SITE}:site)   fields: gen, views, tz
-- KEYS[2] pages hash  ({vc:SITE}:pages)  page -> live total
-- KEYS[3] pending     ({vc:SITE}:pend:N) day..page -> delta not yet in Postgres
-- ARGV[1] page id (normalised)
-- ARGV[2] pending field (local day YYYY-MM-DD followed by the page id)
-- Returns {1, page_views, site_views} when counted, or {0} when the site's live totals are not
-- loaded (unknown site, or Redis lost its data): then nothing was written, and the caller must
-- load the totals from Postgres first so that counts shown never go backwards.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  return {0}
end
local page_views = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local site_views = redis.call('HINCRBY', KEYS[1], 'views', 1)
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
return {1, page_views, site_views}
