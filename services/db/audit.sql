-- Named queries of audit.py: the audit log of admin actions (who changed what, when).

-- name: insert_entry
INSERT INTO audit_log (site, actor, action, detail, request_id)
VALUES ($1, $2, $3, $4::jsonb, $5)
RETURNING id;

-- name: page
-- Newest first, `limit` entries older than the id $2 (NULL: from the newest).
SELECT id, at, site, actor, action, detail::text AS detail, request_id
FROM audit_log
WHERE site = $1 AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3;
