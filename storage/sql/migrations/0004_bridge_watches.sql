-- The Coder bridge's watches: one row per workspace it should watch, leased by
-- one bridge instance at a time. A lease that is not renewed expires, and
-- another instance takes the watch over.
CREATE TABLE bridge_watches (
    workspace_id uuid PRIMARY KEY,
    owner text,
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bridge_watches_owner ON bridge_watches (owner);
