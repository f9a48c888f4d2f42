-- Named queries of top.py: the most viewed pages of a range of local days (the most-read
-- list, GET /v1/sites/{site}/top), from the flushed daily counts.

-- name: top_pages
-- Served by page_views_daily_site_day (site, day) INCLUDE (page, views): only the days asked.
SELECT page, sum(views)::bigint AS views
FROM page_views_daily
WHERE site = $1 AND day BETWEEN $2 AND $3
GROUP BY page
ORDER BY views DESC, page
LIMIT $4;

-- name: pages_views
-- The flushed views of the range of some pages (those with unflushed views): the primary
-- key (site, page, day) serves each page's days.
SELECT d.page, sum(d.views)::bigint AS views
FROM unnest($4::text[]) AS p (page)
JOIN page_views_daily d ON d.site = $1 AND d.page = p.page AND d.day BETWEEN $2 AND $3
GROUP BY d.page;

-- name: flushed_views
-- The site's flushed counted views: every flush of the site's hits adds to it, so two equal
-- readings mean no flush of the site committed between them.
SELECT views FROM site_views WHERE site = $1;
