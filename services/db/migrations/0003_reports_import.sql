-- Reports and legacy imports: baseline changes with their audit trail, the outbox that moves
-- baseline deltas into Redis' live totals, covering indexes for the report queries, views
-- for report writers, and a read-only role they can log in as. docs/: postgres.md,
-- reports.md, importing.md.

-- One row per baseline change (an import that changed something, or one page's PUT).
-- The id is taken under the site's site_views row lock, so per site ids grow in commit order.
CREATE TABLE baseline_changes (
    change_id      bigserial PRIMARY KEY,
    site           text NOT NULL REFERENCES sites (site) ON DELETE CASCADE,
    source         text NOT NULL CHECK (source IN ('import', 'page')),
    changed_by     text NOT NULL,
    changed_at     timestamptz NOT NULL DEFAULT now(),
    pages_changed  bigint NOT NULL DEFAULT 0,
    site_delta     bigint NOT NULL DEFAULT 0
);
CREATE INDEX baseline_changes_site ON baseline_changes (site, change_id);

-- The audit trail: one row per baseline that changed. page IS NULL: the site total.
-- old_baseline IS NULL: the page had no row before (it was never counted nor imported).
CREATE TABLE baseline_audit (
    change_id     bigint NOT NULL REFERENCES baseline_changes (change_id) ON DELETE CASCADE,
    site          text NOT NULL,
    page          text,
    old_baseline  bigint,
    new_baseline  bigint NOT NULL,
    changed_by    text NOT NULL,
    changed_at    timestamptz NOT NULL
);
CREATE INDEX baseline_audit_site_page ON baseline_audit (site, page, change_id);

-- Baseline deltas still to add to Redis' live totals, written in the same transaction as the
-- change, for the Redis load generation that was current under the row lock; deleted once
-- applied (or once that generation is gone: a later load already includes the change).
-- Chunks keep each Redis script call short; Redis records the last (change_id, chunk)
-- applied per site, so applying a chunk twice changes nothing.
CREATE TABLE baseline_outbox (
    change_id   bigint NOT NULL REFERENCES baseline_changes (change_id) ON DELETE CASCADE,
    chunk       integer NOT NULL,
    site        text NOT NULL,
    generation  text NOT NULL,
    site_delta  bigint NOT NULL,
    pages       text[] NOT NULL,
    deltas      bigint[] NOT NULL,
    PRIMARY KEY (change_id, chunk)
);
CREATE INDEX baseline_outbox_site ON baseline_outbox (site, change_id, chunk);

-- Reports read a range of days of one site: a covering index answers "top pages between two
-- days" from the index alone, touching only the days asked for however many years accrue.
-- It supersedes page_views_daily_by_day (same leading columns).
CREATE INDEX page_views_daily_site_day ON page_views_daily (site, day) INCLUDE (page, views);
DROP INDEX IF EXISTS page_views_daily_by_day;

-- Views for report writers. Days are the site's local days (sites.timezone).
CREATE VIEW site_totals AS
SELECT site, views, baseline, views + baseline AS total, updated_at
FROM site_views;

CREATE VIEW page_totals AS
SELECT site, page, views, baseline, views + baseline AS total, first_seen, last_seen
FROM page_views;

CREATE VIEW site_daily AS
SELECT site, day, views, visitors FROM site_views_daily;

CREATE VIEW page_daily AS
SELECT site, page, day, views, visitors FROM page_views_daily;

-- The last 7 local days of each site, today included (today is still being counted).
CREATE VIEW top_pages_7d AS
SELECT d.site, d.page, sum(d.views)::bigint AS views,
       rank() OVER (PARTITION BY d.site ORDER BY sum(d.views) DESC) AS rank
FROM sites s
JOIN page_views_daily d
  ON d.site = s.site
 AND d.day > (now() AT TIME ZONE s.timezone)::date - 7
 AND d.day <= (now() AT TIME ZONE s.timezone)::date
GROUP BY d.site, d.page;

-- A role report writers log in as: SELECT on the documented tables and views, nothing else.
-- Roles belong to the whole Postgres cluster, so it is created only when missing. It has no
-- password: an operator sets one (ALTER ROLE viewcounter_reports PASSWORD '...'). A
-- migrating user without CREATEROLE gets a notice instead of a failed migration.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'viewcounter_reports') THEN
        BEGIN
            CREATE ROLE viewcounter_reports LOGIN;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'viewcounter_reports not created: % (create it as a superuser)',
                SQLERRM;
            RETURN;
        END;
    END IF;
    BEGIN
        ALTER ROLE viewcounter_reports SET default_transaction_read_only = on;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'viewcounter_reports: default_transaction_read_only not set: %', SQLERRM;
    END;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO viewcounter_reports', current_database());
    GRANT USAGE ON SCHEMA public TO viewcounter_reports;
    GRANT SELECT ON sites, site_views, page_views, page_views_daily, site_views_daily,
        baseline_changes, baseline_audit, site_totals, page_totals, site_daily, page_daily,
        top_pages_7d TO viewcounter_reports;
END
$$;
