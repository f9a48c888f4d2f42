-- viewcounter schema v1. Report writers: see docs/postgres.md.
-- `views` columns hold hits counted by viewcounter only; numbers carried over from a legacy
-- counter go to `baseline`, so views == sum of daily buckets stays checkable.

CREATE TABLE sites (
    site        text PRIMARY KEY,
    timezone    text NOT NULL DEFAULT 'UTC',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE site_views (
    site        text PRIMARY KEY REFERENCES sites (site) ON DELETE CASCADE,
    views       bigint NOT NULL DEFAULT 0 CHECK (views >= 0),
    baseline    bigint NOT NULL DEFAULT 0 CHECK (baseline >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE page_views (
    site        text NOT NULL REFERENCES sites (site) ON DELETE CASCADE,
    page        text NOT NULL,
    views       bigint NOT NULL DEFAULT 0 CHECK (views >= 0),
    baseline    bigint NOT NULL DEFAULT 0 CHECK (baseline >= 0),
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, page)
);
CREATE INDEX page_views_top ON page_views (site, views DESC);

-- day is the site's local date when the hit was taken (not when it was flushed).
CREATE TABLE page_views_daily (
    site        text NOT NULL,
    page        text NOT NULL,
    day         date NOT NULL,
    views       bigint NOT NULL CHECK (views >= 0),
    PRIMARY KEY (site, page, day),
    FOREIGN KEY (site, page) REFERENCES page_views (site, page) ON DELETE CASCADE
);
CREATE INDEX page_views_daily_by_day ON page_views_daily (site, day);

CREATE TABLE site_views_daily (
    site        text NOT NULL REFERENCES sites (site) ON DELETE CASCADE,
    day         date NOT NULL,
    views       bigint NOT NULL DEFAULT 0 CHECK (views >= 0),
    visitors    bigint NOT NULL DEFAULT 0 CHECK (visitors >= 0),
    PRIMARY KEY (site, day)
);

-- The exactly-once ledger: a batch id is applied in the same transaction that inserts it here.
CREATE TABLE flush_batches (
    batch_id       text PRIMARY KEY,
    applied_at     timestamptz NOT NULL DEFAULT now(),
    hits           bigint NOT NULL,
    rows           integer NOT NULL,
    snapshot_keys  text[] NOT NULL
);
