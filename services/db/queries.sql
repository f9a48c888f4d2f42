-- Named queries run by repository.py, the only module that runs SQL.

-- name: lock_site_settings
SELECT timezone, dedupe_window, max_pages, registered_pages_only, page_patterns,
       allowed_origins
FROM sites WHERE site = $1
FOR UPDATE;

-- name: upsert_site
INSERT INTO sites AS s (site, timezone, dedupe_window, max_pages, registered_pages_only,
                        page_patterns, allowed_origins)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (site) DO UPDATE SET
    timezone = EXCLUDED.timezone,
    dedupe_window = EXCLUDED.dedupe_window,
    max_pages = EXCLUDED.max_pages,
    registered_pages_only = EXCLUDED.registered_pages_only,
    page_patterns = EXCLUDED.page_patterns,
    allowed_origins = EXCLUDED.allowed_origins,
    updated_at = now()
RETURNING (xmax = 0) AS created;

-- name: ensure_site_views
INSERT INTO site_views (site) VALUES ($1) ON CONFLICT (site) DO NOTHING;

-- name: get_site
SELECT timezone, dedupe_window, max_pages, registered_pages_only, page_patterns,
       allowed_origins
FROM sites WHERE site = $1;

-- name: lock_site_totals
-- Taken by a loader while it copies totals to Redis; a flush of the same site waits for it.
SELECT sv.views + sv.baseline AS total, s.timezone, s.dedupe_window, s.max_pages,
       s.registered_pages_only, s.page_patterns, s.allowed_origins
FROM site_views sv JOIN sites s USING (site)
WHERE sv.site = $1
FOR UPDATE OF sv;

-- name: page_totals
SELECT page, views + baseline AS total FROM page_views WHERE site = $1;

-- name: claim_batch
INSERT INTO flush_batches (batch_id, hits, rows, snapshot_keys) VALUES ($1, $2, $3, $4)
ON CONFLICT (batch_id) DO NOTHING
RETURNING batch_id;

-- name: batch_keys
SELECT snapshot_keys FROM flush_batches WHERE batch_id = $1;

-- name: add_page_views
-- Rows arrive sorted by (site, page), so concurrent flushers lock rows in the same order.
INSERT INTO page_views AS pv (site, page, views)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
ON CONFLICT (site, page) DO UPDATE SET views = pv.views + EXCLUDED.views, last_seen = now();

-- name: add_page_views_daily
-- visitors is an estimate of a set's size, not a delta: the larger of old and new wins, so
-- applying a batch again (or an older estimate after a newer one) changes nothing.
INSERT INTO page_views_daily AS d (site, page, day, views, visitors)
SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::bigint[], $5::bigint[])
ON CONFLICT (site, page, day) DO UPDATE SET
    views = d.views + EXCLUDED.views,
    visitors = GREATEST(d.visitors, EXCLUDED.visitors);

-- name: add_site_views_daily
INSERT INTO site_views_daily AS d (site, day, views, visitors)
SELECT * FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bigint[])
ON CONFLICT (site, day) DO UPDATE SET
    views = d.views + EXCLUDED.views,
    visitors = GREATEST(d.visitors, EXCLUDED.visitors);

-- name: register_pages
-- Pages an admin lists as countable; a page already counted keeps its numbers.
INSERT INTO page_views (site, page)
SELECT $1, unnest($2::text[])
ON CONFLICT (site, page) DO NOTHING
RETURNING page;

-- name: add_site_views
UPDATE site_views SET views = views + $2, updated_at = now() WHERE site = $1;
