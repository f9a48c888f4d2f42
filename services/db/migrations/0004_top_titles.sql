-- The most-read list (GET /v1/sites/{site}/top) and page titles. docs/: postgres.md,
-- statistics.md.

-- Whether the site publishes its most-read list, and whether it learns page titles from the
-- `title` of its hits (anyone who can send a hit can then set a title: off by default).
ALTER TABLE sites
    ADD COLUMN public_top    boolean NOT NULL DEFAULT true,
    ADD COLUMN learn_titles  boolean NOT NULL DEFAULT false;

-- A page's title, as its admin set it (pages route, import CSV) and as last learned from a
-- hit; the title shown is the admin's when there is one. Kept apart from page_views: a title
-- may be set before the page has a count, and setting one never touches the counts' rows
-- (nor their locks, which flushes take).
CREATE TABLE page_titles (
    site           text NOT NULL REFERENCES sites (site) ON DELETE CASCADE,
    page           text NOT NULL,
    admin_title    text CHECK (char_length(admin_title) BETWEEN 1 AND 300),
    learned_title  text CHECK (char_length(learned_title) BETWEEN 1 AND 300),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, page)
);

-- Report writers may read titles too (the role exists when 0003 could create it).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'viewcounter_reports') THEN
        GRANT SELECT ON page_titles TO viewcounter_reports;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'page_titles not granted to viewcounter_reports: %', SQLERRM;
END
$$;
