-- The Coder bridge's watch leases (storage/watches.py).

-- name: watches_sync
-- Watch every workspace a chat is bound to; forget those no chat is bound to
-- any more, after a grace period that covers a create the daemon has not bound yet.
WITH bound AS (
    SELECT DISTINCT workspace_id FROM chat_workspaces
    WHERE workspace_id IS NOT NULL AND state <> 'none'
), added AS (
    INSERT INTO bridge_watches (workspace_id)
    SELECT workspace_id FROM bound
    ON CONFLICT (workspace_id) DO NOTHING
    RETURNING 1
), dropped AS (
    DELETE FROM bridge_watches w
    WHERE w.created_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM bound b WHERE b.workspace_id = w.workspace_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM added) AS added, (SELECT count(*) FROM dropped) AS dropped;

-- name: watches_claim
-- Renew this instance's leases and take free or expired ones, up to $3 in all.
WITH mine AS (
    SELECT workspace_id FROM bridge_watches
    WHERE owner = $1 OR owner IS NULL OR lease_until < now()
    ORDER BY (owner = $1) DESC NULLS LAST, created_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE bridge_watches w SET owner = $1, lease_until = now() + make_interval(secs => $2)
FROM mine WHERE w.workspace_id = mine.workspace_id
RETURNING w.workspace_id::text;

-- name: watches_share
-- How many watches there are, and how many other instances hold live leases.
SELECT count(DISTINCT owner) FILTER (WHERE owner <> $1 AND lease_until >= now()) AS others,
       count(*) AS total
FROM bridge_watches;

-- name: watches_add
-- A workspace this instance just created: watch it at once.
INSERT INTO bridge_watches (workspace_id, owner, lease_until)
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (workspace_id) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
WHERE bridge_watches.owner IS NULL OR bridge_watches.owner = excluded.owner
   OR bridge_watches.lease_until < now();

-- name: watches_forget
DELETE FROM bridge_watches WHERE workspace_id = ANY($1::uuid[]);

-- name: watches_release
UPDATE bridge_watches SET owner = NULL, lease_until = NULL WHERE owner = $1;
