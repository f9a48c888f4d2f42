-- Named queries run by repository.py, the only module that runs SQL.

-- name: upsert_site
INSERT INTO sites (site, timezone) VALUES ($1, $2)
ON CONFLICT (site) DO UPDATE SET timezone = EXCLUDED.timezone, updated_at = now()
RETURNING (xmax = 0) AS created;

-- name: ensure_site_views
INSERT INTO site_views (site) VALUES ($1) ON CONFLICT (site) DO NOTHING;

-- name: get_site
SELECT site, timezone FROM sites WHERE site = $1;

-- name: lock_site_totals
-- Taken by a loader while it copies totals to Redis; a flush of the same site waits for it.
SELECT sv.views + sv.baseline AS total, s.timezone
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
INSERT INTO page_views_daily AS d (site, page, day, views)
SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::bigint[])
ON CONFLICT (site, page, day) DO UPDATE SET views = d.views + EXCLUDED.views;

-- name: add_site_views_daily
INSERT INTO site_views_daily AS d (site, day, views)
SELECT * FROM unnest($1::text[], $2::date[], $3::bigint[])
ON CONFLICT (site, day) DO UPDATE SET views = d.views + EXCLUDED.views;

-- name: add_site_views
UPDATE site_views SET views = views + $2, updated_at = now() WHERE site = $1;
