-- Named queries of reports.py: reports over the site's local days. Issue 6.

-- report_top_pages: the most-read list's top_pages (top.sql), see reports.py.

-- name: report_range_total
SELECT coalesce(sum(views), 0)::bigint FROM site_views_daily
WHERE site = $1 AND day BETWEEN $2 AND $3;

-- name: report_site_daily
SELECT g.day::date AS day, coalesce(d.views, 0)::bigint AS views,
       coalesce(d.visitors, 0)::bigint AS visitors
FROM generate_series($2::date, $3::date, interval '1 day') AS g (day)
LEFT JOIN site_views_daily d ON d.site = $1 AND d.day = g.day::date
ORDER BY 1;

-- name: report_page_daily
SELECT g.day::date AS day, coalesce(d.views, 0)::bigint AS views,
       coalesce(d.visitors, 0)::bigint AS visitors
FROM generate_series($3::date, $4::date, interval '1 day') AS g (day)
LEFT JOIN page_views_daily d ON d.site = $1 AND d.page = $2 AND d.day = g.day::date
ORDER BY 1;

-- name: report_totals
SELECT sv.views, sv.baseline, s.timezone
FROM site_views sv JOIN sites s USING (site)
WHERE sv.site = $1;
