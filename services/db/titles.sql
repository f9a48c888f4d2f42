-- Named queries of titles.py: page titles as the site's admin set them and as learned from
-- hits. The title shown is the admin's when there is one, else the last one learned.

-- name: set_admin_titles
-- $3 NULL for a page clears its admin title (the learned one, if any, shows again).
INSERT INTO page_titles AS t (site, page, admin_title)
SELECT $1, p.page, p.title
FROM unnest($2::text[], $3::text[]) AS p (page, title)
WHERE EXISTS (SELECT 1 FROM sites WHERE site = $1)
ORDER BY p.page
ON CONFLICT (site, page) DO UPDATE SET admin_title = EXCLUDED.admin_title, updated_at = now()
WHERE t.admin_title IS DISTINCT FROM EXCLUDED.admin_title;

-- name: learn_titles
-- Idempotent: moving the same learned titles twice changes nothing. A site that is gone
-- learns nothing (its Redis keys outlived it).
INSERT INTO page_titles AS t (site, page, learned_title)
SELECT $1, p.page, p.title
FROM unnest($2::text[], $3::text[]) AS p (page, title)
WHERE EXISTS (SELECT 1 FROM sites WHERE site = $1)
ORDER BY p.page
ON CONFLICT (site, page) DO UPDATE SET learned_title = EXCLUDED.learned_title, updated_at = now()
WHERE t.learned_title IS DISTINCT FROM EXCLUDED.learned_title;

-- name: shown_titles
SELECT page, coalesce(admin_title, learned_title) AS title
FROM page_titles
WHERE site = $1 AND page = ANY($2::text[]);
