-- Named queries of keys.py: per-site API keys, kept as the SHA-256 of their secret.

-- name: site_exists
-- FOR SHARE: the site cannot go away before the key's row is in.
SELECT 1 FROM sites WHERE site = $1 FOR SHARE;

-- name: insert_key
INSERT INTO api_keys (id, site, scope, name, secret_sha256, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: site_keys
SELECT id, site, scope, name, created_at, expires_at, last_used_at, revoked_at
FROM api_keys
WHERE site = $1
ORDER BY created_at, id;

-- name: revoke_key
UPDATE api_keys SET revoked_at = $3
WHERE site = $1 AND id = $2 AND revoked_at IS NULL
RETURNING id, site, scope, name, created_at, expires_at, last_used_at, revoked_at;

-- name: site_key
SELECT id, site, scope, name, created_at, expires_at, last_used_at, revoked_at
FROM api_keys
WHERE site = $1 AND id = $2;

-- name: key_by_hash
SELECT id, site, scope, name, created_at, expires_at, last_used_at, revoked_at
FROM api_keys
WHERE secret_sha256 = $1;

-- name: touch_keys
-- Never moves last_used_at back (two api processes write their own last use).
UPDATE api_keys AS k SET last_used_at = greatest(k.last_used_at, u.at)
FROM unnest($1::text[], $2::timestamptz[]) AS u (id, at)
WHERE k.id = u.id;
