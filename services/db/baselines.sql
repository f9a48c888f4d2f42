-- Named queries of baselines.py: baselines (legacy counts), their audit trail and the
-- outbox of their Redis deltas. Issue 6.

-- name: baseline_site_lock
-- Serialises baseline changes of one site (imports, page PUTs) without touching the rows
-- flushes and loads lock, so old values read after it are the ones being replaced.
SELECT pg_advisory_xact_lock(hashtextextended('viewcounter.baseline:' || $1::text, 0));

-- name: baseline_site
SELECT sv.baseline, s.max_pages
FROM site_views sv JOIN sites s USING (site)
WHERE sv.site = $1;

-- name: import_create_tables
CREATE TEMP TABLE import_rows (line bigint NOT NULL, page text NOT NULL, views bigint NOT NULL,
                               title text)
    ON COMMIT DROP;
CREATE TEMP TABLE import_rejected (line bigint NOT NULL, field text NOT NULL, reason text NOT NULL)
    ON COMMIT DROP;
CREATE TEMP TABLE import_changes (page text NOT NULL, old bigint, new bigint NOT NULL)
    ON COMMIT DROP;

-- name: import_reject_duplicates
-- A page named twice in one file: the first row counts, later ones are rejected.
WITH firsts AS (
    SELECT page, min(line) AS first FROM import_rows GROUP BY page HAVING count(*) > 1
), gone AS (
    DELETE FROM import_rows r USING firsts f
    WHERE r.page = f.page AND r.line > f.first
    RETURNING r.line, f.first
)
INSERT INTO import_rejected (line, field, reason)
SELECT line, 'page', 'duplicate: the page is already on line ' || first FROM gone;

-- name: count_site_pages
SELECT count(*) FROM page_views WHERE site = $1;

-- name: import_reject_over_bound
-- Pages new to the site beyond its page bound ($2 = how many new pages still fit), in file
-- order, are rejected like hits for new pages beyond the bound.
WITH fresh AS (
    SELECT r.line FROM import_rows r
    WHERE NOT EXISTS (SELECT 1 FROM page_views pv WHERE pv.site = $1 AND pv.page = r.page)
    ORDER BY r.line OFFSET $2
), gone AS (
    DELETE FROM import_rows r USING fresh f WHERE r.line = f.line RETURNING r.line
)
INSERT INTO import_rejected (line, field, reason)
SELECT line, 'page', 'page_limit: the site has its maximum of pages' FROM gone;

-- name: import_find_changes
INSERT INTO import_changes (page, old, new)
SELECT r.page, pv.baseline, r.views
FROM import_rows r
LEFT JOIN page_views pv ON pv.site = $1 AND pv.page = r.page
WHERE pv.baseline IS DISTINCT FROM r.views;

-- name: import_counts
SELECT (SELECT count(*) FROM import_rows) AS accepted,
       (SELECT count(*) FROM import_changes) AS changed,
       (SELECT count(*) FROM import_changes WHERE old IS NULL) AS new_pages,
       (SELECT count(*) FROM import_rejected) AS rejected;

-- name: import_changed_pages
-- The first pages of a change, for its audit log entry.
SELECT page, old, new FROM import_changes ORDER BY page LIMIT $1;

-- name: import_rejected_rows
SELECT line, field, reason FROM import_rejected ORDER BY line LIMIT $1;

-- name: import_apply_pages
-- Sorted by page, as the flusher locks page rows, so the two cannot deadlock.
INSERT INTO page_views AS pv (site, page, baseline)
SELECT $1, page, new FROM import_changes ORDER BY page
ON CONFLICT (site, page) DO UPDATE SET baseline = EXCLUDED.baseline;

-- name: import_apply_titles
-- The admin titles of the rows taken (rejected rows are gone from import_rows by now); a row
-- without a title leaves the page's title as it is. Sorted by page, as pages are.
INSERT INTO page_titles AS t (site, page, admin_title)
SELECT $1, page, title FROM import_rows WHERE title IS NOT NULL ORDER BY page
ON CONFLICT (site, page) DO UPDATE SET admin_title = EXCLUDED.admin_title, updated_at = now()
WHERE t.admin_title IS DISTINCT FROM EXCLUDED.admin_title;

-- name: lock_site_baseline
-- Taken last, as a flush takes it: a load of the site into Redis waits for this commit.
SELECT baseline FROM site_views WHERE site = $1 FOR UPDATE;

-- name: set_site_baseline
UPDATE site_views SET baseline = $2, updated_at = now() WHERE site = $1;

-- name: insert_baseline_change
INSERT INTO baseline_changes (site, source, changed_by, pages_changed, site_delta)
VALUES ($1, $2, $3, $4, $5)
RETURNING change_id, changed_at;

-- name: import_audit_pages
INSERT INTO baseline_audit (change_id, site, page, old_baseline, new_baseline, changed_by,
                            changed_at)
SELECT $1, $2, page, old, new, $3, $4 FROM import_changes;

-- name: audit_site_baseline
INSERT INTO baseline_audit (change_id, site, page, old_baseline, new_baseline, changed_by,
                            changed_at)
VALUES ($1, $2, NULL, $3, $4, $5, $6);

-- name: outbox_site_delta
INSERT INTO baseline_outbox (change_id, chunk, site, generation, site_delta, pages, deltas)
VALUES ($1, 0, $2, $3, $4, '{}', '{}');

-- name: outbox_page_deltas
-- Chunks 1.. of $5 pages each; a page new to Postgres gets its field even with a delta of 0,
-- so a site counting only registered pages counts it at once.
INSERT INTO baseline_outbox (change_id, chunk, site, generation, site_delta, pages, deltas)
SELECT $1, 1 + (n - 1) / $4, $2, $3, 0, array_agg(page ORDER BY n), array_agg(delta ORDER BY n)
FROM (SELECT page, new - coalesce(old, 0) AS delta, row_number() OVER (ORDER BY page) AS n
      FROM import_changes) c
GROUP BY 1 + (n - 1) / $4;

-- name: outbox_next
SELECT change_id, chunk, generation, site_delta, pages, deltas
FROM baseline_outbox
WHERE site = $1 AND (change_id, chunk) > ($2, $3)
ORDER BY change_id, chunk
LIMIT $4;

-- name: outbox_delete
DELETE FROM baseline_outbox WHERE change_id = $1 AND chunk = $2;

-- name: outbox_count
SELECT count(*) FROM baseline_outbox WHERE site = $1;

-- name: outbox_sites
-- Sites with baseline deltas still queued for Redis (the flusher settles them every pass).
SELECT DISTINCT site FROM baseline_outbox ORDER BY site;
