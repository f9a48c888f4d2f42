-- Named queries of sites.py: site settings, registered pages, and the totals a load copies
-- into Redis.

-- name: lock_site_settings
SELECT timezone, dedupe_window, max_pages, registered_pages_only, page_patterns,
       allowed_origins, public_top, learn_titles
FROM sites WHERE site = $1
FOR UPDATE;

-- name: upsert_site
INSERT INTO sites AS s (site, timezone, dedupe_window, max_pages, registered_pages_only,
                        page_patterns, allowed_origins, public_top, learn_titles)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (site) DO UPDATE SET
    timezone = EXCLUDED.timezone,
    dedupe_window = EXCLUDED.dedupe_window,
    max_pages = EXCLUDED.max_pages,
    registered_pages_only = EXCLUDED.registered_pages_only,
    page_patterns = EXCLUDED.page_patterns,
    allowed_origins = EXCLUDED.allowed_origins,
    public_top = EXCLUDED.public_top,
    learn_titles = EXCLUDED.learn_titles,
    updated_at = now()
RETURNING (xmax = 0) AS created;

-- name: ensure_site_views
INSERT INTO site_views (site) VALUES ($1) ON CONFLICT (site) DO NOTHING;

-- name: get_site
SELECT timezone, dedupe_window, max_pages, registered_pages_only, page_patterns,
       allowed_origins, public_top, learn_titles
FROM sites WHERE site = $1;

-- name: register_pages
-- Pages an admin lists as countable; a page already counted keeps its numbers.
INSERT INTO page_views (site, page)
SELECT $1, unnest($2::text[])
ON CONFLICT (site, page) DO NOTHING
RETURNING page;

-- name: lock_site_totals
-- Taken by a loader while it copies totals to Redis; a flush of the same site waits for it.
SELECT sv.views + sv.baseline AS total, s.timezone, s.dedupe_window, s.max_pages,
       s.registered_pages_only, s.page_patterns, s.allowed_origins, s.public_top,
       s.learn_titles
FROM site_views sv JOIN sites s USING (site)
WHERE sv.site = $1
FOR UPDATE OF sv;

-- name: page_totals
SELECT page, views + baseline AS total FROM page_views WHERE site = $1;

-- name: recent_site_days
-- The site's counted views of each local day since $2 (a load copies them into Redis).
SELECT '' AS page, day::text AS day, views FROM site_views_daily WHERE site = $1 AND day >= $2;

-- name: recent_page_days
-- The same by page, for a site split over several units (each unit holds its pages' part).
SELECT page, day::text AS day, views FROM page_views_daily WHERE site = $1 AND day >= $2;

-- name: flushed_site_total
-- The site's total as flushed (no lock): what a partial live read shows of a part it never read.
SELECT views + baseline AS total FROM site_views WHERE site = $1;

-- name: flushed_page_totals
-- The given pages' totals as flushed (no lock).
SELECT page, views + baseline AS total FROM page_views WHERE site = $1 AND page = ANY($2::text[]);
