-- Per-site counting settings and unique visitors per page and day.
-- NULL in dedupe_window / max_pages means "the service default" (VIEWCOUNTER_DEDUPE_WINDOW,
-- VIEWCOUNTER_MAX_PAGES_PER_SITE), so changing the default reaches every site that did not
-- choose its own value.

ALTER TABLE sites
    ADD COLUMN dedupe_window          integer CHECK (dedupe_window BETWEEN 0 AND 604800),
    ADD COLUMN max_pages              integer CHECK (max_pages >= 0),
    ADD COLUMN registered_pages_only  boolean NOT NULL DEFAULT false,
    ADD COLUMN page_patterns          text[] NOT NULL DEFAULT '{}',
    ADD COLUMN allowed_origins        text[] NOT NULL DEFAULT '{}';

-- Distinct visitors of the page on that local day (HyperLogLog estimate, about 1 % error).
ALTER TABLE page_views_daily
    ADD COLUMN visitors bigint NOT NULL DEFAULT 0 CHECK (visitors >= 0);
