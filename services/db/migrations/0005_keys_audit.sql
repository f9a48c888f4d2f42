-- Per-site API keys and the audit log of admin actions (issue "Many portals, one service").
-- docs/: keys-and-tenancy.md, postgres.md.

-- A key opens one site with one scope. Only the SHA-256 of its secret is kept: the secret is
-- 256 random bits, so a fast hash is as hard to invert as a slow one would be, and the api
-- can look a key up by its hash (an index probe) instead of trying a slow hash per key.
-- The id is a short random public name for the key (not a secret, not guessable in order, so
-- it says nothing about how many keys other sites have).
CREATE TABLE api_keys (
    id             text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    site           text NOT NULL REFERENCES sites (site) ON DELETE CASCADE,
    scope          text NOT NULL CHECK (scope IN ('admin', 'report', 'ingest')),
    name           text NOT NULL DEFAULT '' CHECK (char_length(name) <= 100),
    secret_sha256  text NOT NULL UNIQUE CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz,
    -- Written by the api in the background, at most every 30 s per key and process.
    last_used_at   timestamptz,
    revoked_at     timestamptz
);
CREATE INDEX api_keys_site ON api_keys (site, created_at, id);

-- Every admin action, written in the same transaction as the change it records. `actor`:
-- 'operator', 'key:<id>:<name>' or 'cli:<os user>'. `detail` says what changed (never a
-- secret). No foreign key on site: the log outlives what it describes.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    site        text NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL CHECK (action IN ('site.create', 'site.update', 'pages.register',
                                                'baseline.set', 'import', 'key.create',
                                                'key.revoke')),
    detail      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object'),
    request_id  text
);
CREATE INDEX audit_log_site ON audit_log (site, id);

-- The baseline changes made before this migration become entries of the log, oldest first,
-- so their ids keep the order they were made in. Nothing is lost: `detail` keeps the change
-- id, who the old trail named (`changed_by`) and the counts; the per-page old and new
-- baselines stay in baseline_audit under the same change id (and the first 100 are copied
-- into `detail.baselines`). Only operators and the command line could change baselines then:
-- 'api ...' rows were the operator's, 'cli <user>' rows the command line's.
INSERT INTO audit_log (at, site, actor, action, detail, request_id)
SELECT c.changed_at,
       c.site,
       CASE WHEN c.changed_by LIKE 'cli %' THEN 'cli:' || substr(c.changed_by, 5)
            ELSE 'operator' END,
       CASE c.source WHEN 'import' THEN 'import' ELSE 'baseline.set' END,
       jsonb_build_object(
           'change_id', c.change_id,
           'source', c.source,
           'changed_by', c.changed_by,
           'pages_changed', c.pages_changed,
           'site_delta', c.site_delta,
           'migrated_from', 'baseline_changes',
           'baselines', coalesce((
               SELECT jsonb_agg(jsonb_build_object('page', a.page, 'old', a.old_baseline,
                                                   'new', a.new_baseline)
                                ORDER BY a.page NULLS FIRST)
               FROM (SELECT page, old_baseline, new_baseline FROM baseline_audit b
                     WHERE b.change_id = c.change_id
                     ORDER BY b.page NULLS FIRST LIMIT 100) a
           ), '[]'::jsonb)),
       NULL
FROM baseline_changes c
ORDER BY c.change_id;

-- Report writers may read the log (it holds no secret); keys stay out of their reach.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'viewcounter_reports') THEN
        GRANT SELECT ON audit_log TO viewcounter_reports;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'viewcounter_reports: SELECT on audit_log not granted: %', SQLERRM;
END
$$;
